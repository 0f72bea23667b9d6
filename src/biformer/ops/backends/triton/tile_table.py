"""The committed tile table: ``ShapeKey`` string -> ``TileConfig`` fields.

Entries override the heuristic of ``tiles.heuristic`` for their shape. The three BiFormer-S
stage shapes (bf16, head_dim 32) are listed with the heuristic's own values: they have not been
tuned on a GPU yet. ``python -m biformer.ops.backends.triton.autotune`` (run by
``benchmarks/gpu_check.sh``) measures candidates on a GPU and prints entries to paste here.
"""

TABLE: dict[str, dict[str, int]] = {
    # untuned (heuristic values); replace with the autotune output of a GPU run
    "bfloat16/q64/k64/topk1/d32x32/hard": dict(block_m=64, block_n=64, num_warps=4,
                                               bwd_block_m=64, bwd_block_n=64, chunk_rows=512),
    "bfloat16/q16/k16/topk4/d32x32/hard": dict(block_m=16, block_n=64, num_warps=2,
                                               bwd_block_m=64, bwd_block_n=16, chunk_rows=512),
    "bfloat16/q4/k4/topk16/d32x32/hard": dict(block_m=16, block_n=64, num_warps=2,
                                              bwd_block_m=64, bwd_block_n=16, chunk_rows=512),
}
