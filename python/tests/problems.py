"""Random inputs for the tests: awkward sizes, empty and partial rows."""

import numpy as np


def random_ranges(rng, batch, seq_len):
    """Returns int32 (sequence_start, sequence_end) covering the cases that
    matter: a full row, an empty row, rows starting mid-cache and rows ending
    before seq_len, the rest random."""
    start = rng.integers(0, seq_len + 1, size=batch)
    end = np.array([rng.integers(s, seq_len + 1) for s in start])
    if batch >= 1:
        start[0], end[0] = 0, seq_len
    if batch >= 2:
        start[1] = end[1] = seq_len // 2
    if batch >= 3:
        start[2], end[2] = seq_len // 3, seq_len - 1
    return start.astype(np.int32), end.astype(np.int32)


def random_problem(rng, batch=5, num_qo_heads=8, num_kv_heads=2, head_dim=64,
                   seq_len=97, head_dim_v=None, dtype=np.float32,
                   value_spread=1.0):
    """Returns dict(query, key, value, sequence_start, sequence_end)."""
    head_dim_v = head_dim if head_dim_v is None else head_dim_v

    def normal(*shape):
        return rng.standard_normal(shape).astype(dtype)

    start, end = random_ranges(rng, batch, seq_len)
    return dict(
        query=normal(batch, num_qo_heads, head_dim),
        key=normal(batch, seq_len, num_kv_heads, head_dim),
        value=(rng.standard_normal((batch, seq_len, num_kv_heads, head_dim_v))
               * value_spread).astype(dtype),
        sequence_start=start,
        sequence_end=end,
    )
