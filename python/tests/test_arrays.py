"""Array plumbing: strided views read in place, dtypes, numpy/JAX/PyTorch in
and out."""

import numpy as np
import pytest

import raggedattn
from raggedattn import _raggedattn
from attention_reference import BFLOAT16, assert_matches_reference
from problems import random_problem, random_ranges


def address(array):
    return array.__array_interface__["data"][0]


def extension_address(array):
    """Returns where the extension reads `array`, through the same path the
    real call uses (bf16 numpy arrays travel as uint16 views)."""
    if array.dtype == BFLOAT16:
        array = array.view(np.uint16)
    return _raggedattn.data_pointer(array)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, BFLOAT16],
                         ids=["f32", "f16", "bf16"])
def test_cache_slices_are_read_in_place(dtype):
    # A cache with room for 160 tokens and 6 KV heads, of which the call
    # uses the first 100 tokens and every other head.
    rng = np.random.default_rng(20)
    batch, capacity, seq_len = 3, 160, 100
    key_cache = rng.standard_normal((batch, capacity, 6, 32)).astype(dtype)
    value_cache = rng.standard_normal((batch, capacity, 6, 48)).astype(dtype)
    key = key_cache[:, :seq_len, ::2]
    value = value_cache[:, :seq_len, 1::2]
    query = rng.standard_normal((batch, 6, 32)).astype(dtype)
    start, end = random_ranges(rng, batch, seq_len)
    assert not key.flags.c_contiguous and not value.flags.c_contiguous

    for view in (key, value):
        assert extension_address(view) == address(view)

    output, lse = raggedattn.ragged_decode_attention(
        query, key, value, start, end, return_lse=True)
    assert_matches_reference(output, lse, query, key, value, start, end)
    packed = raggedattn.ragged_decode_attention(
        query, np.ascontiguousarray(key), np.ascontiguousarray(value), start,
        end)
    np.testing.assert_array_equal(output, packed)


def test_query_from_a_packed_qkv_buffer_is_read_in_place():
    # The projection of the new token writes [q heads | k heads | v heads]
    # into one row per sequence; the query is a view of the first part.
    rng = np.random.default_rng(21)
    batch, num_qo_heads, num_kv_heads, head_dim, seq_len = 4, 8, 2, 64, 50
    qkv = rng.standard_normal(
        (batch, (num_qo_heads + 2 * num_kv_heads) * head_dim)).astype(
            np.float32)
    query = qkv[:, :num_qo_heads * head_dim].reshape(batch, num_qo_heads,
                                                     head_dim)
    assert query.base is not None and not query.flags.c_contiguous
    assert extension_address(query) == address(query) == address(qkv)
    problem = random_problem(rng, batch=batch, num_qo_heads=num_qo_heads,
                             num_kv_heads=num_kv_heads, head_dim=head_dim,
                             seq_len=seq_len)
    problem["query"] = query
    output, lse = raggedattn.ragged_decode_attention(**problem,
                                                     return_lse=True)
    assert_matches_reference(output, lse, **problem)


def test_a_view_that_would_not_fit_in_memory_if_copied():
    # Every batch row shares one key/value cache through stride 0: the views
    # describe 1 TiB each, so any copy on the way to the kernel would fail.
    rng = np.random.default_rng(22)
    batch, seq_len, head_dim = 2**14, 2**20, 16
    shared_key = rng.standard_normal((1, seq_len, 1, head_dim),
                                     dtype=np.float32)
    shared_value = rng.standard_normal((1, seq_len, 1, head_dim),
                                       dtype=np.float32)
    key = np.broadcast_to(shared_key, (batch, seq_len, 1, head_dim))
    value = np.broadcast_to(shared_value, (batch, seq_len, 1, head_dim))
    assert key.nbytes == 2**40 and key.strides[0] == 0
    end = rng.integers(4, seq_len + 1, size=batch).astype(np.int32)
    start = (end - rng.integers(0, 4, size=batch)).astype(np.int32)
    query = rng.standard_normal((batch, 2, head_dim), dtype=np.float32)

    output, lse = raggedattn.ragged_decode_attention(
        query, key, value, start, end, return_lse=True)
    # Check a few rows against the reference on the last 4 positions each
    # row can reach (a float64 copy of the whole cache would take seconds).
    rows = [0, 1, 2, 777, batch - 1]
    first = end[rows] - 4
    assert_matches_reference(
        output[rows], lse[rows], query[rows],
        np.stack([shared_key[0, f:f + 4] for f in first]),
        np.stack([shared_value[0, f:f + 4] for f in first]),
        start[rows] - first, end[rows] - first)


