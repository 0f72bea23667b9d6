"""Backends of the routed-attention operator, one module (or package) per backend.

Each backend module exposes ``NAME``, ``can_run(problem) -> list[str]`` (the reasons it
refuses; empty when it can run) and ``routed_attention(query, key, value, index, weight, *,
n_win, num_heads, scale, key_valid)`` with the operator's NHWC layout. ``masking`` (padded-key
biases) and ``flex_mask`` (FlexAttention block masks) are helpers, not backends.
"""
