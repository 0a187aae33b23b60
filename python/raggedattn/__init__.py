"""raggedattn: ragged decode attention on CPUs.

One new query token per sequence attends to that sequence's slice of a KV
cache, with grouped-query heads, sliding windows, logit soft caps and
attention sinks. The computation is the C++ library of this repository; this
package hands it numpy, JAX or PyTorch CPU arrays without copying them.

Example::

    import numpy as np
    import raggedattn

    out = raggedattn.ragged_decode_attention(
        query, key, value, sequence_start, sequence_end)
"""

from __future__ import annotations

import numbers
import operator
import sys

import ml_dtypes
import numpy as np

from . import _raggedattn

__all__ = ["ragged_decode_attention", "active_simd_target"]
__version__ = "0.1.0"

_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
_INT32_MAX = 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_ALIGNMENT = 64


def active_simd_target() -> str:
    """Returns the SIMD target calls dispatch to on this CPU, e.g. "AVX3"."""
    return _raggedattn.active_simd_target()


def _kind(array) -> str:
    """Returns "numpy", "jax", "torch" or "dlpack" for a supported array."""
    if isinstance(array, np.ndarray):
        return "numpy"
    # Only look at frameworks the caller already imported: importing JAX or
    # PyTorch here would cost seconds and is never needed to classify.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(array, torch.Tensor):
        return "torch"
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(array, jax.Array):
        return "jax"
    if hasattr(array, "__dlpack__") and hasattr(array, "__dlpack_device__"):
        return "dlpack"
    return ""


def _check_array(array, name: str):
    """Returns `array` in a form the extension reads in place.

    Raises TypeError for anything that is not a DLPack-capable array.
    """
    kind = _kind(array)
    if not kind:
        raise TypeError(
            f"{name}: expected a DLPack-capable CPU array (numpy, JAX, "
            f"PyTorch), got {type(array).__module__}.{type(array).__qualname__}"
        )
    if kind == "torch":
        # A tensor that requires grad refuses DLPack export; detach() shares
        # its storage, so this is still a view.
        return array.detach()
    if kind == "jax" and isinstance(array, sys.modules["jax"].core.Tracer):
        raise TypeError(
            f"{name}: a traced JAX value (inside jax.jit, vmap or grad) has "
            f"no memory to read; call ragged_decode_attention outside the "
            f"transformation, or through jax.pure_callback")
    if kind == "dlpack":
        return np.from_dlpack(array)
    return array


def _extension_form(array, name: str, bfloat16_names: list) -> object:
    """Returns what the extension receives for `array`.

    numpy cannot export ml_dtypes.bfloat16 through DLPack or the buffer
    protocol, so a bf16 numpy array travels as a uint16 view of the same
    memory and its name is recorded in `bfloat16_names`.
    """
    if isinstance(array, np.ndarray) and array.dtype == _BFLOAT16:
        bfloat16_names.append(name)
        return array.view(np.uint16)
    return array


def _real_or_none(value, name: str):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} = {value!r}: expected a real number or None, got "
            f"{type(value).__name__}"
        )
    return float(value)


def _int(value, name: str, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} = {value!r}: expected an int, got bool")
    try:
        result = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name} = {value!r}: expected an int, got {type(value).__name__}"
        ) from None
    if not low <= result <= high:
        raise ValueError(f"{name} = {result} is outside [{low}, {high}]")
    return result


def _sliding_window(window):
    if window is None:
        return None
    if not isinstance(window, (tuple, list)):
        raise TypeError(
            f"sliding_window = {window!r}: expected a pair (left, right) of "
            f"ints or None, got {type(window).__name__}"
        )
    if len(window) != 2:
        raise ValueError(
            f"sliding_window = {tuple(window)!r}: expected a pair "
            f"(left, right), got {len(window)} values"
        )
    return (
        _int(window[0], "sliding_window.left", _INT64_MIN, _INT64_MAX),
        _int(window[1], "sliding_window.right", _INT64_MIN, _INT64_MAX),
    )


def _shape(array) -> tuple:
    return tuple(int(extent) for extent in array.shape)


def _allocate(kind: str, like, shape: tuple, dtype):
    """Returns an uninitialised output buffer the extension writes into.

    PyTorch outputs are allocated by PyTorch; numpy and JAX outputs as numpy
    arrays (JAX arrays are immutable), handed to JAX afterwards.
    """
    if kind == "torch":
        torch = sys.modules["torch"]
        return torch.empty(shape, dtype=dtype, device=like.device)
    # XLA's CPU client aliases DLPack memory only at 64-byte alignment and
    # copies otherwise; numpy guarantees 16.
    dtype = np.dtype(dtype)
    num_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    storage = np.empty(num_bytes + _ALIGNMENT, dtype=np.uint8)
    offset = -storage.ctypes.data % _ALIGNMENT
    return storage[offset:offset + num_bytes].view(dtype).reshape(shape)


def _finish(kind: str, buffer):
    """Returns `buffer` as the caller's kind of array, without a copy."""
    if kind in ("numpy", "dlpack", "torch"):
        return buffer
    jax_numpy = sys.modules["jax.numpy"]
    if buffer.dtype == _BFLOAT16:
        return jax_numpy.from_dlpack(
            _raggedattn.bfloat16_view(buffer.view(np.uint16)))
    return jax_numpy.from_dlpack(buffer)


