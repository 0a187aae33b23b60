// Test support: owned strided tensors, a builder-style description of one
// ragged_decode_attention call, and checks against the float64 reference.
//
// A Case says what to run (shapes, dtypes, options, ranges, padding); Make*
// turn it into tensors drawn from its seed; Run calls the library; the Expect*
// helpers compare with reference::Compute on the very same (already rounded)
// inputs, within the bounds of docs/semantics.md "Accuracy".

#ifndef RAGGEDATTN_TESTS_TEST_UTIL_H_
#define RAGGEDATTN_TESTS_TEST_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "raggedattn/raggedattn.h"
#include "src/decode_kernel.h"
#include "src/reference/reference.h"

namespace raggedattn {
namespace test {

// An owned tensor whose logical shape sits inside a larger row-major buffer:
// dimension i is padded by padding[i] elements, so every stride exceeds the
// contiguous one (padding of the innermost dimension lengthens each row,
// padding of dimension 0 leaves room after the last entry). The whole buffer
// starts as NaN (or as the given fill), so a read of padding shows up.
class Tensor {
 public:
  Tensor() = default;
  Tensor(DType dtype, std::vector<int64_t> shape,
         std::vector<int64_t> padding = {});
  // Copies own their storage: the copy's view points at the copy.
  Tensor(const Tensor& other) { *this = other; }
  Tensor& operator=(const Tensor& other);
  Tensor(Tensor&& other) noexcept { *this = std::move(other); }
  Tensor& operator=(Tensor&& other) noexcept;

  const TensorView& view() const { return view_; }
  DType dtype() const { return view_.dtype; }
  const std::vector<int64_t>& shape() const { return shape_; }

  // Returns element `index` widened to double (any dtype, i32 included).
  double Get(const std::vector<int64_t>& index) const;
  // Stores `value` at `index`, rounded once to the dtype.
  void Set(const std::vector<int64_t>& index, double value);

  // Fills every logical element with N(mean, stddev) rounded to the dtype.
  void FillNormal(std::mt19937_64& rng, double mean, double stddev);
  // Fills the whole buffer, padding included, with `value`.
  void FillAll(double value);

  // Returns true when both buffers hold the same bytes (padding included).
  bool SameBytes(const Tensor& other) const;
  // Returns the number of padding elements (outside the logical shape) whose
  // bytes differ from `before`'s.
  int64_t ChangedPadding(const Tensor& before) const;
  // Returns true when the logical elements of both tensors are bitwise equal.
  bool SameLogicalBytes(const Tensor& other) const;

 private:
  int64_t Offset(const std::vector<int64_t>& index) const;

  std::vector<int64_t> shape_;
  std::vector<int64_t> physical_shape_;
  std::vector<uint32_t> storage_;  // 4-byte words keep f32/i32 aligned
  TensorView view_;
};

// Calls `body` with every multi-index of `shape`, row-major order.
void ForEachIndex(const std::vector<int64_t>& shape,
                  const std::function<void(const std::vector<int64_t>&)>& body);

// Which softmax_aux layout a case passes (docs/semantics.md rule 4).
enum class SinkShape { kNone, kPerQoHead, kPerKvHead, kShared };

// One call of ragged_decode_attention, described builder-style:
//   Case c; c.Batch(3).Heads(8, 2).Dims(64, 64).SeqLen(300);
struct Case {
  int64_t batch = 1;
  int64_t num_qo_heads = 1;
  int64_t num_kv_heads = 1;
  int64_t head_dim = 16;
  int64_t head_dim_v = 16;
  int64_t seq_len = 64;
  DType query_dtype = DType::kF32;
  DType kv_dtype = DType::kF32;
  DType aux_dtype = DType::kF32;
  SinkShape sinks = SinkShape::kNone;
  int64_t num_sinks = 1;
  Options options;
  // Explicit [batch] ranges; when empty, MakeInputs draws them from the seed.
  std::vector<int32_t> starts;
  std::vector<int32_t> ends;
  // Extra elements per dimension (empty: none).
  std::vector<int64_t> query_padding;
  std::vector<int64_t> kv_padding;
  std::vector<int64_t> output_padding;
  std::vector<int64_t> lse_padding;
  std::vector<int64_t> aux_padding;
  double query_stddev = 1.0;
  double key_stddev = 1.0;
  double value_stddev = 1.0;
  double sink_mean = 0.0;
  double sink_stddev = 2.0;
  // Rows checked against the reference (empty: all). Big cases sample rows
  // because the reference costs O(batch * heads * seq_len * head_dim).
  std::vector<int64_t> rows;
  double lse_tolerance = reference::kLseTolerance;
  uint64_t seed = 1;

