# Type stubs for the compiled half of raggedattn (python/extension.cc).
# Private: call raggedattn.ragged_decode_attention instead.

from typing import Any, Optional, Sequence, Tuple

def ragged_decode_attention(
    query: Any,
    key: Any,
    value: Any,
    sequence_start: Any,
    sequence_end: Any,
    output: Any,
    lse: Optional[Any],
    softmax_aux: Optional[Any],
    softmax_scale: Optional[float],
    block_size: Optional[int],
    sliding_window: Optional[Tuple[int, int]],
    logits_soft_cap: Optional[float],
    num_threads: int,
    bfloat16_names: Sequence[str],
) -> None:
    """Writes into preallocated output (and lse); arguments already checked."""

def bfloat16_view(bits: Any) -> Any:
    """Returns a bf16 DLPack view of a uint16 array's memory."""

def data_pointer(array: Any) -> int:
    """Returns the address the extension reads `array` from."""

def active_simd_target() -> str:
    """Returns the SIMD target calls dispatch to, e.g. "AVX3"."""
