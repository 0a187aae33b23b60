// The float64 oracle: docs/semantics.md evaluated as plainly as possible.
//
// Not used by the fast path. Tests, the CLI's bench and the benchmarks compare
// the library against it.

#ifndef RAGGEDATTN_SRC_REFERENCE_REFERENCE_H_
#define RAGGEDATTN_SRC_REFERENCE_REFERENCE_H_

#include <cstdint>
#include <vector>

#include "raggedattn/raggedattn.h"

namespace raggedattn {
namespace reference {

struct Result {
  int64_t batch = 0;
  int64_t num_qo_heads = 0;
  int64_t head_dim_v = 0;
  std::vector<double> output;  // [batch, num_qo_heads, head_dim_v]
  std::vector<double> lse;     // [batch, num_qo_heads]
  // Largest |value| over each row's attended key positions (0 when none):
  // the scale of docs/semantics.md's accuracy bound.
  std::vector<double> value_scale;  // [batch]
};

// Evaluates the definition in float64 for the rows in `rows` (all rows when
// empty); other rows of the result are left 0. Arguments must be valid.
Result Compute(const TensorView& query, const TensorView& key,
               const TensorView& value, const TensorView& sequence_start,
               const TensorView& sequence_end, const Options& options,
               const TensorView* softmax_aux = nullptr,
               const std::vector<int64_t>& rows = {});

struct Error {
  // max over (b, h, d) of |output - reference| / max|attended value of b|.
  double output = 0.0;
  // max over (b, h) of |lse - reference lse|; infinite on a -inf mismatch.
  double lse = 0.0;
};

// Compares an output [batch, num_qo_heads, head_dim_v] (any float dtype,
// strided) and an optional f32 lse [batch, num_qo_heads] with `expected` on
// the rows in `rows` (all rows when empty). NaN anywhere gives NaN.
Error Compare(const Result& expected, const TensorView& output,
              const TensorView* lse = nullptr,
              const std::vector<int64_t>& rows = {});

// The accuracy bound of docs/semantics.md for an output dtype.
double OutputTolerance(DType output_dtype);
inline constexpr double kLseTolerance = 1e-4;

}  // namespace reference
}  // namespace raggedattn

#endif  // RAGGEDATTN_SRC_REFERENCE_REFERENCE_H_
