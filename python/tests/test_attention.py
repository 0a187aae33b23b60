"""Every SPEC.md feature through Python, against the float64 reference."""

import math

import numpy as np
import pytest

import raggedattn
from attention_reference import (BFLOAT16, assert_matches_reference,
                                 reference_attention)
from problems import random_problem

DTYPES = [np.dtype(np.float32), np.dtype(np.float16), BFLOAT16]
DTYPE_IDS = ["f32", "f16", "bf16"]


def run(problem, **options):
    return raggedattn.ragged_decode_attention(**problem, return_lse=True,
                                              **options)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "num_qo_heads,num_kv_heads,head_dim,head_dim_v",
    [
        (4, 4, 64, 64),  # MHA
        (8, 2, 64, 64),  # GQA, G = 4
        (6, 1, 128, 128),  # MQA
        (14, 2, 80, 80),  # G = 7
        (3, 1, 33, 17),  # odd sizes, Dv != D
    ],
    ids=["mha", "gqa4", "mqa", "gqa7", "odd_dv"])
def test_head_layouts_and_dtypes(dtype, num_qo_heads, num_kv_heads, head_dim,
                                 head_dim_v):
    rng = np.random.default_rng(num_qo_heads * 1000 + head_dim)
    problem = random_problem(rng, batch=5, num_qo_heads=num_qo_heads,
                             num_kv_heads=num_kv_heads, head_dim=head_dim,
                             seq_len=97, head_dim_v=head_dim_v, dtype=dtype)
    output, lse = run(problem)
    assert output.shape == (5, num_qo_heads, head_dim_v)
    assert_matches_reference(output, lse, **problem)


def test_group_heads_read_consecutive_kv_heads():
    # Query head h must read KV head h // G: give each KV head a constant,
    # distinct value row so the output names the head that was read.
    rng = np.random.default_rng(1)
    problem = random_problem(rng, batch=2, num_qo_heads=6, num_kv_heads=3,
                             head_dim=8, seq_len=5)
    problem["value"][:] = np.arange(3, dtype=np.float32)[None, None, :, None]
    problem["sequence_start"][:] = 0
    problem["sequence_end"][:] = 5
    output = raggedattn.ragged_decode_attention(**problem)
    np.testing.assert_allclose(output[:, :, 0],
                               [[0, 0, 1, 1, 2, 2]] * 2, atol=1e-6)


def test_default_scale_is_one_over_sqrt_head_dim():
    rng = np.random.default_rng(2)
    problem = random_problem(rng, head_dim=16, seq_len=40)
    problem["query"] *= 4  # make the scale matter to the softmax
    output, lse = run(problem)
    assert_matches_reference(output, lse, **problem,
                             softmax_scale=1 / math.sqrt(16))
    unscaled, _ = reference_attention(**problem, softmax_scale=1.0)
    assert np.abs(output - unscaled).max() > 1e-2


@pytest.mark.parametrize("softmax_scale", [0.0, -0.3, 2.5])
def test_explicit_scale(softmax_scale):
    problem = random_problem(np.random.default_rng(3), seq_len=50)
    output, lse = run(problem, softmax_scale=softmax_scale)
    assert_matches_reference(output, lse, **problem,
                             softmax_scale=softmax_scale)


def test_huge_logits_do_not_overflow():
    # Logits reach ~150: exp overflows float32 without a running max. (Much
    # larger logits make lse itself so large that one float32 ulp exceeds
    # the 1e-4 lse bound.)
    problem = random_problem(np.random.default_rng(4), seq_len=300)
    output, lse = run(problem, softmax_scale=6.0)
    assert np.isfinite(output).all()
    assert lse.max() > 89  # exp(89) is past float32's range
    assert_matches_reference(output, lse, **problem, softmax_scale=6.0)


@pytest.mark.parametrize(
    "sliding_window",
    [(0, 0), (0, -1), (-1, 0), (-1, -1), (3, 0), (16, 2), (1000, 1000),
     (7, -1)])
@pytest.mark.parametrize("dtype", [np.dtype(np.float32), BFLOAT16],
                         ids=["f32", "bf16"])
