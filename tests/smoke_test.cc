#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "raggedattn/raggedattn.h"
#include "src/reference/reference.h"

namespace raggedattn {
namespace {

TEST(Smoke, MatchesReference) {
  const int64_t B = 3, S = 1000, Hkv = 2, G = 3, Hq = Hkv * G, D = 37, Dv = 21;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::vector<float> q(B * Hq * D), k(B * S * Hkv * D), v(B * S * Hkv * Dv);
  for (auto& x : q) x = normal(rng);
  for (auto& x : k) x = normal(rng);
  for (auto& x : v) x = normal(rng);
  std::vector<int32_t> starts = {0, 5, 7}, ends = {1000, 700, 7};
  std::vector<float> out(B * Hq * Dv), lse(B * Hq);
  auto qv = TensorView::Contiguous(q.data(), DType::kF32, {B, Hq, D});
  auto kv = TensorView::Contiguous(k.data(), DType::kF32, {B, S, Hkv, D});
  auto vv = TensorView::Contiguous(v.data(), DType::kF32, {B, S, Hkv, Dv});
  auto sv = TensorView::Contiguous(starts.data(), DType::kI32, {B});
  auto ev = TensorView::Contiguous(ends.data(), DType::kI32, {B});
  auto ov = TensorView::Contiguous(out.data(), DType::kF32, {B, Hq, Dv});
  auto lv = TensorView::Contiguous(lse.data(), DType::kF32, {B, Hq});
  Options options;
  options.block_size = 50;
  ragged_decode_attention(qv, kv, vv, sv, ev, ov, options, nullptr, &lv);
  const auto expected =
      reference::Compute(qv, kv, vv, sv, ev, options, nullptr);
  const auto error = reference::Compare(expected, ov, &lv);
  EXPECT_LE(error.output, 3e-5);
  EXPECT_LE(error.lse, 1e-4);
}

}  // namespace
}  // namespace raggedattn
