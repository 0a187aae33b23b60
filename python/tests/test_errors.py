"""Every bad-input rule of SPEC.md raises ValueError with the C++ library's
message; things that are not arrays raise TypeError."""

import re

import numpy as np
import pytest

import raggedattn
from attention_reference import BFLOAT16

BATCH, NUM_QO_HEADS, NUM_KV_HEADS, HEAD_DIM, SEQ_LEN = 2, 8, 2, 64, 16


def good_arguments():
    rng = np.random.default_rng(40)

    def normal(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    return dict(
        query=normal(BATCH, NUM_QO_HEADS, HEAD_DIM),
        key=normal(BATCH, SEQ_LEN, NUM_KV_HEADS, HEAD_DIM),
        value=normal(BATCH, SEQ_LEN, NUM_KV_HEADS, HEAD_DIM),
        sequence_start=np.array([0, 4], np.int32),
        sequence_end=np.array([16, 9], np.int32),
    )


def with_changes(**changes):
    arguments = good_arguments()
    for name, change in changes.items():
        arguments[name] = change(arguments.get(name))
    return arguments


def replace(new):
    return lambda _: new


f32 = np.float32
i32 = np.int32

# (id, arguments, the C++ validator's message)
BAD_INPUTS = [
    ("query_rank", with_changes(query=lambda q: q[0]),
     "query: rank 2, expected [batch, num_qo_heads, head_dim]"),
    ("key_rank", with_changes(key=lambda k: k[0]),
     "key: rank 3, expected [batch, seq_len, num_kv_heads, head_dim]"),
    ("value_rank_5", with_changes(value=lambda v: v[None]),
     "value: rank 5, expected [batch, seq_len, num_kv_heads, head_dim_v]"),
    ("sequence_start_rank", with_changes(sequence_start=lambda s: s[None]),
     "sequence_start: rank 2, expected [batch]"),
    ("softmax_aux_rank",
     with_changes(softmax_aux=replace(np.zeros((2, 2, 2), f32))),
     "softmax_aux: rank 3, expected [num_sinks] or [num_heads, num_sinks]"),
    ("query_f64", with_changes(query=lambda q: q.astype(np.float64)),
     "query: dtype f64, expected f32, bf16 or f16"),
    ("query_i32", with_changes(query=lambda q: q.astype(i32)),
     "query: dtype i32, expected f32, bf16 or f16"),
    ("key_bool", with_changes(key=lambda k: k > 0),
     "key: dtype bool, expected f32, bf16 or f16"),
    ("value_mismatch", with_changes(value=lambda v: v.astype(np.float16)),
     "value: dtype f16, expected f32 (value must match key's dtype)"),
    ("value_bf16_mismatch", with_changes(value=lambda v: v.astype(BFLOAT16)),
     "value: dtype bf16, expected f32 (value must match key's dtype)"),
    ("sequence_start_i64",
     with_changes(sequence_start=lambda s: s.astype(np.int64)),
     "sequence_start: dtype i64, expected i32"),
    ("sequence_end_u32",
     with_changes(sequence_end=lambda s: s.astype(np.uint32)),
     "sequence_end: dtype u32, expected i32"),
    ("sequence_end_f32",
     with_changes(sequence_end=lambda s: s.astype(f32)),
     "sequence_end: dtype f32, expected i32"),
    ("softmax_aux_i32", with_changes(softmax_aux=replace(np.zeros(2, i32))),
     "softmax_aux: dtype i32, expected f32, bf16 or f16"),
    ("softmax_aux_f64",
     with_changes(softmax_aux=replace(np.zeros(2, np.float64))),
     "softmax_aux: dtype f64, expected f32, bf16 or f16"),
    ("key_batch", with_changes(key=lambda k: k[:1]),
     "key: shape[0] = 1 (batch) differs from query shape[0] = 2"),
    ("key_head_dim", with_changes(key=lambda k: k[..., :32]),
     "key: shape[3] = 32 (head_dim) differs from query shape[2] = 64"),
    ("value_batch", with_changes(value=lambda v: v[:1]),
     "value: shape[0] = 1 (batch) differs from query shape[0] = 2"),
    ("value_seq_len", with_changes(value=lambda v: v[:, :15]),
     "value: shape[1] = 15 (seq_len) differs from key shape[1] = 16"),
    ("value_kv_heads", with_changes(value=lambda v: v[:, :, :1]),
     "value: shape[2] = 1 (num_kv_heads) differs from key shape[2] = 2"),
    ("group_not_whole", with_changes(query=lambda q: q[:, :7]),
     "query: shape[1] = 7 (num_qo_heads) is not a multiple of key shape[2] "
     "= 2 (num_kv_heads)"),
    ("no_qo_heads", with_changes(query=lambda q: q[:, :0]),
     "query: shape[1] = 0 (num_qo_heads) must be >= 1"),
    ("no_head_dim", with_changes(query=lambda q: q[..., :0],
                                 key=lambda k: k[..., :0]),
     "query: shape[2] = 0 (head_dim) must be >= 1"),
    ("no_kv_heads", with_changes(key=lambda k: k[:, :, :0],
                                 value=lambda v: v[:, :, :0]),
     "key: shape[2] = 0 (num_kv_heads) must be >= 1"),
    ("no_head_dim_v", with_changes(value=lambda v: v[..., :0]),
     "value: shape[3] = 0 (head_dim_v) must be >= 1"),
    ("sequence_start_batch", with_changes(sequence_start=lambda s: s[:1]),
     "sequence_start: shape[0] = 1 (batch) differs from query shape[0] = 2"),
    ("sequence_end_batch",
     with_changes(sequence_end=replace(np.array([1, 2, 3], i32))),
     "sequence_end: shape[0] = 3 (batch) differs from query shape[0] = 2"),
    ("softmax_aux_rows",
     with_changes(softmax_aux=replace(np.zeros((3, 1), f32))),
     "softmax_aux: shape[0] = 3 matches neither num_qo_heads = 8 nor "
     "num_kv_heads = 2"),
    ("softmax_aux_no_sinks",
     with_changes(softmax_aux=replace(np.zeros((8, 0), f32))),
     "softmax_aux: shape[1] = 0 (num_sinks) must be >= 1"),
    ("softmax_aux_no_sinks_1d",
     with_changes(softmax_aux=replace(np.zeros(0, f32))),
     "softmax_aux: shape[0] = 0 (num_sinks) must be >= 1"),
    ("query_inner_stride", with_changes(
        query=lambda q: np.repeat(q, 2, axis=2)[..., ::2]),
     "query: strides[2] = 2, the innermost stride must be 1"),
    ("value_inner_stride", with_changes(
        value=lambda v: np.repeat(v, 3, axis=3)[..., ::3]),
     "value: strides[3] = 3, the innermost stride must be 1"),
    ("sequence_start_stride", with_changes(
        sequence_start=lambda s: np.repeat(s, 2)[::2]),
     "sequence_start: strides[0] = 2, the innermost stride must be 1"),
    ("key_negative_stride", with_changes(key=lambda k: k[:, ::-1]),
     f"key: strides[1] = -{NUM_KV_HEADS * HEAD_DIM} must be >= 0"),
    ("start_negative",
     with_changes(sequence_start=replace(np.array([0, -1], i32))),
     "sequence_start[1] = -1 is negative"),
    ("end_past_seq_len",
     with_changes(sequence_end=replace(np.array([17, 9], i32))),
     "sequence_end[0] = 17 exceeds seq_len 16"),
    ("start_past_end",
     with_changes(sequence_start=replace(np.array([0, 10], i32))),
     "sequence_start[1] = 10 exceeds sequence_end[1] = 9"),
    ("scale_nan", with_changes(softmax_scale=replace(float("nan"))),
     "softmax_scale = nan must be finite"),
    ("scale_inf", with_changes(softmax_scale=replace(float("-inf"))),
     "softmax_scale = -inf must be finite"),
    ("soft_cap_negative", with_changes(logits_soft_cap=replace(-1.5)),
     "logits_soft_cap = -1.5 must be finite and >= 0 (0 means no cap)"),
    ("soft_cap_inf", with_changes(logits_soft_cap=replace(float("inf"))),
     "logits_soft_cap = inf must be finite and >= 0 (0 means no cap)"),
    ("soft_cap_nan", with_changes(logits_soft_cap=replace(float("nan"))),
     "logits_soft_cap = nan must be finite and >= 0 (0 means no cap)"),
    ("window_left", with_changes(sliding_window=replace((-2, 0))),
     "sliding_window.left = -2 must be >= -1 (-1 means unbounded)"),
    ("window_right", with_changes(sliding_window=replace((4, -7))),
     "sliding_window.right = -7 must be >= -1 (-1 means unbounded)"),
    ("block_size_zero", with_changes(block_size=replace(0)),
     "block_size = 0 must be >= 1"),
    ("block_size_negative", with_changes(block_size=replace(-64)),
     "block_size = -64 must be >= 1"),
    ("num_threads_negative", with_changes(num_threads=replace(-1)),
     "num_threads = -1 must be >= 0 (0 means all cores)"),
    ("sink_nan", with_changes(softmax_aux=replace(
        np.array([[0.5], [np.nan]], f32))),
     "softmax_aux[1, 0] = nan: a sink logit must not be NaN or +inf"),
    ("sink_inf_1d", with_changes(softmax_aux=replace(
        np.array([0.0, -np.inf, np.inf], f32))),
     "softmax_aux[2] = inf: a sink logit must not be NaN or +inf"),
    ("sink_nan_bf16", with_changes(softmax_aux=replace(
        np.array([1.0, np.nan], BFLOAT16))),
     "softmax_aux[1] = nan: a sink logit must not be NaN or +inf"),
]


@pytest.mark.parametrize("arguments,message",
                         [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_raises_value_error_with_the_library_message(arguments,
                                                               message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        raggedattn.ragged_decode_attention(**arguments)


def test_the_good_arguments_are_good():
    # Every case above differs from these in one rule only.
    output = raggedattn.ragged_decode_attention(**good_arguments())
    assert np.isfinite(output).all()


NOT_ARRAYS = {"list": [1.0, 2.0], "str": "query", "int": 3, "none": None,
              "np_scalar": np.int32(3)}
# softmax_aux=None is valid: it means no sinks.
NON_ARRAY_CASES = [(name, kind) for name in
                   ("query", "key", "value", "sequence_start", "sequence_end",
                    "softmax_aux") for kind in NOT_ARRAYS
                   if (name, kind) != ("softmax_aux", "none")]


@pytest.mark.parametrize("name,kind", NON_ARRAY_CASES,
                         ids=[f"{name}-{kind}" for name, kind in
                              NON_ARRAY_CASES])
def test_non_arrays_raise_type_error(name, kind):
    not_an_array = NOT_ARRAYS[kind]
    arguments = good_arguments()
    arguments[name] = not_an_array
    with pytest.raises(TypeError, match=f"^{name}: expected a DLPack-capable"):
        raggedattn.ragged_decode_attention(**arguments)


@pytest.mark.parametrize(
    "option,value,error,message",
    [
        ("sliding_window", 4, TypeError,
         "sliding_window = 4: expected a pair (left, right) of ints or None, "
         "got int"),
        ("sliding_window", (1, 2, 3), ValueError,
         "sliding_window = (1, 2, 3): expected a pair (left, right), got 3 "
         "values"),
        ("sliding_window", (1.5, 0), TypeError,
         "sliding_window.left = 1.5: expected an int, got float"),
        ("sliding_window", [0, "1"], TypeError,
         "sliding_window.right = '1': expected an int, got str"),
        ("block_size", 2.0, TypeError,
         "block_size = 2.0: expected an int, got float"),
        ("block_size", 2**63, ValueError,
         f"block_size = {2**63} is outside [{-2**63}, {2**63 - 1}]"),
        ("num_threads", True, TypeError,
         "num_threads = True: expected an int, got bool"),
        ("num_threads", 2**31, ValueError,
         f"num_threads = {2**31} is outside [{-2**31}, {2**31 - 1}]"),
        ("softmax_scale", "0.5", TypeError,
         "softmax_scale = '0.5': expected a real number or None, got str"),
        ("logits_soft_cap", 1j, TypeError,
         "logits_soft_cap = 1j: expected a real number or None, got complex"),
        ("return_lse", "yes", TypeError,
         "return_lse = 'yes': expected a bool, got str"),
    ])
def test_python_side_option_checks(option, value, error, message):
    arguments = good_arguments()
    arguments[option] = value
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        raggedattn.ragged_decode_attention(**arguments)


def test_numpy_integer_options_are_accepted():
    arguments = good_arguments()
    expected = raggedattn.ragged_decode_attention(
        **arguments, block_size=4, sliding_window=(3, 0), softmax_scale=0.5)
    output = raggedattn.ragged_decode_attention(
        **arguments, block_size=np.int64(4),
        sliding_window=(np.int32(3), np.int8(0)), softmax_scale=np.float32(0.5))
    np.testing.assert_array_equal(output, expected)
