"""A float64 numpy evaluation of SPEC.md's definition, and its tolerances.

Written from the contract alone, sharing nothing with the C++ library or its
C++ reference, so the two can only agree by both being right.
"""

import math

import ml_dtypes
import numpy as np

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)

# SPEC.md "Accuracy": max |output - reference| / max |value over attended
# rows|, per output dtype; lse is absolute.
OUTPUT_TOLERANCE = {
    np.dtype(np.float32): 3e-5,
    np.dtype(np.float16): 2e-3,
    BFLOAT16: 8e-3,
}
LSE_TOLERANCE = 1e-4


def attended_positions(start, end, sliding_window):
    """Returns the key positions row (start, end) attends to, ascending."""
    positions = np.arange(start, end)
    if sliding_window is not None:
        left, right = sliding_window
        query_position = end - 1
        if left != -1:
            positions = positions[positions >= query_position - left]
        if right != -1:
            positions = positions[positions <= query_position + right]
    return positions


def sink_rows(softmax_aux, num_qo_heads, num_kv_heads):
    """Returns the [num_qo_heads, N] sink logits each query head uses."""
    aux = np.asarray(softmax_aux).astype(np.float64)
    if aux.ndim == 1:
        return np.broadcast_to(aux, (num_qo_heads, aux.shape[0]))
    if aux.shape[0] == num_qo_heads:
        return aux
    group_size = num_qo_heads // num_kv_heads
    return np.repeat(aux, group_size, axis=0)


def reference_attention(query, key, value, sequence_start, sequence_end,
                        softmax_scale=None, sliding_window=None,
                        logits_soft_cap=None, softmax_aux=None):
    """Returns (output, lse) in float64: output [B, Hq, Dv], lse [B, Hq]."""
    query = np.asarray(query).astype(np.float64)
    key = np.asarray(key).astype(np.float64)
    value = np.asarray(value).astype(np.float64)
    batch, num_qo_heads, head_dim = query.shape
    num_kv_heads = key.shape[2]
    group_size = num_qo_heads // num_kv_heads
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(head_dim)
    sinks = (None if softmax_aux is None else
             sink_rows(softmax_aux, num_qo_heads, num_kv_heads))

    output = np.zeros((batch, num_qo_heads, value.shape[3]))
    lse = np.full((batch, num_qo_heads), -np.inf)
    for b in range(batch):
        positions = attended_positions(int(sequence_start[b]),
                                       int(sequence_end[b]), sliding_window)
        for h in range(num_qo_heads):
            kv_head = h // group_size
            keys = key[b, positions, kv_head, :]
            logits = softmax_scale * (keys @ query[b, h])
            if logits_soft_cap:
                logits = logits_soft_cap * np.tanh(logits / logits_soft_cap)
            head_sinks = np.zeros(0) if sinks is None else sinks[h]
            everything = np.concatenate([logits, head_sinks])
            if everything.size == 0 or np.max(everything) == -np.inf:
                continue  # Z = 0: output stays 0, lse stays -inf.
            shift = np.max(everything)
            weights = np.exp(logits - shift)
            denominator = weights.sum() + np.exp(head_sinks - shift).sum()
            values = value[b, positions, kv_head, :]
            output[b, h] = weights @ values / denominator
            lse[b, h] = shift + math.log(denominator)
    return output, lse


def value_scale(value, sequence_start, sequence_end, sliding_window=None):
    """Returns max |value| over attended rows (1 when nothing is attended)."""
    value = np.asarray(value).astype(np.float64)
    largest = 0.0
    for b in range(value.shape[0]):
        positions = attended_positions(int(sequence_start[b]),
                                       int(sequence_end[b]), sliding_window)
        if positions.size:
            largest = max(largest, float(np.abs(value[b, positions]).max()))
    return largest if largest > 0 else 1.0


def assert_matches_reference(output, lse, query, key, value, sequence_start,
                             sequence_end, **options):
    """Checks output (and lse unless None) against reference_attention."""
    expected_output, expected_lse = reference_attention(
        query, key, value, sequence_start, sequence_end, **options)
    output = np.asarray(output)
    assert output.dtype == np.asarray(query).dtype
    assert output.shape == expected_output.shape
    scale = value_scale(value, sequence_start, sequence_end,
                        options.get("sliding_window"))
    error = np.abs(output.astype(np.float64) - expected_output).max(
        initial=0.0) / scale
    assert error <= OUTPUT_TOLERANCE[output.dtype], (
        f"relative output error {error:.3g} exceeds "
        f"{OUTPUT_TOLERANCE[output.dtype]:g} for {output.dtype}")
    if lse is not None:
        lse = np.asarray(lse)
        assert lse.dtype == np.float32
        assert lse.shape == expected_lse.shape
        # -inf must match exactly; finite values within the bound.
        np.testing.assert_array_equal(np.isneginf(lse),
                                      np.isneginf(expected_lse))
        finite = np.isfinite(expected_lse)
        assert np.isfinite(lse[finite]).all()
        if finite.any():
            lse_error = np.abs(lse[finite] - expected_lse[finite]).max()
            assert lse_error <= LSE_TOLERANCE, f"lse error {lse_error:.3g}"
