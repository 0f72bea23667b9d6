"""Preflight of the GPU check: every package it needs, in one line; an offline install from a
wheelhouse; the environment on record. Standard library only, so it runs anywhere::

    python benchmarks/gpu/preflight.py --out OUT [--wheelhouse DIR] [--dry-run]

Exit status: 0 ready; 2 no usable CUDA GPU (not checked with ``--dry-run``); 3 packages still
missing (the line lists them). With ``--wheelhouse`` (built by ``make wheelhouse``: the project
and its non-torch runtime and test dependencies as wheels) every wheel whose distribution is not
installed yet is installed with ``pip install --no-index --no-deps`` (no network). Writes
``OUT/environment.json`` (GPU, driver, CUDA, torch, triton, timm, Python, TIMM_FUSED_ATTN).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

# import name -> distribution (pip) name
REQUIRED = {"torch": "torch", "triton": "triton", "timm": "timm", "torchvision": "torchvision",
            "numpy": "numpy", "PIL": "pillow", "safetensors": "safetensors", "yaml": "pyyaml",
            "huggingface_hub": "huggingface_hub", "tqdm": "tqdm", "pytest": "pytest",
            "biformer": "biformer"}
OPTIONAL = {"matplotlib": "matplotlib (plots)", "xdist": "pytest-xdist (parallel test steps)"}

PROBE = r"""
import importlib, importlib.metadata, json, os, sys
found = {}
for name in sys.argv[1].split(","):
    try:
        importlib.import_module(name)
        found[name] = None
    except Exception as err:
        found[name] = f"{type(err).__name__}: {err}"[:200]
env = {"python": sys.version.split()[0], "TIMM_FUSED_ATTN": os.environ.get("TIMM_FUSED_ATTN")}
for dist in ("torch", "triton", "timm", "torchvision", "numpy", "biformer"):
    try:
        env[dist] = importlib.metadata.version(dist)
    except Exception:
        env[dist] = None
installed = sorted({(d.metadata["Name"] or "").lower().replace("_", "-")
                    for d in importlib.metadata.distributions()})
if found.get("torch") is None:
    import torch
    env["cuda_available"] = torch.cuda.is_available()
    env["cuda_runtime"] = torch.version.cuda
    if env["cuda_available"]:
        env["gpu"] = torch.cuda.get_device_name(0)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
print(json.dumps({"found": found, "env": env, "installed": installed}))
"""


def probe(python: str) -> dict:
    """Import every module in a fresh interpreter; versions and installed distributions."""
    names = ",".join([*REQUIRED, *OPTIONAL])
    proc = subprocess.run([python, "-c", PROBE, names], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"preflight: {python} failed to start: {proc.stderr[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _dist_name(wheel: Path) -> str:
    return wheel.name.split("-")[0].lower().replace("_", "-")


def install_from(wheelhouse: Path, python: str, installed: list[str]) -> list[str]:
    """Install (offline, without dependency resolution) every wheel of ``wheelhouse`` whose
    distribution is not installed; returns the wheels installed."""
    wheels = sorted(w for w in wheelhouse.glob("*.whl") if _dist_name(w) not in set(installed))
    if not wheels:
        return []
    cmd = [python, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet",
           "--disable-pip-version-check", *map(str, wheels)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"preflight: pip install from {wheelhouse} failed: {proc.stderr.strip()[-800:]}")
    return [w.name for w in wheels] if proc.returncode == 0 else []


def _missing(found: dict) -> list[str]:
    return [REQUIRED[name] for name in REQUIRED if found.get(name) is not None]


def _nvidia_smi() -> str | None:
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None


def describe(env: dict) -> str:
    """The environment in one line."""
    parts = [f"GPU {env.get('gpu') or 'none'}"]
    if env.get("capability"):
        parts.append(f"sm {env['capability']}")
    parts.append(f"nvidia-smi {env.get('nvidia_smi') or 'n/a'}")
    parts += [f"{k} {env.get(k)}" for k in ("cuda_runtime", "torch", "triton", "timm",
                                             "torchvision", "python")]
    parts.append(f"TIMM_FUSED_ATTN={env.get('TIMM_FUSED_ATTN') or '(unset)'}")
    return "environment: " + ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--wheelhouse", type=Path, default=None)
    parser.add_argument("--dry-run", action="store_true", help="do not require a GPU")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args(argv)
    if sys.version_info < (3, 10):  # noqa: UP036 - the check runs on foreign machines
        print(f"preflight: Python 3.10+ needed, this is {sys.version.split()[0]}")
        return 3
    state = probe(args.python)
    missing = _missing(state["found"])
    if missing:
        print("preflight: missing packages: " + ", ".join(missing))
    if missing and args.wheelhouse is not None:
        done = install_from(args.wheelhouse, args.python, state["installed"])
        print(f"preflight: installed {len(done)} wheels from {args.wheelhouse} (offline)")
        state = probe(args.python)
        missing = _missing(state["found"])
    env = dict(state["env"], nvidia_smi=_nvidia_smi())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "environment.json").write_text(json.dumps(env, indent=2))
    if missing:
        print("preflight: missing packages: " + ", ".join(missing)
              + " (give --wheelhouse DIR from `make wheelhouse`, or pip install them)")
        for name, err in state["found"].items():
            if err is not None and name in REQUIRED:
                print(f"  {name}: {err}")
        return 3
    optional = [label for name, label in OPTIONAL.items() if state["found"].get(name)]
    print("preflight: all required packages importable"
          + (f" (optional missing: {', '.join(optional)})" if optional else ""))
    print(describe(env))
    if not env.get("cuda_available") and not args.dry_run:
        print("no usable CUDA GPU: nothing to check", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
