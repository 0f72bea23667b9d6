# Two entry points: `make train` (demo training on the embedded dataset) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
# The suite runs on two pytest-xdist workers (one thread each, see tests/conftest.py); a file's
# tests stay on one worker (they share module fixtures). `make test PYTEST_WORKERS=` runs serially.
PYTEST_WORKERS ?= -n 2 --dist loadfile

.PHONY: venv train test test-fast lint bench clean yolo-demo

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

train: $(STAMP)
	$(PY) -m biformer train --out runs/digits

yolo-demo: $(STAMP)
	$(PY) -m biformer yolo-demo

test: $(STAMP)
	@# timm's own tests/test_models.py (tests/test_timm_models.py) comes from the installed timm's
	@# sdist, fetched once into .cache/timm-sdist; offline, those tests skip and say so
	@v=$$($(PY) -c 'import timm; print(timm.__version__)'); \
	test -f .cache/timm-sdist/timm-$$v.tar.gz || $(PY) -m pip download --quiet --no-deps \
		--no-binary :all: --timeout 15 --retries 1 --dest .cache/timm-sdist "timm==$$v" || \
		echo "timm $$v sdist not fetched (offline?): timm's model tests will be skipped"
	$(PY) -m pytest -q tests $(PYTEST_WORKERS) --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests $(PYTEST_WORKERS)

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks

bench: $(STAMP)
	$(PY) -m biformer bench

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

# `make wheelhouse`: the project and its non-torch runtime and test dependencies as wheels for
# an offline install on a GPU machine (bash benchmarks/gpu_check.sh OUT --wheelhouse wheelhouse).
# timm and torchvision come without their torch dependency; scikit-learn (the digits demo only)
# and matplotlib (plots) are left out to stay small (add them with WHEELHOUSE_DEPS=...).
WHEELHOUSE ?= wheelhouse
WHEELHOUSE_PYTHON ?= 3.12
WHEELHOUSE_PLATFORMS ?= manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
WHEELHOUSE_NODEPS ?= timm>=1.0.9 $(filter torchvision%,$(TORCH_SPEC))
WHEELHOUSE_DEPS ?= huggingface_hub pyyaml safetensors>=0.4 numpy pillow tqdm pytest>=8 pytest-xdist
WHEELHOUSE_PIP = $(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m pip
WHEELHOUSE_TARGET = --only-binary=:all: --implementation cp \
	--python-version $(WHEELHOUSE_PYTHON) $(addprefix --platform ,$(WHEELHOUSE_PLATFORMS))

.PHONY: wheelhouse
wheelhouse:
	rm -rf $(WHEELHOUSE) && mkdir -p $(WHEELHOUSE)
	$(WHEELHOUSE_PIP) wheel --quiet --no-deps --wheel-dir $(WHEELHOUSE) .
	$(WHEELHOUSE_PIP) download --quiet --no-deps $(WHEELHOUSE_TARGET) --dest $(WHEELHOUSE) \
		$(foreach r,$(WHEELHOUSE_NODEPS),'$(r)')
	$(WHEELHOUSE_PIP) download --quiet $(WHEELHOUSE_TARGET) --dest $(WHEELHOUSE) \
		$(foreach r,$(WHEELHOUSE_DEPS),'$(r)')
	@du -sh $(WHEELHOUSE)
