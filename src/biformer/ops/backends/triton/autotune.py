"""Autotune mode: measure tile candidates on a GPU and print entries for ``tile_table.TABLE``.

Coordinate descent from the current choice (table or heuristic), one parameter at a time, over a
small candidate set: query tile, warps and stages of the forward + dQ kernels (timed together,
they share them), then key tile, rows per iteration, warps and chunk size of the dK/dV kernels.
A candidate that fails to compile (shared memory, registers) is skipped. Stops at ``budget_s``
seconds (compilation dominates) and prints what it found so far::

    python -m biformer.ops.backends.triton.autotune --budget-s 60

``--smoke`` runs it on tiny CPU inputs in the interpreter (checks the code, not the speed).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable

import torch

from .tiles import ShapeKey, TileConfig, plan_tiles

__all__ = ["BIFORMER_S_STAGES", "autotune", "main"]

# name, tokens per side, channels, heads, topk (BiFormer-S at 224 x 224, n_win 7, head_dim 32)
BIFORMER_S_STAGES = [("stage1", 56, 64, 2, 1), ("stage2", 28, 128, 4, 4),
                     ("stage3", 14, 256, 8, 16)]
SMOKE_STAGES = [("smoke", 7, 32, 2, 4)]  # 1-token regions: a fast interpreter run
QUERY_CHOICES = dict(block_m=(16, 32, 64, 128), num_warps=(2, 4, 8), num_stages=(1, 2, 3))
KEY_CHOICES = dict(bwd_block_n=(16, 32, 64), bwd_block_m=(32, 64, 128), bwd_num_warps=(4, 8),
                   chunk_rows=(256, 512, 1024))


@dataclasses.dataclass
class Stage:
    """One stage's tensors and the timed calls of the kernels under a tile config."""

    name: str
    key: ShapeKey
    run_query_side: Callable[[TileConfig], None]  # forward + dQ kernels
    run_key_side: Callable[[TileConfig], None]  # dK/dV kernels


def _problem(stage: tuple, batch: int, dtype: torch.dtype, device: str) -> Stage:
    from . import launch
    from .plan import get_plan

    name, side, channels, heads, topk = stage
    x = torch.randn(batch, side, side, 3 * channels, device=device, dtype=dtype)
    q, k, v = x.split(channels, dim=-1)
    index = torch.stack([torch.randperm(49, device=device)[:topk] for _ in range(batch * 49)])
    index = index.view(batch, 49, topk).to(torch.int32)
    kw = dict(soft=False, n_win=(7, 7), heads=heads, scale=channels**-0.5)
    out, lse = launch.forward(get_plan(q, k, v, topk, **kw), q, k, v, index, None)
    grad = torch.randn_like(out)

    def query_side(config: TileConfig) -> None:
        plan = get_plan(q, k, v, topk, config=config, **kw)
        launch.forward(plan, q, k, v, index, None)
        launch.run(plan.dq, dict(Q=q, K=k, V=v, IDX=index, W=q, OUT=out, DO=grad, LSE=lse,
                                 DELTA=torch.empty_like(lse), DQ=torch.empty_like(q), DW=lse),
                   dict(zip(("sdob", "sdoh", "sdow", "sdoc"), grad.stride(), strict=True)))

    def key_side(config: TileConfig) -> None:
        launch.backward(get_plan(q, k, v, topk, config=config, **kw), grad, q, k, v, index,
                        None, out, lse, False)

    key = ShapeKey(dtype, (side // 7) ** 2, (side // 7) ** 2, topk, channels // heads,
                   channels // heads, False)
    return Stage(name, key, query_side, key_side)


def _timer(device: str) -> Callable[[Callable[[], None]], float]:
    if device == "cuda":
        import triton.testing

        return lambda fn: float(triton.testing.do_bench(fn, warmup=5, rep=20))

    def wall_ms(fn: Callable[[], None]) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    return wall_ms


def _descend(run, start: TileConfig, choices: dict, timer, deadline: float, log) -> TileConfig:
    """One pass of coordinate descent over ``choices`` from ``start``; the best config."""
    best, best_ms = start, timer(lambda: run(start))
    for field, values in choices.items():
        for value in values:
            if time.monotonic() > deadline:
                return best
            if value == getattr(best, field):
                continue
            candidate = dataclasses.replace(best, **{field: value})
            try:
                ms = timer(lambda c=candidate: run(c))
            except Exception as err:  # noqa: BLE001 - a candidate that does not compile
                log(f"    {field}={value}: skipped ({type(err).__name__})")
                continue
            log(f"    {field}={value}: {ms:.3f} ms (best {best_ms:.3f})")
            if ms < best_ms:
                best, best_ms = candidate, ms
    return best


def _current(key: ShapeKey) -> TileConfig:
    tiles = plan_tiles(key)
    return TileConfig(
        block_m=tiles.block_m, block_n=tiles.block_n, num_warps=tiles.num_warps,
        num_stages=tiles.num_stages, bwd_block_m=tiles.bwd_block_m,
        bwd_block_n=tiles.bwd_block_n, bwd_num_warps=tiles.bwd_num_warps,
        bwd_num_stages=tiles.bwd_num_stages, chunk_rows=tiles.chunk * key.q_tokens,
    )


def autotune(stages=None, *, batch: int = 128, dtype: torch.dtype = torch.bfloat16,
             device: str = "cuda", budget_s: float = 60.0, log=print) -> dict[str, dict]:
    """Tune each stage shape; returns ``{ShapeKey string: TileConfig fields}`` for the table."""
    deadline = time.monotonic() + budget_s
    timer = _timer(device)
    table = {}
    for stage in stages or BIFORMER_S_STAGES:
        problem = _problem(stage, batch, dtype, device)
        log(f"  {problem.name} ({problem.key}):")
        best = _current(problem.key)
        best = _descend(problem.run_query_side, best, QUERY_CHOICES, timer, deadline, log)
        best = _descend(problem.run_key_side, best, KEY_CHOICES, timer, deadline, log)
        table[str(problem.key)] = best.as_dict()
    return table


def format_table(table: dict[str, dict]) -> str:
    """The entries as lines to paste into ``tile_table.TABLE``."""
    lines = ["TABLE = {"]
    for key, fields in table.items():
        body = ", ".join(f"{k}={v}" for k, v in fields.items())
        lines.append(f"    {key!r}: dict({body}),")
    return "\n".join([*lines, "}"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-s", type=float, default=60.0, help="stop after this long")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run in the interpreter")
    parser.add_argument("--out", default=None, help="also write the table here")
    args = parser.parse_args(argv)
    if args.smoke:
        table = autotune(SMOKE_STAGES, batch=1, dtype=torch.float32, device="cpu",
                         budget_s=args.budget_s)
    elif not torch.cuda.is_available():
        print("autotune: needs a CUDA GPU (or --smoke with TRITON_INTERPRET=1)")
        return 2
    else:
        table = autotune(batch=args.batch, budget_s=args.budget_s)
    text = format_table(table)
    print("tile table found (paste into src/biformer/ops/backends/triton/tile_table.py):")
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
