// Rounding the merged f32 output rows to the query's dtype.

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

}  // namespace raggedattn

#endif  // RAGGEDATTN_SRC_OUTPUT_ROW_H_
