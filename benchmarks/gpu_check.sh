#!/usr/bin/env bash
# GPU check of the fast BRA paths, correctness first, then timings, in one go (< 6 min on an H100).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # OUT_DIR defaults to gpu_check/
#
# Needs a CUDA GPU and an environment with torch, timm and triton (PYTHON=... picks the
# interpreter; the package is used from src/ when it is not installed). Steps, each with a time
# limit so one slow step cannot eat the others' time:
#   1. pytest of every GPU-only test: bit-identical Triton backward, bf16 Triton vs the fp32
#      reference, FlexAttention forward/backward on CUDA, compiled training on flex.
#   2. benchmarks/triton_gpu_check.py: bf16 accuracy and determinism at the BiFormer-S stage
#      shapes, attention-core and layer timings against 7x7 window and global SDPA, memory floor.
#   3. biformer bench --suite op: each backend and the SDPA baselines, fwd and fwd+bwd, per stage
#      shape and at high resolution (bf16).
#   4. biformer bench --suite model: biformer_small/tiny vs swin_small/tiny, bf16 autocast,
#      batch 128, 224x224, eager; then the small pair compiled: train/inference img/s, peak memory.
# The limits add up to 345 s.
# Everything lands in OUT_DIR (logs, JSON, PNG charts); the exit status is non-zero if any
# correctness step failed. Speed targets are reported, not enforced.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-gpu_check}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
status=0

step() {  # step NAME SECONDS CMD...
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s) ==="
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - start))s ==="
    return "$rc"
}

"$PYTHON" - <<'EOF' || { echo "no usable CUDA GPU: nothing to check" >&2; exit 2; }
import sys, torch
if not torch.cuda.is_available():
    sys.exit(1)
import triton
print(torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name(0))
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT_DIR/gpu.txt" 2>&1

step pytest_gpu 75 "$PYTHON" -m pytest -q -rs tests/test_triton_backend.py \
    tests/test_flex_backend.py tests/test_dispatch.py -k "gpu or cuda or dispatch" || status=1

step triton_check 100 "$PYTHON" benchmarks/triton_gpu_check.py --out "$OUT_DIR/triton.json" \
    || status=1

step op_bench 40 "$PYTHON" -m biformer bench --suite op --device cuda --dtype bfloat16 \
    --batch 128 --shapes stage1,stage2,stage3 --steps 10 --warmup 3 \
    --json "$OUT_DIR/op.json" --plot "$OUT_DIR/op"

step model_eager 40 "$PYTHON" -m biformer bench --suite model --device cuda --dtype bfloat16 \
    --batch 128 --steps 10 --warmup 3 \
    --models biformer_small,swin_small_patch4_window7_224,biformer_tiny,swin_tiny_patch4_window7_224 \
    --json "$OUT_DIR/model_eager.json" --plot "$OUT_DIR/model_eager"

step model_compiled 90 "$PYTHON" -m biformer bench --suite model --device cuda --dtype bfloat16 \
    --batch 128 --compile --steps 10 --warmup 3 \
    --models biformer_small,swin_small_patch4_window7_224 \
    --json "$OUT_DIR/model_compiled.json" --plot "$OUT_DIR/model_compiled"

echo "correctness: $([ $status -eq 0 ] && echo PASS || echo FAIL); results in $OUT_DIR/"
exit $status
