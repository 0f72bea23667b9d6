"""Ahead-of-time compilation of every Triton kernel for Hopper (sm_90), without a GPU.

The interpreter hides what only the GPU compiler checks (``tl.dot`` shapes, layouts, shared
memory, registers). ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` builds
a cubin on a CPU-only machine. It runs in a subprocess because the test session uses the
interpreter (``TRITON_INTERPRET=1``), which changes how Triton builds kernels. Launch arguments
come from the backend's own plans on meta tensors at the BiFormer-S shapes (batch 128, head_dim
32) and Triton's own launch binder (``aot.compile_spec``), so the compiled specialisation is the
one a real launch gets; registers and spills come from the bundled ``cuobjdump``.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton", reason="compiling the kernels needs the triton package")
pytestmark = pytest.mark.slow  # one subprocess compiles 32 kernels

SCRIPT = textwrap.dedent(
    '''
    import json, os, re, subprocess, sys, tempfile
    import torch, triton, triton.language as tl
    from triton.backends.compiler import GPUTarget

    TARGET = GPUTarget("cuda", 90, 32)

    @triton.jit
    def _probe(X):
        tl.store(X, tl.load(X) + 1)

    try:
        triton.compile(triton.compiler.ASTSource(_probe, {"X": "*fp32"}, {}), target=TARGET)
    except Exception as err:  # this Triton build cannot target sm_90 here
        print(json.dumps({"unsupported": f"{type(err).__name__}: {err}"[:300]}))
        sys.exit(0)

    from biformer.ops.backends.triton import aot

    CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                             "cuobjdump")

    def resources(cubin):
        with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
            f.write(cubin)
        text = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True,
                              text=True).stdout
        os.unlink(f.name)
        found = dict(re.findall(r"(REG|STACK|LOCAL):(\\d+)", text))
        return {k.lower(): int(v) for k, v in found.items()}

    results = {}
    for name, spec in json.loads(sys.argv[1]).items():
        b, side, channels, heads, topk = spec["shape"]
        dtype = getattr(torch, spec["dtype"])
        proj = torch.empty(b, side, side, 3 * channels, device="meta", dtype=dtype)
        q, k, v = proj.split(channels, -1)
        index = torch.empty(b, 49, topk, dtype=torch.int32, device="meta")
        weight = torch.empty(b, 49, topk, dtype=dtype, device="meta") if spec["soft"] else None
        valid = (side - 1, side - 1) if spec["masked"] else None
        rows = []
        for kernel, kwargs in aot.kernel_calls(q, k, v, index, weight, n_win=(7, 7),
                                               num_heads=heads, scale=channels ** -0.5,
                                               key_valid=valid):
            src, options = aot.compile_spec(kernel, kwargs, TARGET)
            compiled = triton.compile(src, target=TARGET, options=options)
            ttgir = compiled.asm["ttgir"]
            rows.append(dict(
                kernel=kernel.name, grid=list(kernel.grid), num_warps=kernel.num_warps,
                shared=compiled.metadata.shared, cubin=len(compiled.asm["cubin"]),
                tensor_cores=("warp_group_dot" in ttgir) or ("#ttg.nvidia_mma" in ttgir),
                has_dot="tt.dot" in ttgir or "warp_group_dot" in ttgir,
                block_m=kwargs.get("BLOCK_M"), block_n=kwargs.get("BLOCK_N"),
                **resources(compiled.asm["cubin"]),
            ))
        results[name] = rows
    print(json.dumps(results))
    '''
)

# name: (batch, side, channels, heads, topk), dtype, soft routing, masked keys
CASES = {
    "stage1-bf16": dict(shape=(128, 56, 64, 2, 1), dtype="bfloat16", soft=False, masked=False),
    "stage2-bf16": dict(shape=(128, 28, 128, 4, 4), dtype="bfloat16", soft=False, masked=False),
    "stage3-bf16": dict(shape=(128, 14, 256, 8, 16), dtype="bfloat16", soft=False, masked=False),
    "stage1-bf16-soft-masked": dict(shape=(128, 56, 64, 2, 1), dtype="bfloat16", soft=True,
                                    masked=True),
    "stage2-bf16-soft-masked": dict(shape=(128, 28, 128, 4, 4), dtype="bfloat16", soft=True,
                                    masked=True),
    "stage3-bf16-soft-masked": dict(shape=(128, 14, 256, 8, 16), dtype="bfloat16", soft=True,
                                    masked=True),
    "stage2-fp16-head64": dict(shape=(128, 28, 256, 4, 4), dtype="float16", soft=False,
                               masked=False),
    "stage3-fp32": dict(shape=(16, 14, 256, 8, 16), dtype="float32", soft=False, masked=False),
}
SM90_SHARED_LIMIT = 232448  # bytes per block (227 KiB, opt-in)
KERNELS = ["fwd", "bwd_dq", "bwd_dkdv", "bwd_dkdv_reduce"]  # every case splits its dK/dV


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sm90")
    script = tmp / "compile_sm90.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp / "cache")  # compile for real, not from a cache
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps(CASES)], capture_output=True, text=True,
        env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "unsupported" in result:
        pytest.skip(f"this Triton cannot target sm_90 here: {result['unsupported']}")
    return result


@pytest.mark.parametrize("case", list(CASES))
def test_kernels_compile_for_sm90(compiled, case, capsys):
    rows = compiled[case]
    assert [r["kernel"] for r in rows] == KERNELS
    with capsys.disabled():
        print(f"\n  sm_90 {case}:")
        for r in rows:
            print(
                f"    {r['kernel']:15s} grid {tuple(r['grid'])!s:13s} warps {r['num_warps']} "
                f"BLOCK_M {r['block_m'] or '-'!s:>3s} BLOCK_N {r['block_n'] or '-'!s:>3s} "
                f"shared {r['shared']:6d} B  regs {r.get('reg', '?')}  "
                f"spill(local) {r.get('local', '?')} B"
            )
    for r in rows:
        assert r["cubin"] > 0, r
        assert r["shared"] <= SM90_SHARED_LIMIT, r
        assert r.get("local", 0) == 0, f"{case} {r['kernel']}: registers spill to local memory"
        if r["has_dot"] and CASES[case]["dtype"] != "float32":  # fp32: exact (non-TF32) dots
            assert r["tensor_cores"], f"{case} {r['kernel']}: dots did not lower to MMA/WGMMA"
        if r["kernel"] != "bwd_dkdv_reduce":
            assert r["has_dot"] and r["shared"] > 0, r
