// The C++ example of README.md, built and run by CTest so it stays true.

#include <cstdint>
#include <cstdio>
#include <vector>

#include "raggedattn/raggedattn.h"

int main() {
  using raggedattn::DType;
  using raggedattn::TensorView;
  // Llama-3-8B's attention shape over a bf16 cache with room for 4096
  // tokens, of which each call sees the first 2048.
  const int64_t batch = 2, heads = 32, kv_heads = 8, dim = 128;
  const int64_t capacity = 4096, seq_len = 2048;
  std::vector<uint16_t> query(batch * heads * dim, 0x3F80);  // bf16 1.0
  std::vector<uint16_t> key(batch * capacity * kv_heads * dim, 0x3F00);
  std::vector<uint16_t> value(batch * capacity * kv_heads * dim, 0x3E80);
  std::vector<int32_t> start = {0, 100}, end = {2048, 1500};
  std::vector<uint16_t> output(batch * heads * dim);
  std::vector<float> lse(batch * heads);

  // The cache view: strides in elements, batch stride over the capacity.
  const int64_t token = kv_heads * dim;
  const TensorView key_view = TensorView::Strided(
      key.data(), DType::kBF16, {batch, seq_len, kv_heads, dim},
      {capacity * token, token, dim, 1});
  const TensorView value_view = TensorView::Strided(
      value.data(), DType::kBF16, {batch, seq_len, kv_heads, dim},
      {capacity * token, token, dim, 1});
  const TensorView lse_view =
      TensorView::Contiguous(lse.data(), DType::kF32, {batch, heads});

  raggedattn::Options options;
  options.sliding_window = raggedattn::SlidingWindow{1023, 0};
  options.logits_soft_cap = 30.0;
  try {
    raggedattn::ragged_decode_attention(
        TensorView::Contiguous(query.data(), DType::kBF16, {batch, heads, dim}),
        key_view, value_view,
        TensorView::Contiguous(start.data(), DType::kI32, {batch}),
        TensorView::Contiguous(end.data(), DType::kI32, {batch}),
        TensorView::Contiguous(output.data(), DType::kBF16,
                               {batch, heads, dim}),
        options, /*softmax_aux=*/nullptr, &lse_view);
  } catch (const raggedattn::InvalidArgument& e) {
    std::fprintf(stderr, "bad input: %s\n", e.what());
    return 2;
  }
  std::printf("lse[0, 0] = %f on %s\n", lse[0],
              raggedattn::active_simd_target());
}