def test_size_one_dimensions_with_arbitrary_strides():
    # numpy reports whatever stride slicing left on extents of 1 (here 7 and
    # 3 elements, and a reversed one); no element is addressed through them.
    rng = np.random.default_rng(23)
    base = rng.standard_normal((2, 8, 3)).astype(np.float32)
    query = base[:, 5:6, :1][:, ::-1]  # [2, 1, 1]: strides 24, -3, 1
    query = np.lib.stride_tricks.as_strided(
        query, strides=(base.strides[0], 7 * 4, 3 * 4))
    assert query.shape == (2, 1, 1) and query.strides[2] == 12
    key = rng.standard_normal((2, 9, 1, 1)).astype(np.float32)
    value = rng.standard_normal((2, 9, 1, 5)).astype(np.float32)
    start, end = np.array([0, 2], np.int32), np.array([9, 7], np.int32)
    output, lse = raggedattn.ragged_decode_attention(
        query, key, value, start, end, return_lse=True)
    assert_matches_reference(output, lse, np.ascontiguousarray(query), key,
                             value, start, end)


def test_read_only_inputs_are_accepted():
    problem = random_problem(np.random.default_rng(24), seq_len=30)
    expected = raggedattn.ragged_decode_attention(**problem)
    for array in problem.values():
        array.flags.writeable = False
    np.testing.assert_array_equal(
        raggedattn.ragged_decode_attention(**problem), expected)


def test_sinks_and_sequences_may_be_views():
    rng = np.random.default_rng(25)
    problem = random_problem(rng, batch=5, num_qo_heads=4, num_kv_heads=2,
                             seq_len=40)
    # Rows of a [2, batch + 3] table of ranges, offset by 3; sink rows with
    # a stride of 6.
    ranges = np.zeros((2, 8), np.int32)
    ranges[0, 3:], ranges[1, 3:] = (problem["sequence_start"],
                                    problem["sequence_end"])
    aux_storage = rng.standard_normal((4, 6)).astype(np.float32)
    softmax_aux = aux_storage[:, 1:4]
    for view in (ranges[0, 3:], ranges[1, 3:], softmax_aux):
        assert extension_address(view) == address(view)
    output, lse = raggedattn.ragged_decode_attention(
        problem["query"], problem["key"], problem["value"], ranges[0, 3:],
        ranges[1, 3:], softmax_aux=softmax_aux, return_lse=True)
    assert_matches_reference(output, lse, **problem, softmax_aux=softmax_aux)


class DLPackOnly:
    """An array known only through the DLPack protocol."""

    def __init__(self, array):
        self._array = array

    def __dlpack__(self, **kwargs):
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


def test_any_dlpack_object_is_accepted_and_gives_numpy():
    problem = random_problem(np.random.default_rng(26), seq_len=30)
    expected = raggedattn.ragged_decode_attention(**problem)
    wrapped = {name: DLPackOnly(array) for name, array in problem.items()}
    output = raggedattn.ragged_decode_attention(**wrapped)
    assert isinstance(output, np.ndarray)
    np.testing.assert_array_equal(output, expected)


def test_outputs_are_fresh_aligned_numpy_arrays():
    problem = random_problem(np.random.default_rng(27), seq_len=30,
                             dtype=BFLOAT16)
    output, lse = raggedattn.ragged_decode_attention(**problem,
                                                     return_lse=True)
    assert type(output) is np.ndarray and output.dtype == BFLOAT16
    assert output.flags.c_contiguous and output.flags.writeable
    assert address(output) % 64 == 0 and address(lse) % 64 == 0


# JAX: installed by the README's test command (pip install jax, ~10 s); the
# tests skip where it is not.
def jax_modules():
    jax = pytest.importorskip(
        "jax", reason="jax is not installed (python3 -m pip install jax)")
    return jax, jax.numpy


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_jax_arrays_in_jax_arrays_out(dtype):
    jax, jnp = jax_modules()
    rng = np.random.default_rng(28)
    problem = random_problem(rng, seq_len=70, dtype=np.dtype(dtype))
    softmax_aux = rng.standard_normal((8, 2)).astype(np.float32)
    options = dict(sliding_window=(20, 0), logits_soft_cap=20.0)
    expected = raggedattn.ragged_decode_attention(
        **problem, softmax_aux=softmax_aux, return_lse=True, **options)
    as_jax = {name: jnp.asarray(array) for name, array in problem.items()}
    output, lse = raggedattn.ragged_decode_attention(
        **as_jax, softmax_aux=jnp.asarray(softmax_aux), return_lse=True,
        **options)
    assert isinstance(output, jax.Array) and isinstance(lse, jax.Array)
    assert output.dtype == jnp.dtype(dtype) and lse.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(output), expected[0])
    np.testing.assert_array_equal(np.asarray(lse), expected[1])
    assert_matches_reference(output, lse, **problem, softmax_aux=softmax_aux,
                             **options)


