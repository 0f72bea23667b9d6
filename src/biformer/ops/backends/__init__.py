"""Backends of the routed-attention operator, one per file.

Each backend module exposes ``NAME``, ``can_run(problem) -> list[str]`` (the reasons it
refuses; empty when it can run) and ``routed_attention(query, key, value, index, weight, *,
regions, num_heads, scale, key_valid)`` with the operator's NHWC layout.
"""
