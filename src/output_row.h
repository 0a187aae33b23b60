// The merge's row operations in vectors: adding weighted partial rows and
// rounding the merged f32 rows to the query's dtype.

#ifndef RAGGEDATTN_SRC_OUTPUT_ROW_H_
#define RAGGEDATTN_SRC_OUTPUT_ROW_H_

#include <cstdint>

#include "src/dtype.h"

namespace raggedattn {

// StoreRowFromF32 with the best SIMD target's conversion for bf16 and f16:
// each value rounded once, to nearest even, bit for bit as BF16BitsFromF32
// and F16BitsFromF32 round it, except that an f16 NaN's payload may differ.
void StoreOutputRow(const float* in, int64_t n, void* base, DType dtype,
                    int64_t offset);

// acc[i] += weight * x[i] for i < n, on the best SIMD target (with a fused
// multiply-add where it has one).
void AddScaledRow(const float* x, float weight, int64_t n, float* acc);

}  // namespace raggedattn

#endif  // RAGGEDATTN_SRC_OUTPUT_ROW_H_
