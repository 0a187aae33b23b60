# Type stubs for raggedattn. Shapes: B batch, Hq query heads, Hkv KV heads,
# S cache length, D head_dim, Dv value head_dim, N sinks.

from typing import (Any, Literal, Optional, Protocol, Sequence, Tuple, TypeVar,
                    Union, overload)

__all__ = ["ragged_decode_attention", "active_simd_target"]
__version__: str

class _DLPackArray(Protocol):
    """numpy.ndarray, jax.Array, torch.Tensor or any CPU DLPack object."""

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any: ...
    def __dlpack_device__(self) -> Tuple[int, int]: ...

# The outputs are the same kind of array as `query` (numpy for DLPack
# objects that are not numpy, JAX or PyTorch).
_Array = TypeVar("_Array", bound=_DLPackArray)

@overload
def ragged_decode_attention(
    query: _Array,  # [B, Hq, D] float32 | bfloat16 | float16
    key: _DLPackArray,  # [B, S, Hkv, D], Hq % Hkv == 0
    value: _DLPackArray,  # [B, S, Hkv, Dv], key's dtype
    sequence_start: _DLPackArray,  # [B] int32
    sequence_end: _DLPackArray,  # [B] int32
    softmax_scale: Optional[float] = None,  # default 1 / sqrt(D)
    block_size: Optional[int] = None,  # >= 1; default chosen by the kernel
    sliding_window: Optional[Union[Tuple[int, int], Sequence[int]]] = None,
    logits_soft_cap: Optional[float] = None,  # c > 0; None or 0: no cap
    softmax_aux: Optional[_DLPackArray] = None,  # [Hq, N] | [Hkv, N] | [N]
    return_lse: Literal[False] = False,
    num_threads: Optional[int] = None,  # None or 0: every usable core
) -> _Array:  # output [B, Hq, Dv], query's dtype
    """Ragged decode attention; returns output [B, Hq, Dv] in query's dtype."""

@overload
def ragged_decode_attention(
    query: _Array,
    key: _DLPackArray,
    value: _DLPackArray,
    sequence_start: _DLPackArray,
    sequence_end: _DLPackArray,
    softmax_scale: Optional[float] = None,
    block_size: Optional[int] = None,
    sliding_window: Optional[Union[Tuple[int, int], Sequence[int]]] = None,
    logits_soft_cap: Optional[float] = None,
    softmax_aux: Optional[_DLPackArray] = None,
    *,
    return_lse: Literal[True],
    num_threads: Optional[int] = None,
) -> Tuple[_Array, _Array]:  # output [B, Hq, Dv], lse [B, Hq] float32
    """Ragged decode attention; returns (output [B, Hq, Dv], lse [B, Hq])."""

@overload
def ragged_decode_attention(
    query: _Array,
    key: _DLPackArray,
    value: _DLPackArray,
    sequence_start: _DLPackArray,
    sequence_end: _DLPackArray,
    softmax_scale: Optional[float] = None,
    block_size: Optional[int] = None,
    sliding_window: Optional[Union[Tuple[int, int], Sequence[int]]] = None,
    logits_soft_cap: Optional[float] = None,
    softmax_aux: Optional[_DLPackArray] = None,
    return_lse: bool = False,
    num_threads: Optional[int] = None,
) -> Union[_Array, Tuple[_Array, _Array]]: ...

def active_simd_target() -> str:
    """Returns the SIMD target calls dispatch to on this CPU, e.g. "AVX3"."""