def test_sliding_window(sliding_window, dtype):
    problem = random_problem(np.random.default_rng(5), seq_len=120,
                             dtype=dtype)
    output, lse = run(problem, sliding_window=sliding_window)
    assert_matches_reference(output, lse, **problem,
                             sliding_window=sliding_window)


def test_window_of_last_w_tokens_keeps_exactly_w():
    # A model config's window W is (W - 1, 0): check it against W explicit
    # positions, averaging equal logits so the output is their mean value.
    seq_len, window = 30, 4
    key = np.zeros((1, seq_len, 1, 4), np.float32)
    value = np.arange(seq_len, dtype=np.float32).reshape(1, seq_len, 1, 1)
    value = np.repeat(value, 4, axis=3)
    output = raggedattn.ragged_decode_attention(
        np.ones((1, 1, 4), np.float32), key, value,
        np.array([0], np.int32), np.array([20], np.int32),
        sliding_window=(window - 1, 0))
    np.testing.assert_allclose(output[0, 0], np.mean([16, 17, 18, 19]),
                               rtol=1e-6)


@pytest.mark.parametrize("logits_soft_cap", [0.5, 5.0, 30.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_soft_cap(logits_soft_cap, dtype):
    problem = random_problem(np.random.default_rng(6), seq_len=80,
                             dtype=dtype)
    output, lse = run(problem, softmax_scale=1.0,
                      logits_soft_cap=logits_soft_cap)
    assert_matches_reference(output, lse, **problem, softmax_scale=1.0,
                             logits_soft_cap=logits_soft_cap)


def test_soft_cap_zero_means_no_cap():
    problem = random_problem(np.random.default_rng(7), seq_len=60)
    capped_zero = run(problem, softmax_scale=1.0, logits_soft_cap=0.0)
    uncapped = run(problem, softmax_scale=1.0)
    for got, expected in zip(capped_zero, uncapped):
        np.testing.assert_array_equal(got, expected)


def sink_shapes(num_qo_heads, num_kv_heads, num_sinks):
    return {
        "per_qo_head": (num_qo_heads, num_sinks),
        "per_kv_head": (num_kv_heads, num_sinks),
        "shared": (num_sinks,),
    }


@pytest.mark.parametrize("layout", ["per_qo_head", "per_kv_head", "shared"])
@pytest.mark.parametrize("num_sinks", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_sinks(layout, num_sinks, dtype):
    rng = np.random.default_rng(8)
    problem = random_problem(rng, num_qo_heads=8, num_kv_heads=2, seq_len=70,
                             dtype=dtype)
    shape = sink_shapes(8, 2, num_sinks)[layout]
    softmax_aux = (rng.standard_normal(shape) * 2).astype(dtype)
    output, lse = run(problem, softmax_aux=softmax_aux)
    assert_matches_reference(output, lse, **problem, softmax_aux=softmax_aux)
    # Sinks only add to Z: an empty row keeps output 0 and gets the sinks'
    # own log-sum-exp.
    empty_row = 1
    assert problem["sequence_start"][empty_row] == (
        problem["sequence_end"][empty_row])
    assert not output[empty_row].astype(np.float32).any()
    assert np.isfinite(lse[empty_row]).all()


@pytest.mark.parametrize("layout", ["per_qo_head", "per_kv_head", "shared"])
def test_negative_infinite_sinks_contribute_nothing(layout):
    rng = np.random.default_rng(9)
    problem = random_problem(rng, num_qo_heads=4, num_kv_heads=2, seq_len=40)
    shape = sink_shapes(4, 2, 2)[layout]
    partly = rng.standard_normal(shape).astype(np.float32)
    partly[..., 0] = -np.inf
    output, lse = run(problem, softmax_aux=partly)
    assert_matches_reference(output, lse, **problem, softmax_aux=partly)

    # All sinks -inf: exactly the same as no sinks, empty rows included.
    all_neg_inf = np.full(shape, -np.inf, np.float32)
    with_sinks = run(problem, softmax_aux=all_neg_inf)
    without = run(problem)
    for got, expected in zip(with_sinks, without):
        np.testing.assert_array_equal(got, expected)
    assert np.isneginf(with_sinks[1][1]).all()


def test_empty_rows_give_zero_and_negative_infinite_lse():
    problem = random_problem(np.random.default_rng(10), batch=4, seq_len=32)
    problem["sequence_start"][:] = [0, 5, 32, 0]
    problem["sequence_end"][:] = [0, 5, 32, 32]
    output, lse = run(problem)
    assert not output[:3].any()
    assert np.isneginf(lse[:3]).all()
    assert np.isfinite(lse[3]).all()
    assert_matches_reference(output, lse, **problem)


def test_unattended_rows_are_never_read():
    # NaN outside [start, end) and outside the window must not matter.
    problem = random_problem(np.random.default_rng(11), batch=4, seq_len=64)
    problem["sequence_start"][:] = [3, 10, 0, 20]
    problem["sequence_end"][:] = [60, 10, 64, 40]
    poisoned = {name: array.copy() for name, array in problem.items()}
    window = (5, -1)
    for b in range(4):
        start, end = problem["sequence_start"][b], problem["sequence_end"][b]
        first = max(start, end - 1 - window[0])
        poisoned["key"][b, :first] = np.nan
        poisoned["value"][b, :first] = np.nan
        poisoned["key"][b, end:] = np.nan
        poisoned["value"][b, end:] = np.inf
    clean = run(problem, sliding_window=window)
    dirty = run(poisoned, sliding_window=window)
    for got, expected in zip(dirty, clean):
        np.testing.assert_array_equal(got, expected)


def test_nan_in_attended_data_stays_in_its_row():
    problem = random_problem(np.random.default_rng(12), batch=3, seq_len=20)
    problem["sequence_start"][:] = 0
    problem["sequence_end"][:] = 20
    clean, _ = run(problem)
    problem["key"][1, 7, 0, 3] = np.nan
    dirty, _ = run(problem)
    # SPEC.md: NaN is data; it may make the (b, h) outputs that read it NaN
    # (heads 0-3 of row 1 read KV head 0) but must not reach anything else.
    np.testing.assert_array_equal(dirty[[0, 2]], clean[[0, 2]])
    np.testing.assert_array_equal(dirty[1, 4:], clean[1, 4:])


@pytest.mark.parametrize("block_size", [1, 3, 16, 64, 97, 1000])
def test_block_sizes(block_size):
    problem = random_problem(np.random.default_rng(13), batch=4, seq_len=257)
    output, lse = run(problem, block_size=block_size)
    assert_matches_reference(output, lse, **problem)


def test_results_are_bitwise_identical_for_every_thread_count():
    problem = random_problem(np.random.default_rng(14), batch=9, seq_len=600)
    serial = run(problem, num_threads=1)
    for num_threads in [None, 0, 2, 3, 8]:
        for got, expected in zip(run(problem, num_threads=num_threads),
                                 serial):
            np.testing.assert_array_equal(got, expected)


def test_rows_are_batch_invariant():
    problem = random_problem(np.random.default_rng(15), batch=6, seq_len=300)
    together, _ = run(problem)
    alone, _ = run({name: array[3:4] for name, array in problem.items()})
    np.testing.assert_array_equal(alone[0], together[3])


def test_return_lse_selects_the_return_shape():
    problem = random_problem(np.random.default_rng(16), seq_len=20)
    output = raggedattn.ragged_decode_attention(**problem)
    assert isinstance(output, np.ndarray)
    pair = raggedattn.ragged_decode_attention(**problem, return_lse=True)
    assert isinstance(pair, tuple) and len(pair) == 2
    np.testing.assert_array_equal(pair[0], output)
    assert pair[1].dtype == np.float32 and pair[1].shape == (5, 8)


def test_all_options_together():
    rng = np.random.default_rng(17)
    problem = random_problem(rng, batch=7, num_qo_heads=12, num_kv_heads=4,
                             head_dim=96, seq_len=333, dtype=BFLOAT16)
    options = dict(softmax_scale=0.2, sliding_window=(40, 3),
                   logits_soft_cap=10.0,
                   softmax_aux=rng.standard_normal((4, 2)).astype(np.float32))
    output, lse = run(problem, block_size=32, num_threads=2, **options)
    assert_matches_reference(output, lse, **problem, **options)
