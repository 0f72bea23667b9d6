#!/usr/bin/env bash
# GPU check of the fast BRA paths: correctness first, then one verdict line per target, in one
# short run (step limits add up to 445 s).
#
#   bash benchmarks/gpu_check.sh OUT [--wheelhouse DIR] [--dry-run] [--no-autotune]
#
# Needs Python 3.10+ with a CUDA torch (PYTHON=... picks the interpreter; default python3). The
# preflight lists every missing package in one line and, with --wheelhouse (from
# `make wheelhouse`), installs them offline. Steps, each under its own time limit (a step over
# its limit is TIMEOUT, not FAIL):
#   preflight       packages, wheelhouse install, environment -> OUT/environment.json
#   triton_tests    every Triton test file on the GPU (compiled kernels; fp32 matrix, masked
#                   keys, regions chosen by nobody/everybody, balanced dK/dV, out-of-range ids,
#                   opcheck, fullgraph compile, 20 bit-identical runs at batch 128, bf16/fp16)
#   flex_tests      the FlexAttention CUDA tests
#   kernel_check    benchmarks/triton_gpu_check.py: bf16/fp16 accuracy (<= 2x plain PyTorch
#                   error vs fp64), determinism (20 runs, batch 128), verdicts (b) and (c)
#   model_check     benchmarks/gpu/model_check.py: verdicts (d) and (a), profile of one
#                   compiled BiFormer-S training step -> OUT/profile_biformer_small.txt
#   autotune        tile candidates measured once; the table found -> OUT/tile_table.txt
# Inductor and Triton caches persist in OUT/cache (a second run skips the cold compiles).
# Exit status: 0 all correctness steps passed, 1 a correctness step failed, 4 one timed out
# (none failed), 2 no GPU, 3 packages missing.
set -uo pipefail

OUT_DIR=${1:-gpu_check}
[ $# -gt 0 ] && shift
WHEELHOUSE="" DRY_RUN=0 AUTOTUNE=1
while [ $# -gt 0 ]; do
    case "$1" in
        --wheelhouse) WHEELHOUSE=$2; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --no-autotune) AUTOTUNE=0; shift ;;
        *) echo "gpu_check: unknown option $1" >&2; exit 64 ;;
    esac
done
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
case $PYTHON in */*) PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")" ;; esac
mkdir -p "$OUT_DIR/cache"
OUT_DIR=$(cd "$OUT_DIR" && pwd)  # paths are the caller's; the steps run from the repository root
[ -n "$WHEELHOUSE" ] && WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export TORCHINDUCTOR_CACHE_DIR="$OUT_DIR/cache/inductor" TRITON_CACHE_DIR="$OUT_DIR/cache/triton"
: > "$OUT_DIR/steps.txt"
rm -f "$OUT_DIR/verdicts.txt" "$OUT_DIR/verdicts.json"

# step NAME LIMIT KIND CMD...: run under a time limit, log, record PASS/FAIL/TIMEOUT
step() {
    local name=$1 limit=$2 kind=$3
    shift 3
    echo "=== $name (limit ${limit}s) ==="
    local start=$SECONDS rc status
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) status=PASS ;;
        124 | 137) status=TIMEOUT ;;
        *) status=FAIL ;;
    esac
    echo "=== $name: $status (exit $rc) after $((SECONDS - start))s ==="
    echo "$name $kind $status $((SECONDS - start)) $limit" >> "$OUT_DIR/steps.txt"
}

echo "=== preflight ==="
"$PYTHON" benchmarks/gpu/preflight.py --out "$OUT_DIR" ${WHEELHOUSE:+--wheelhouse "$WHEELHOUSE"} \
    $([ "$DRY_RUN" = 1 ] && echo --dry-run) 2>&1 | tee "$OUT_DIR/preflight.log"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
    [ "$rc" -eq 2 ] && echo "no usable CUDA GPU: nothing to check" >&2
    exit "$rc"
fi

# compile-bound test steps run in 8 processes when pytest-xdist is there (it is in the wheelhouse)
PARALLEL=$("$PYTHON" -c "import xdist" 2> /dev/null && echo "-n 8")
PYTEST="$PYTHON -m pytest -q -rs -p no:cacheprovider $PARALLEL"
# name limit(s) kind command
PLAN=(
    "triton_tests 100 correctness $PYTEST tests/test_triton_backend.py tests/test_triton_balanced.py tests/test_triton_plan.py tests/test_triton_helpers.py tests/test_transposed_routing.py"
    "flex_tests 80 correctness $PYTEST tests/test_flex_backend.py -k cuda"
    "kernel_check 60 correctness $PYTHON benchmarks/triton_gpu_check.py --out $OUT_DIR/triton.json --verdicts $OUT_DIR"
    "model_check 180 verdicts $PYTHON benchmarks/gpu/model_check.py --out $OUT_DIR"
)
[ "$AUTOTUNE" = 1 ] && PLAN+=("autotune 25 tuning $PYTHON -m biformer.ops.backends.triton.autotune --budget-s 15 --out $OUT_DIR/tile_table.txt")

if [ "$DRY_RUN" = 1 ]; then
    total=0
    for entry in "${PLAN[@]}"; do
        read -r name limit kind cmd <<< "$entry"
        echo "dry run: would run $name ($kind, limit ${limit}s): $cmd"
        total=$((total + limit))
    done
    echo "dry run: preflight passed; steps would take at most ${total}s; results in $OUT_DIR/"
    exit 0
fi

for entry in "${PLAN[@]}"; do
    read -r name limit kind cmd <<< "$entry"
    # shellcheck disable=SC2086  # the command is a word list
    step "$name" "$limit" "$kind" $cmd
done

"$PYTHON" benchmarks/gpu/summary.py "$OUT_DIR"