def test_jax_output_owns_its_memory():
    # The output is handed to JAX by DLPack; it must stay valid after the
    # call returns and other allocations reuse freed memory.
    jax, jnp = jax_modules()
    problem = random_problem(np.random.default_rng(29), seq_len=30)
    as_jax = {name: jnp.asarray(array) for name, array in problem.items()}
    output = raggedattn.ragged_decode_attention(**as_jax)
    expected = np.asarray(output).copy()
    for _ in range(20):
        raggedattn.ragged_decode_attention(**problem)
        np.ones(10**5)
    np.testing.assert_array_equal(np.asarray(output + 0), expected)


def test_jax_traced_values_raise_type_error():
    jax, jnp = jax_modules()
    problem = random_problem(np.random.default_rng(30), seq_len=30)

    @jax.jit
    def under_jit(query):
        return raggedattn.ragged_decode_attention(
            query, *[problem[name] for name in
                     ("key", "value", "sequence_start", "sequence_end")])

    with pytest.raises(TypeError, match="traced JAX value"):
        under_jit(jnp.asarray(problem["query"]))


def test_jax_and_numpy_arguments_mix():
    jax, jnp = jax_modules()
    problem = random_problem(np.random.default_rng(31), seq_len=30)
    expected = raggedattn.ragged_decode_attention(**problem)
    mixed = dict(problem, query=jnp.asarray(problem["query"]))
    output = raggedattn.ragged_decode_attention(**mixed)
    assert isinstance(output, jax.Array)
    np.testing.assert_array_equal(np.asarray(output), expected)


# PyTorch: PyPI's torch wheels pull several GB of CUDA libraries, so CI does
# not install it; these run wherever torch is importable.
def torch_module():
    return pytest.importorskip(
        "torch", reason="torch is not installed (not installed in CI: its "
        "PyPI wheels pull several GB of CUDA libraries)")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_torch_tensors_in_torch_tensors_out(dtype):
    torch = torch_module()
    rng = np.random.default_rng(32)
    problem = random_problem(rng, seq_len=60, dtype=np.float32)
    torch_dtype = getattr(torch, dtype)
    tensors = {name: torch.from_numpy(array) for name, array in
               problem.items()}
    for name in ("query", "key", "value"):
        tensors[name] = tensors[name].to(torch_dtype)
    tensors["query"].requires_grad_(dtype != "float16")
    output, lse = raggedattn.ragged_decode_attention(**tensors,
                                                     return_lse=True)
    assert isinstance(output, torch.Tensor) and output.dtype == torch_dtype
    assert lse.dtype == torch.float32
    as_numpy = {name: tensors[name].detach().float().numpy().astype(
        np.dtype(dtype) if dtype != "bfloat16" else BFLOAT16)
        for name in ("query", "key", "value")}
    expected = raggedattn.ragged_decode_attention(
        **as_numpy, sequence_start=problem["sequence_start"],
        sequence_end=problem["sequence_end"], return_lse=True)
    np.testing.assert_array_equal(output.float().numpy(),
                                  expected[0].astype(np.float32))
    np.testing.assert_array_equal(lse.numpy(), expected[1])


def test_torch_cache_slices_are_read_in_place():
    torch = torch_module()
    rng = np.random.default_rng(33)
    key_cache = torch.from_numpy(
        rng.standard_normal((2, 90, 4, 16)).astype(np.float32))
    value_cache = torch.from_numpy(
        rng.standard_normal((2, 90, 4, 16)).astype(np.float32))
    key, value = key_cache[:, :50, 1::2], value_cache[:, :50, ::2]
    assert not key.is_contiguous()
    assert _raggedattn.data_pointer(key) == key.data_ptr()
    query = torch.from_numpy(
        rng.standard_normal((2, 4, 16)).astype(np.float32))
    start, end = random_ranges(rng, 2, 50)
    output = raggedattn.ragged_decode_attention(
        query, key, value, torch.from_numpy(start), torch.from_numpy(end))
    expected = raggedattn.ragged_decode_attention(
        query.numpy(), key.numpy(), value.numpy(), start, end)
    np.testing.assert_array_equal(output.numpy(), expected)
