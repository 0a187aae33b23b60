// docs/semantics.md "Options": defaults, and options that must not change
// the result (block_size beyond rounding, num_threads = 0, window sides
// larger than any row). Checked on every SIMD target.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "raggedattn/raggedattn.h"
#include "src/plan.h"
#include "tests/test_util.h"

namespace raggedattn {
namespace test {
namespace {

// The default scale is 1 / sqrt(head_dim): bitwise the same as passing it,
// and different from 1 (the seed's text), so a wrong default shows.
TEST(Options, DefaultScaleIsOneOverSqrtHeadDim) {
  uint64_t seed = 1;
  for (int64_t dim : {1, 7, 64, 80, 96}) {
    Case c;
    c.Batch(3).Heads(4, 2).Dims(dim, 16).SeqLen(70).Seed(seed++);
    const Inputs in = MakeInputs(c);
    Case explicit_scale = c;
    explicit_scale.options.softmax_scale = 1.0 / std::sqrt(double(dim));
    const reference::Result expected = Reference(explicit_scale, in);
    Case unit_scale = c;
    unit_scale.options.softmax_scale = 1.0;
    ForEachTarget([&] {
      const Outputs by_default = RunLibrary(c, in);
      ExpectMatches(c, in, expected, by_default);
      const Outputs given = RunLibrary(explicit_scale, in);
      EXPECT_TRUE(by_default.output.SameBytes(given.output)) << "D=" << dim;
      EXPECT_TRUE(by_default.lse.SameBytes(given.lse)) << "D=" << dim;
      if (dim > 1) {
        const Outputs unit = RunLibrary(unit_scale, in);
        EXPECT_FALSE(by_default.lse.SameBytes(unit.lse)) << "D=" << dim;
      }
    });
  }
}

// Every block size meets the bound, so any two differ by at most twice it.
TEST(Options, BlockSizeChangesOnlyRounding) {
  Case c;
  c.Batch(4).Heads(8, 2).Dims(64, 64).SeqLen(1500).Seed(20);
  c.DTypes(DType::kF32, DType::kBF16).Sinks(SinkShape::kShared, 1);
  c.Ranges({0, 3, 700, 64}, {1500, 1499, 1201, 65});
  const Inputs in = MakeInputs(c);
  const reference::Result expected = Reference(c, in);
  ForEachTarget([&] {
    const Outputs by_default = RunLibrary(c, in);
    ExpectMatches(c, in, expected, by_default);
    for (int64_t block : {1, 3, 64, 129, 512, 5000}) {
      Case blocked = c;
      blocked.BlockSize(block);
      const Outputs got = RunLibrary(blocked, in);
      ExpectMatches(blocked, in, expected, got);
      for (int64_t b = 0; b < c.batch; ++b) {
        for (int64_t h = 0; h < c.num_qo_heads; ++h) {
          for (int64_t d = 0; d < c.head_dim_v; ++d) {
            EXPECT_NEAR(got.output.Get({b, h, d}),
                        by_default.output.Get({b, h, d}),
                        2 * reference::OutputTolerance(DType::kF32) *
                            expected.value_scale[b]);
          }
          EXPECT_NEAR(got.lse.Get({b, h}), by_default.lse.Get({b, h}),
                      2 * reference::kLseTolerance);
        }
      }
    }
  });
}

// The default block size follows the documented rule (docs/semantics.md,
// section 10): a call without one is bitwise the call with the rule's
// value, and differs from the call with half of it.
TEST(Options, DefaultBlockSizeFollowsTheRule) {
  struct Shape {
    int64_t qo_heads, kv_heads, dim;
    DType kv;
    int64_t window_left;  // -1: none
    int64_t expected;     // the rule's block size on AMD, 16 floats a vector
    int64_t narrow;       // and with fewer; elsewhere always 32
  };
  const Shape shapes[] = {
      {8, 2, 64, DType::kBF16, -1, 64, 64},    // group 4
      {4, 2, 64, DType::kBF16, -1, 128, 64},   // group 2, 512 B per token
      {2, 2, 64, DType::kF32, -1, 128, 64},    // group 1
      {4, 2, 64, DType::kBF16, 600, 128, 64},  // a window of a chunk or more
      {4, 2, 64, DType::kBF16, 300, 32, 32},   // a shorter window
      {32, 2, 64, DType::kBF16, -1, 32, 32},   // group 16: the wide kernel
      // Group 2 with 8 KiB of rows per token: 128 tokens would be 1 MiB
      // and are allowed; 16 KiB per token halves them to 64.
      {16, 8, 256, DType::kBF16, -1, 128, 64},
      {16, 8, 256, DType::kF32, -1, 64, 64},
  };
  uint64_t seed = 40;
  for (const Shape& shape : shapes) {
    Case c;
    c.Batch(2).Heads(shape.qo_heads, shape.kv_heads).Dims(shape.dim, shape.dim);
    c.SeqLen(700).DTypes(DType::kF32, shape.kv).Seed(seed++);
    c.Ranges({0, 5}, {700, 650});
    if (shape.window_left >= 0) c.Window(shape.window_left, 0);
    const Inputs in = MakeInputs(c);
    const std::string name =
        std::to_string(shape.qo_heads) + "/" + std::to_string(shape.kv_heads) +
        "/" + std::to_string(shape.dim) + " " + DTypeName(shape.kv) +
        " window " + std::to_string(shape.window_left);
    ForEachTarget([&] {
      const int64_t expected = !CpuIsAmd()               ? 32
                               : DispatchedLanes() >= 16 ? shape.expected
                                                         : shape.narrow;
      Case rule = c;
      rule.BlockSize(expected);
      Case half = c;
      half.BlockSize(expected / 2);
      const Outputs by_default = RunLibrary(c, in);
      const Outputs by_rule = RunLibrary(rule, in);
      const Outputs by_half = RunLibrary(half, in);
      EXPECT_TRUE(by_default.output.SameBytes(by_rule.output)) << name;
      EXPECT_TRUE(by_default.lse.SameBytes(by_rule.lse)) << name;
      EXPECT_FALSE(by_default.output.SameBytes(by_half.output) &&
                   by_default.lse.SameBytes(by_half.lse))
          << name;
    });
  }
}

// The rule itself, for CPUs with and without long tiles, whichever this
// one is.
TEST(Options, DefaultBlockSizeRule) {
  // Group, window_left, bytes per token, lanes, long tiles: block size.
  struct Row {
    int64_t group, window_left, token_bytes;
    int lanes;
    bool long_tiles;
    int64_t expected;
  };
  const Row rows[] = {
      {4, -1, 4096, 16, true, 64},    {4, -1, 4096, 8, true, 64},
      {2, -1, 4096, 16, true, 128},   {2, -1, 4096, 8, true, 64},
      {1, -1, 8192, 16, true, 128},   {1, -1, 8193, 16, true, 64},
      {2, -1, 16384, 16, true, 64},   {8, -1, 32768, 16, true, 32},
      {8, -1, 1 << 20, 16, true, 32}, {2, 511, 512, 16, true, 32},
      {2, 512, 512, 16, true, 128},   {9, -1, 512, 16, true, 32},
      {71, -1, 128, 16, true, 32},    {4, -1, 4096, 16, false, 32},
      {1, -1, 512, 16, false, 32},    {2, 4095, 8192, 16, false, 32},
  };
  for (const Row& r : rows) {
    EXPECT_EQ(DefaultBlockSize(r.group, r.window_left, r.token_bytes, r.lanes,
                               r.long_tiles),
              r.expected)
        << "group " << r.group << " window " << r.window_left << " bytes "
        << r.token_bytes << " lanes " << r.lanes << " long " << r.long_tiles;
  }
}

TEST(Options, ZeroThreadsMeansAllCores) {
  Case c;
  c.Batch(5).Heads(4, 4).Dims(32, 32).SeqLen(2000).Seed(30).Threads(0);
  const Inputs in = MakeInputs(c);
  const reference::Result expected = Reference(c, in);
  Case one_thread = c;
  one_thread.Threads(1);
  ForEachTarget([&] {
    const Outputs got = RunLibrary(c, in);
    ExpectMatches(c, in, expected, got);
    const Outputs single = RunLibrary(one_thread, in);
    EXPECT_TRUE(got.output.SameBytes(single.output));
    EXPECT_TRUE(got.lse.SameBytes(single.lse));
  });
}

// Window sides beyond any row, up to INT64_MAX, attend the same keys as an
// unbounded side, so the results are bitwise those without a window. This
// catches p + right overflowing.
TEST(Options, HugeWindowSidesEqualUnbounded) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  Case c;
  c.Batch(4).Heads(4, 2).Dims(16, 16).SeqLen(300).Seed(40).BlockSize(64);
  c.Ranges({0, 10, 299, 5}, {300, 200, 300, 5});
  const Inputs in = MakeInputs(c);
  const reference::Result expected = Reference(c, in);
  const SlidingWindow windows[] = {
      {-1, -1}, {300, 300}, {kMax, -1}, {-1, kMax}, {kMax, kMax}};
  ForEachTarget([&] {
    const Outputs unbounded = RunLibrary(c, in);
    ExpectMatches(c, in, expected, unbounded);
    for (const SlidingWindow& w : windows) {
      Case windowed = c;
      windowed.Window(w.left, w.right);
      const Outputs got = RunLibrary(windowed, in);
      EXPECT_TRUE(got.output.SameBytes(unbounded.output))
          << "window (" << w.left << ", " << w.right << ")";
      EXPECT_TRUE(got.lse.SameBytes(unbounded.lse))
          << "window (" << w.left << ", " << w.right << ")";
      ExpectMatches(windowed, in, Reference(windowed, in), got);
    }
  });
}

// A soft cap of 0 means no cap, exactly like an absent one.
TEST(Options, ZeroSoftCapMeansNoCap) {
  Case c;
  c.Batch(2).Heads(4, 1).Dims(32, 32).SeqLen(100).Seed(50);
  c.query_stddev = 8.0;
  const Inputs in = MakeInputs(c);
  Case zero_cap = c;
  zero_cap.SoftCap(0.0);
  Case capped = c;
  capped.SoftCap(2.0);
  ForEachTarget([&] {
    const Outputs uncapped = RunLibrary(c, in);
    const Outputs zero = RunLibrary(zero_cap, in);
    EXPECT_TRUE(zero.output.SameBytes(uncapped.output));
    EXPECT_TRUE(zero.lse.SameBytes(uncapped.lse));
    // And a real cap does change the result on these large logits.
    EXPECT_FALSE(RunLibrary(capped, in).lse.SameBytes(uncapped.lse));
  });
}

// lse is optional; leaving it out changes nothing else.
TEST(Options, LseIsOptional) {
  Case c;
  c.Batch(3).Heads(4, 2).Dims(32, 16).SeqLen(700).Seed(70);
  c.Sinks(SinkShape::kPerQoHead, 1);
  const Inputs in = MakeInputs(c);
  ForEachTarget([&] {
    const Outputs with_lse = RunLibrary(c, in);
    Outputs without_lse = MakeOutputs(c);
    ragged_decode_attention(in.query.view(), in.key.view(), in.value.view(),
                            in.sequence_start.view(), in.sequence_end.view(),
                            without_lse.output.view(), c.options, in.aux_view(),
                            nullptr);
    EXPECT_TRUE(without_lse.output.SameBytes(with_lse.output));
    EXPECT_TRUE(without_lse.lse.SameBytes(MakeOutputs(c).lse));
  });
}

// The model-config convention: "the last W tokens" is left = W - 1.
TEST(Options, WindowOfLastWTokens) {
  const int64_t kW = 10;
  Case c;
  c.Batch(3).Heads(2, 1).Dims(8, 8).SeqLen(64).Seed(60).Window(kW - 1, 0);
  c.Ranges({0, 0, 50}, {64, 5, 64});
  const Inputs in = MakeInputs(c);
  // The same rows cut to their last W tokens by sequence_start instead.
  Case cut = c;
  cut.options.sliding_window.reset();
  Inputs cut_in = in;
  for (int64_t b = 0; b < c.batch; ++b) {
    const double start = in.sequence_start.Get({b});
    const double end = in.sequence_end.Get({b});
    cut_in.sequence_start.Set({b}, std::max(start, end - kW));
  }
  ForEachTarget([&] {
    const Outputs windowed = RunLibrary(c, in);
    const Outputs by_start = RunLibrary(cut, cut_in);
    EXPECT_TRUE(windowed.output.SameLogicalBytes(by_start.output));
    ExpectMatches(c, in, Reference(c, in), windowed);
  });
}

}  // namespace
}  // namespace test
}  // namespace raggedattn
