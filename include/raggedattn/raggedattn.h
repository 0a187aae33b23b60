// raggedattn: ragged decode attention on CPUs.
//
// One new query token per sequence attends to that sequence's slice of a KV
// cache, with grouped-query heads, sliding windows, logit soft caps and
// attention sinks. docs/semantics.md is the full contract; this header is the
// whole public C++ API and holds no SIMD types.

#ifndef RAGGEDATTN_RAGGEDATTN_H_
#define RAGGEDATTN_RAGGEDATTN_H_

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <stdexcept>
#include <string>

namespace raggedattn {

// Element types a tensor view may hold.
enum class DType { kF32, kBF16, kF16, kI32 };

// Returns "f32", "bf16", "f16" or "i32".
const char* DTypeName(DType dtype);

// Returns the size of one element in bytes.
size_t DTypeSize(DType dtype);

// Bad input: a shape, dtype, stride, index or option that breaks the contract.
// The message names the argument, the index, the value and the rule.
class InvalidArgument : public std::invalid_argument {
 public:
  explicit InvalidArgument(const std::string& what)
      : std::invalid_argument(what) {}
};

// Any other failure (for example running out of memory for the plan).
class RuntimeError : public std::runtime_error {
 public:
  explicit RuntimeError(const std::string& what) : std::runtime_error(what) {}
};

inline constexpr int kMaxRank = 4;

// A non-owning view of caller memory: data pointer, dtype, shape and strides
// counted in elements (not bytes). The innermost stride must be 1; any other
// stride may be any non-negative value, so slices of a larger cache and
// queries inside a packed QKV buffer are read in place.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kF32;
  int rank = 0;
  int64_t shape[kMaxRank] = {0, 0, 0, 0};
  int64_t strides[kMaxRank] = {0, 0, 0, 0};

  // Returns a row-major contiguous view of `shape`.
  static TensorView Contiguous(const void* data, DType dtype,
                               std::initializer_list<int64_t> shape);
  // Returns a view with explicit strides (in elements).
  static TensorView Strided(const void* data, DType dtype,
                            std::initializer_list<int64_t> shape,
                            std::initializer_list<int64_t> strides);

  // Returns the number of elements (the product of the shape).
  int64_t NumElements() const;
};

// A sliding window around the query position p = sequence_end - 1: key j is
// attended when p - left <= j <= p + right. -1 drops that side's bound. A
// model whose config says "the last W tokens" uses left = W - 1, right = 0.
struct SlidingWindow {
  int64_t left = -1;
  int64_t right = -1;
};

struct Options {
  // Multiplies q . k. Default 1 / sqrt(head_dim). Must be finite.
  std::optional<double> softmax_scale;
  // Default: no window.
  std::optional<SlidingWindow> sliding_window;
  // c > 0 caps logits to c * tanh(x / c). Absent or 0: no cap.
  std::optional<double> logits_soft_cap;
  // Tokens per tile, >= 1. Default: chosen by the kernel. Every value gives
  // the same result up to rounding.
  std::optional<int64_t> block_size;
  // Worker threads, >= 1; 0 uses every core the process may use. Results are
  // bitwise identical for every value.
  int num_threads = 0;
};

// Computes ragged decode attention (docs/semantics.md).
//
//   query           [batch, num_qo_heads, head_dim]              f32/bf16/f16
//   key             [batch, seq_len, num_kv_heads, head_dim]     f32/bf16/f16
//   value           [batch, seq_len, num_kv_heads, head_dim_v]   key's dtype
//   sequence_start  [batch]                                      i32
//   sequence_end    [batch]                                      i32
//   output          [batch, num_qo_heads, head_dim_v]            query's dtype
//   softmax_aux     optional sink logits, [num_qo_heads, num_sinks],
//                   [num_kv_heads, num_sinks] or [num_sinks]     f32/bf16/f16
//   maybe_lse       optional [batch, num_qo_heads] f32: log of the softmax
//                   denominator, natural log.
//
// Query head h reads KV head h / (num_qo_heads / num_kv_heads). Every argument
// is validated before anything is written; bad input throws InvalidArgument
// and leaves output and lse untouched. Thread-safe: calls from several threads
// at once are independent.
void ragged_decode_attention(const TensorView& query, const TensorView& key,
                             const TensorView& value,
                             const TensorView& sequence_start,
                             const TensorView& sequence_end,
                             const TensorView& output,
                             const Options& options = {},
                             const TensorView* softmax_aux = nullptr,
                             const TensorView* maybe_lse = nullptr);

// Runs every check of ragged_decode_attention without computing anything.
// Throws InvalidArgument on the first rule broken.
void validate_arguments(const TensorView& query, const TensorView& key,
                        const TensorView& value,
                        const TensorView& sequence_start,
                        const TensorView& sequence_end,
                        const TensorView& output, const Options& options = {},
                        const TensorView* softmax_aux = nullptr,
                        const TensorView* maybe_lse = nullptr);

// Returns the name of the SIMD target calls dispatch to on this CPU, e.g.
// "AVX3" or "AVX2".
const char* active_simd_target();

}  // namespace raggedattn

#endif  // RAGGEDATTN_RAGGEDATTN_H_
