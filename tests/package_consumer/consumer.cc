// Links against raggedattn::raggedattn and checks one call: a single
// attended token makes the output equal that token's value row.

#include <cstdio>
#include <vector>

#include "raggedattn/raggedattn.h"

int main() {
  using raggedattn::DType;
  using raggedattn::TensorView;
  const int64_t batch = 1, seq_len = 4, heads = 2, dim = 3;
  std::vector<float> query(batch * heads * dim, 0.5f);
  std::vector<float> key(batch * seq_len * heads * dim, 1.0f);
  std::vector<float> value(batch * seq_len * heads * dim);
  for (size_t i = 0; i < value.size(); ++i) value[i] = static_cast<float>(i);
  std::vector<int32_t> start = {2}, end = {3};  // attends token 2 only
  std::vector<float> output(batch * heads * dim, -1.0f);

  raggedattn::ragged_decode_attention(
      TensorView::Contiguous(query.data(), DType::kF32, {batch, heads, dim}),
      TensorView::Contiguous(key.data(), DType::kF32,
                             {batch, seq_len, heads, dim}),
      TensorView::Contiguous(value.data(), DType::kF32,
                             {batch, seq_len, heads, dim}),
      TensorView::Contiguous(start.data(), DType::kI32, {batch}),
      TensorView::Contiguous(end.data(), DType::kI32, {batch}),
      TensorView::Contiguous(output.data(), DType::kF32, {batch, heads, dim}));

  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t d = 0; d < dim; ++d) {
      const float expected = value[(2 * heads + h) * dim + d];
      if (output[h * dim + d] != expected) {
        std::fprintf(stderr, "output[0, %ld, %ld] = %g, expected %g\n",
                     static_cast<long>(h), static_cast<long>(d),
                     output[h * dim + d], expected);
        return 1;
      }
    }
  }
  std::printf("consumer ok (%s)\n", raggedattn::active_simd_target());
  return 0;
}