def ragged_decode_attention(
    query,
    key,
    value,
    sequence_start,
    sequence_end,
    softmax_scale=None,
    block_size=None,
    sliding_window=None,
    logits_soft_cap=None,
    softmax_aux=None,
    return_lse=False,
    num_threads=None,
):
    """Ragged decode attention: one query token per sequence.

    Row ``b`` attends to key positions ``sequence_start[b] <= j <
    sequence_end[b]`` of its KV cache; its query sits at position
    ``p = sequence_end[b] - 1``. Query head ``h`` reads KV head
    ``h // (Hq // Hkv)`` (GQA; ``Hkv == 1`` is MQA).

    Args:
      query: ``[B, Hq, D]``, float32, bfloat16 or float16.
      key: ``[B, S, Hkv, D]``, float32, bfloat16 or float16; ``Hq % Hkv == 0``.
      value: ``[B, S, Hkv, Dv]``, key's dtype. ``Dv`` may differ from ``D``.
      sequence_start: ``[B]`` int32, ``0 <= start <= end``.
      sequence_end: ``[B]`` int32, ``end <= S``.
      softmax_scale: multiplies ``q . k``. Default ``1 / sqrt(D)``. Finite.
      block_size: tokens per tile, ``>= 1``. Default: chosen by the kernel.
        Every value gives the same result up to rounding.
      sliding_window: ``(left, right)`` ints: key ``j`` is attended when
        ``p - left <= j <= p + right``; ``-1`` drops that side's bound.
        Default None (no window). "The last W tokens" is ``(W - 1, 0)``.
      logits_soft_cap: ``c > 0`` maps logits to ``c * tanh(x / c)``.
        Default None; ``0`` also means no cap.
      softmax_aux: sink logits, ``[Hq, N]``, ``[Hkv, N]`` or ``[N]`` with
        ``N >= 1``, float32, bfloat16 or float16. Each sink adds
        ``exp(a_n)`` to the softmax denominator once and has no value row.
        Not scaled, not capped. ``-inf`` is allowed; NaN and ``+inf`` are not.
        Default None.
      return_lse: also return ``lse = log(Z)``, the natural log of the
        softmax denominator. Default False.
      num_threads: worker threads, ``>= 1``; None or 0 uses every core the
        process may use. Results are bitwise identical for every value.

    Arrays may be numpy (bfloat16 via ``ml_dtypes.bfloat16``), JAX CPU
    arrays, PyTorch CPU tensors or any object with ``__dlpack__``. Strided
    views whose innermost dimension is contiguous are read in place, never
    copied. The GIL is released while computing.

    Returns:
      ``output`` ``[B, Hq, Dv]`` in query's dtype, or ``(output, lse)`` with
      ``lse`` ``[B, Hq]`` float32 when ``return_lse``. Both are the same kind
      of array as ``query`` (numpy, JAX or PyTorch; numpy for other DLPack
      objects). A row that attends to nothing gets ``output = 0`` and
      ``lse = log(sum(exp(sinks)))``, or ``-inf`` without sinks.

    Raises:
      TypeError: an argument is not an array, or an option has the wrong
        type (e.g. ``sliding_window`` that is not a pair of ints).
      ValueError: any bad-input rule of the contract (shapes, dtypes,
        strides, ranges, options, sink values); the message is the C++
        library's, naming the argument, the index and the value.
      RuntimeError: any other failure of the library.
    """
    kind = _kind(query)
    query = _check_array(query, "query")
    key = _check_array(key, "key")
    value = _check_array(value, "value")
    sequence_start = _check_array(sequence_start, "sequence_start")
    sequence_end = _check_array(sequence_end, "sequence_end")
    if softmax_aux is not None:
        softmax_aux = _check_array(softmax_aux, "softmax_aux")
    softmax_scale = _real_or_none(softmax_scale, "softmax_scale")
    logits_soft_cap = _real_or_none(logits_soft_cap, "logits_soft_cap")
    if block_size is not None:
        block_size = _int(block_size, "block_size", _INT64_MIN, _INT64_MAX)
    sliding_window = _sliding_window(sliding_window)
    num_threads = (0 if num_threads is None else
                   _int(num_threads, "num_threads", -_INT32_MAX - 1,
                        _INT32_MAX))
    if not isinstance(return_lse, (bool, np.bool_)):
        raise TypeError(
            f"return_lse = {return_lse!r}: expected a bool, got "
            f"{type(return_lse).__name__}")

    # With a wrong rank the output shape is unknowable; the extension then
    # reports the rank error of query or value before it looks at output.
    query_shape, value_shape = _shape(query), _shape(value)
    if len(query_shape) == 3 and len(value_shape) == 4:
        batch, num_qo_heads = query_shape[0], query_shape[1]
        output_shape = (batch, num_qo_heads, value_shape[3])
    else:
        batch, num_qo_heads = 1, 1
        output_shape = (1, 1, 1)
    if kind == "torch":
        output_dtype, lse_dtype = query.dtype, sys.modules["torch"].float32
    else:
        output_dtype, lse_dtype = np.dtype(query.dtype), np.float32
    output = _allocate(kind, query, output_shape, output_dtype)
    lse = (_allocate(kind, query, (batch, num_qo_heads), lse_dtype)
           if return_lse else None)

    bfloat16_names = []
    _raggedattn.ragged_decode_attention(
        _extension_form(query, "query", bfloat16_names),
        _extension_form(key, "key", bfloat16_names),
        _extension_form(value, "value", bfloat16_names),
        _extension_form(sequence_start, "sequence_start", bfloat16_names),
        _extension_form(sequence_end, "sequence_end", bfloat16_names),
        _extension_form(output, "output", bfloat16_names),
        None if lse is None else _extension_form(lse, "lse", bfloat16_names),
        None if softmax_aux is None else _extension_form(
            softmax_aux, "softmax_aux", bfloat16_names),
        softmax_scale,
        block_size,
        sliding_window,
        logits_soft_cap,
        num_threads,
        bfloat16_names,
    )

    output = _finish(kind, output)
    if return_lse:
        return output, _finish(kind, lse)
    return output