  Case& Batch(int64_t b) {
    batch = b;
    return *this;
  }
  Case& Heads(int64_t qo, int64_t kv) {
    num_qo_heads = qo;
    num_kv_heads = kv;
    return *this;
  }
  Case& Dims(int64_t d, int64_t dv) {
    head_dim = d;
    head_dim_v = dv;
    return *this;
  }
  Case& SeqLen(int64_t s) {
    seq_len = s;
    return *this;
  }
  Case& DTypes(DType q, DType kv) {
    query_dtype = q;
    kv_dtype = kv;
    return *this;
  }
  Case& Sinks(SinkShape shape, int64_t n, DType dtype = DType::kF32) {
    sinks = shape;
    num_sinks = n;
    aux_dtype = dtype;
    return *this;
  }
  Case& Ranges(std::vector<int32_t> s, std::vector<int32_t> e) {
    starts = std::move(s);
    ends = std::move(e);
    return *this;
  }
  Case& BlockSize(int64_t n) {
    options.block_size = n;
    return *this;
  }
  Case& Window(int64_t left, int64_t right) {
    options.sliding_window = SlidingWindow{left, right};
    return *this;
  }
  Case& SoftCap(double c) {
    options.logits_soft_cap = c;
    return *this;
  }
  Case& Threads(int n) {
    options.num_threads = n;
    return *this;
  }
  Case& Seed(uint64_t s) {
    seed = s;
    return *this;
  }

  // Returns a one-line summary for failure messages.
  std::string Describe() const;
};

// The inputs of a case. Tests may edit them (NaN rows, -inf sinks) before
// running; the reference then reads the edited values too.
struct Inputs {
  Tensor query;           // [batch, num_qo_heads, head_dim]
  Tensor key;             // [batch, seq_len, num_kv_heads, head_dim]
  Tensor value;           // [batch, seq_len, num_kv_heads, head_dim_v]
  Tensor sequence_start;  // [batch] i32
  Tensor sequence_end;    // [batch] i32
  Tensor aux;             // per SinkShape; unused with kNone
  bool has_aux = false;

  const TensorView* aux_view() const { return has_aux ? &aux.view() : nullptr; }
};

// The library's results, in buffers pre-filled with a sentinel.
struct Outputs {
  Tensor output;  // [batch, num_qo_heads, head_dim_v], query's dtype
  Tensor lse;     // [batch, num_qo_heads] f32
};

// The bit pattern every output buffer starts with: a value no computation
// produces by accident.
inline constexpr double kSentinel = -12345.0;

// Returns the inputs of `c`, drawn deterministically from c.seed.
Inputs MakeInputs(const Case& c);
// Returns output and lse buffers of `c`'s shapes and padding, all kSentinel.
Outputs MakeOutputs(const Case& c);

// Runs the library on `inputs` with `options` into fresh sentinel buffers.
Outputs RunLibrary(const Case& c, const Inputs& inputs, const Options& options);
inline Outputs RunLibrary(const Case& c, const Inputs& inputs) {
  return RunLibrary(c, inputs, c.options);
}

// Returns the float64 reference of `inputs` on c.rows.
reference::Result Reference(const Case& c, const Inputs& inputs);

// Returns row b's attended range [begin, end) per docs/semantics.md rule 1,
// computed here independently of the library's plan; begin == end if empty.
void AttendedRange(const Case& c, const Inputs& inputs, int64_t b,
                   int64_t* begin, int64_t* end);

// Expects `got` to match `expected` on c.rows within the accuracy bounds, the
// output of every empty row to be exactly 0, and the padding of output and
// lse to still hold the sentinel.
void ExpectMatches(const Case& c, const Inputs& inputs,
                   const reference::Result& expected, const Outputs& got);

// Runs `c` on every SIMD target against one reference evaluation.
void ExpectMatchesOnAllTargets(const Case& c, const Inputs& inputs);
inline void ExpectMatchesOnAllTargets(const Case& c) {
  ExpectMatchesOnAllTargets(c, MakeInputs(c));
}

// Turns the AVX512-BF16 dot products on or off for a scope (on: where the
// CPU has them), and back as they were after.
class ScopedBf16DotProducts {
 public:
  explicit ScopedBf16DotProducts(bool allowed)
      : before_(Bf16DotProductsAllowed()) {
    AllowBf16DotProducts(allowed);
  }
  ~ScopedBf16DotProducts() { AllowBf16DotProducts(before_); }
  ScopedBf16DotProducts(const ScopedBf16DotProducts&) = delete;
  ScopedBf16DotProducts& operator=(const ScopedBf16DotProducts&) = delete;

 private:
  bool before_;
};

// Returns the SIMD targets this build has and this CPU runs.
std::vector<int64_t> AllTargets();

// Calls `body` once per SIMD target with that target forced (and checks that
// the library reports it), under a SCOPED_TRACE naming it.
void ForEachTarget(const std::function<void()>& body);

}  // namespace test
}  // namespace raggedattn

#endif  // RAGGEDATTN_TESTS_TEST_UTIL_H_
