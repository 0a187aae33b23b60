// The library against the float64 reference (docs/semantics.md "Definition"
// and "Accuracy"), on every SIMD target this build has.

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "raggedattn/raggedattn.h"
#include "src/decode_kernel.h"
#include "src/dtype.h"
#include "src/output_row.h"
#include "tests/test_util.h"

namespace raggedattn {
namespace test {
namespace {

constexpr DType kFloatTypes[] = {DType::kF32, DType::kBF16, DType::kF16};
constexpr double kInf = std::numeric_limits<double>::infinity();

TEST(Accuracy, EveryDTypeCombination) {
  const SinkShape shapes[] = {SinkShape::kPerQoHead, SinkShape::kPerKvHead,
                              SinkShape::kShared};
  uint64_t seed = 100;
  for (DType query : kFloatTypes) {
    for (DType kv : kFloatTypes) {
      for (DType aux : kFloatTypes) {
        Case c;
        c.Batch(3).Heads(8, 2).Dims(64, 48).SeqLen(157).DTypes(query, kv);
        c.Sinks(shapes[seed % 3], 2, aux).BlockSize(32).Seed(seed);
        ++seed;
        c.Ranges({0, 40, 3}, {157, 101, 3});
        ExpectMatchesOnAllTargets(c);
      }
    }
  }
}

TEST(Accuracy, HeadGroupings) {
  struct Grouping {
    int64_t num_qo_heads;
    int64_t num_kv_heads;
  };
  // MHA, GQA and MQA with every group size that has its own head block
  // (1, 2, 4, 5, 6, 7, 8, 16), sizes between them, and groups of several
  // vectors of heads, whole or not.
  const Grouping groupings[] = {
      {1, 1},   {4, 4},  {8, 4},  {8, 2},  {32, 8}, {14, 2}, {7, 1},
      {71, 1},  {142, 2}, {5, 1}, {3, 1},  {12, 2}, {8, 1},  {9, 1},
      {24, 2},  {16, 1}, {32, 2}, {17, 1}, {32, 1}, {33, 1}, {48, 3}};
  uint64_t seed = 200;
  for (const Grouping& g : groupings) {
    for (DType kv : {DType::kF32, DType::kBF16}) {
      Case c;
      c.Batch(2).Heads(g.num_qo_heads, g.num_kv_heads).Dims(64, 64);
      c.SeqLen(130).DTypes(DType::kF32, kv).Seed(seed++);
      c.Ranges({0, 9}, {130, 77});
      ExpectMatchesOnAllTargets(c);
    }
  }
}

// Groups of more than 8 heads (heads in vector lanes on wide targets) with
// every option at once: Dv != D with tails, a window, a soft cap and sinks.
TEST(Accuracy, LargeGroupsWithEveryOption) {
  uint64_t seed = 250;
  for (DType kv : kFloatTypes) {
    for (DType query : {DType::kF32, DType::kBF16}) {
      Case c;
      c.Batch(3).Heads(40, 2).Dims(72, 40).SeqLen(140).DTypes(query, kv);
      c.Window(90, 3).SoftCap(20.0).Sinks(SinkShape::kPerQoHead, 2, kv);
      c.BlockSize(seed % 2 ? 32 : 13);
      c.Seed(seed++);
      c.Ranges({0, 30, 139}, {140, 100, 140});
      ExpectMatchesOnAllTargets(c);
    }
  }
}

// The AVX512-BF16 kernels run for a bf16 query with bf16 KV on a CPU that
// has the instructions, and only then, and match the reference like the
// f32 kernels.
TEST(Accuracy, Bf16DotProductsRunAndMatch) {
  if (!CpuHasBf16DotProducts()) GTEST_SKIP() << "this CPU has no AVX512-BF16";
  struct Shape {
    int64_t num_qo_heads, num_kv_heads, head_dim;
  };
  // Narrow head blocks (with tails past 32 elements) and wide ones; an odd
  // head_dim keeps wide blocks on the f32 kernel.
  const Shape shapes[] = {{32, 8, 128}, {28, 4, 72}, {8, 2, 17},
                          {71, 1, 64},  {40, 2, 66}, {40, 2, 65}};
  uint64_t seed = 280;
  for (const Shape& shape : shapes) {
    for (DType query : {DType::kBF16, DType::kF32}) {
      Case c;
      c.Batch(2).Heads(shape.num_qo_heads, shape.num_kv_heads);
      c.Dims(shape.head_dim, 64).SeqLen(100).Seed(seed++);
      c.DTypes(query, DType::kBF16).Ranges({0, 7}, {100, 60});
      const Inputs inputs = MakeInputs(c);
      const reference::Result expected = Reference(c, inputs);
      const bool applies = query == DType::kBF16 &&
                           (shape.num_qo_heads / shape.num_kv_heads <= 8 ||
                            shape.head_dim % 2 == 0);
      const int64_t before = Bf16DotProductRuns();
      const Outputs with = [&] {
        const ScopedBf16DotProducts on(true);
        return RunLibrary(c, inputs);
      }();
      EXPECT_EQ(Bf16DotProductRuns() - before, applies ? 1 : 0)
          << c.Describe();
      const Outputs without = [&] {
        const ScopedBf16DotProducts off(false);
        return RunLibrary(c, inputs);
      }();
      EXPECT_EQ(Bf16DotProductRuns() - before, applies ? 1 : 0)
          << c.Describe();
      ExpectMatches(c, inputs, expected, with);
      ExpectMatches(c, inputs, expected, without);
    }
  }
}

// Left alone, a bf16 call uses the AVX512-BF16 kernels exactly where they
// are the faster ones (CpuPrefersBf16DotProducts), which needs the
// instructions.
TEST(Accuracy, Bf16DotProductsByDefaultOnlyWhereFaster) {
  EXPECT_TRUE(!CpuPrefersBf16DotProducts() || CpuHasBf16DotProducts());
  EXPECT_EQ(Bf16DotProductsAllowed(), CpuPrefersBf16DotProducts());
  Case c;
  c.Batch(1).Heads(32, 8).Dims(128, 128).SeqLen(64).Seed(281);
  c.DTypes(DType::kBF16, DType::kBF16);
  const Inputs inputs = MakeInputs(c);
  const bool dispatches_avx3 =
      std::string(active_simd_target()).rfind("AVX3", 0) == 0;
  const int64_t before = Bf16DotProductRuns();
  const Outputs outputs = RunLibrary(c, inputs);
  EXPECT_EQ(Bf16DotProductRuns() - before,
            dispatches_avx3 && CpuPrefersBf16DotProducts() ? 1 : 0);
  ExpectMatches(c, inputs, Reference(c, inputs), outputs);
}

TEST(Accuracy, HeadDims) {
  struct Dims {
    int64_t head_dim;
    int64_t head_dim_v;
  };
  // The common sizes with Dv == D, Dv != D both ways, and sizes that leave a
  // tail after whole vectors on every target.
  const Dims dims[] = {{1, 1},     {64, 64},   {80, 80},   {96, 96},
                       {128, 128}, {256, 256}, {192, 192}, {1, 3},
                       {64, 80},   {80, 1},    {96, 128},  {128, 64},
                       {256, 192}, {3, 17},    {17, 33},   {33, 5}};
  uint64_t seed = 300;
  for (const Dims& d : dims) {
    for (DType kv : kFloatTypes) {
      Case c;
      c.Batch(2).Heads(6, 2).Dims(d.head_dim, d.head_dim_v).SeqLen(75);
      c.DTypes(DType::kF32, kv).BlockSize(16).Seed(seed++);
      c.Ranges({0, 11}, {75, 60});
      ExpectMatchesOnAllTargets(c);
    }
  }
}

// Tiles of every size against a seq_len that is a multiple of none of them,
// with rows starting past the first tiles and ending mid-tile.
TEST(Accuracy, BlockSizes) {
  const int64_t block_sizes[] = {1,  2,   3,   7,   16,  31,
                                 64, 127, 128, 300, 301, 1000};
  uint64_t seed = 400;
  for (int64_t block : block_sizes) {
    Case c;
    c.Batch(5).Heads(4, 2).Dims(32, 24).SeqLen(301).BlockSize(block);
    c.DTypes(DType::kF32, DType::kBF16).Seed(seed++);
    c.Ranges({0, 130, 299, 5, 64}, {301, 290, 301, 5, 65});
    ExpectMatchesOnAllTargets(c);
  }
  Case by_default;  // the kernel's own block size
  by_default.Batch(5).Heads(4, 2).Dims(32, 24).SeqLen(301).Seed(seed);
  by_default.Ranges({0, 130, 299, 5, 200}, {301, 290, 301, 5, 201});
  ExpectMatchesOnAllTargets(by_default);
}

TEST(Accuracy, SlidingWindows) {
  const int64_t lefts[] = {-1, 0, 1, 5, 64};
  const int64_t rights[] = {-1, 0, 1, 5};
  uint64_t seed = 500;
  for (int64_t left : lefts) {
    for (int64_t right : rights) {
      Case c;
      c.Batch(4).Heads(4, 1).Dims(16, 16).SeqLen(200).Window(left, right);
      c.BlockSize(seed % 2 ? 16 : 7).Seed(seed);
      ++seed;
      // A window longer than the row, one inside it, and a row of one token.
      c.Ranges({0, 100, 50, 199}, {200, 130, 51, 200});
      ExpectMatchesOnAllTargets(c);
    }
  }
}

TEST(Accuracy, SoftCaps) {
  uint64_t seed = 600;
  for (double cap : {0.0, 0.5, 5.0, 30.0}) {
    for (DType kv : {DType::kF32, DType::kF16}) {
      Case c;
      c.Batch(3).Heads(6, 3).Dims(32, 32).SeqLen(90).SoftCap(cap);
      c.DTypes(DType::kF32, kv).BlockSize(13).Seed(seed++);
      // Logits with a spread of about 6, so a cap of 5 or below bites.
      c.query_stddev = 6.0;
      ExpectMatchesOnAllTargets(c);
    }
  }
  // Every option at once: window, cap, sinks.
  Case all;
  all.Batch(4).Heads(8, 2).Dims(64, 32).SeqLen(333).SoftCap(20.0);
  all.Window(40, 3).Sinks(SinkShape::kPerQoHead, 2).BlockSize(21).Seed(seed);
  all.query_stddev = 4.0;
  ExpectMatchesOnAllTargets(all);
}

TEST(Accuracy, SinkShapes) {
  const SinkShape shapes[] = {SinkShape::kPerQoHead, SinkShape::kPerKvHead,
                              SinkShape::kShared};
  uint64_t seed = 700;
  for (SinkShape shape : shapes) {
    for (int64_t num_sinks : {1, 3}) {
      for (DType aux : kFloatTypes) {
        Case c;
        // G = 4 so that [Hq, N] and [Hkv, N] read different rows.
        c.Batch(3).Heads(8, 2).Dims(32, 32).SeqLen(60).Seed(seed++);
        c.Sinks(shape, num_sinks, aux);
        // Sinks comparable with the attended logits, so they matter.
        c.sink_mean = 2.0;
        c.Ranges({0, 10, 30}, {60, 12, 30});
        ExpectMatchesOnAllTargets(c);
      }
    }
  }
}

TEST(Accuracy, NegativeInfinitySinks) {
  Case c;
  c.Batch(4).Heads(4, 2).Dims(16, 16).SeqLen(40).Seed(800);
  c.Sinks(SinkShape::kPerQoHead, 3);
  c.Ranges({0, 20, 7, 0}, {40, 20, 7, 0});
  Inputs in = MakeInputs(c);
  // Head 0: all sinks -inf; head 1: one -inf among finite ones.
  for (int64_t n = 0; n < 3; ++n) in.aux.Set({0, n}, -kInf);
  in.aux.Set({1, 1}, -kInf);
  ExpectMatchesOnAllTargets(c, in);

  const Outputs got = RunLibrary(c, in);
  // Row 1 is empty: head 0 has nothing at all, so lse = -inf, and head 1's
  // lse is the log-sum-exp of its two finite sinks.
  EXPECT_EQ(got.lse.Get({1, 0}), -kInf);
  const double a = in.aux.Get({1, 0});
  const double b = in.aux.Get({1, 2});
  EXPECT_NEAR(got.lse.Get({1, 1}), std::log(std::exp(a) + std::exp(b)),
              reference::kLseTolerance);

  // Every sink -inf everywhere: the same as no sinks at all.
  Case shared = c;
  shared.Sinks(SinkShape::kShared, 2);
  Inputs all_inf = MakeInputs(shared);
  all_inf.aux.Set({0}, -kInf);
  all_inf.aux.Set({1}, -kInf);
  ExpectMatchesOnAllTargets(shared, all_inf);
  const Outputs with = RunLibrary(shared, all_inf);
  EXPECT_EQ(with.lse.Get({1, 3}), -kInf);
  Case no_sinks = shared;
  no_sinks.sinks = SinkShape::kNone;
  Inputs without_aux = all_inf;
  without_aux.has_aux = false;
  const Outputs without = RunLibrary(no_sinks, without_aux);
  EXPECT_TRUE(with.output.SameBytes(without.output));
  EXPECT_TRUE(with.lse.SameBytes(without.lse));
}

// s == e anywhere in the cache, with and without sinks and windows. A window
// always contains the query's own position, so it empties a row only
// together with s == e.
TEST(Accuracy, EmptyRows) {
  uint64_t seed = 900;
  for (SinkShape sinks : {SinkShape::kNone, SinkShape::kPerKvHead}) {
    for (bool window : {false, true}) {
      Case c;
      c.Batch(5).Heads(4, 2).Dims(16, 8).SeqLen(50).Seed(seed++);
      c.Sinks(sinks, 2).Ranges({0, 25, 50, 0, 13}, {0, 25, 50, 50, 13});
      if (window) c.Window(3, 0);
      const Inputs in = MakeInputs(c);
      ExpectMatchesOnAllTargets(c, in);
      const Outputs got = RunLibrary(c, in);
      for (int64_t b : {0, 1, 2, 4}) {
        for (int64_t h = 0; h < 4; ++h) {
          if (sinks == SinkShape::kNone) {
            EXPECT_EQ(got.lse.Get({b, h}), -kInf);
          } else {
            const double a0 = in.aux.Get({h / 2, 0});
            const double a1 = in.aux.Get({h / 2, 1});
            EXPECT_NEAR(got.lse.Get({b, h}),
                        std::log(std::exp(a0) + std::exp(a1)),
                        reference::kLseTolerance);
          }
        }
      }
    }
  }
}

// Logits near +-1e4 overflow exp() in f32 without a running max. Integer
// inputs and scale 1 make every logit exact in f32, so the only error left
// is the softmax's own.
TEST(Accuracy, HugeLogits) {
  const int64_t dim = 64;
  uint64_t seed = 1000;
  for (DType dtype : kFloatTypes) {
    for (bool with_sinks : {false, true}) {
      Case c;
      c.Batch(3).Heads(4, 2).Dims(dim, dim).SeqLen(300).DTypes(dtype, dtype);
      c.options.softmax_scale = 1.0;
      c.Ranges({0, 17, 100}, {300, 250, 101}).BlockSize(64).Seed(seed++);
      if (with_sinks) c.Sinks(SinkShape::kPerQoHead, 2);
      // lse near 1e4 is stored in f32, whose spacing there is ~1e-3.
      c.lse_tolerance = reference::kLseTolerance + 1e4 * FLT_EPSILON;
      Inputs in = MakeInputs(c);
      std::mt19937_64 rng(c.seed);
      std::uniform_int_distribution<int> small(-2, 2);
      for (int64_t b = 0; b < c.batch; ++b) {
        for (int64_t h = 0; h < c.num_qo_heads; ++h) {
          // Heads 0 and 1 see logits near +9984, heads 2 and 3 near -9984.
          in.query.Set({b, h, 0}, h < 2 ? 9984.0 : -9984.0);
          for (int64_t d = 1; d < dim; ++d) in.query.Set({b, h, d}, small(rng));
        }
        for (int64_t j = 0; j < c.seq_len; ++j) {
          for (int64_t k = 0; k < c.num_kv_heads; ++k) {
            in.key.Set({b, j, k, 0}, 1.0);
            for (int64_t d = 1; d < dim; ++d)
              in.key.Set({b, j, k, d}, small(rng));
          }
        }
      }
      if (with_sinks) {
        // Sinks that compete with the huge logits.
        for (int64_t h = 0; h < c.num_qo_heads; ++h) {
          in.aux.Set({h, 0}, h < 2 ? 9984.0 + small(rng) : -9984.0);
          in.aux.Set({h, 1}, 3.0);
        }
      }
      ExpectMatchesOnAllTargets(c, in);
      const Outputs got = RunLibrary(c, in);
      EXPECT_GT(got.lse.Get({0, 0}), 9000.0);
      if (!with_sinks) {
        EXPECT_LT(got.lse.Get({0, 3}), -9000.0);
      }
    }
  }
}

// Rows of more than 100k tokens, through many chunks and tiles.
TEST(Accuracy, LongRows) {
  uint64_t seed = 1100;
  for (DType kv : kFloatTypes) {
    Case c;
    c.Batch(2).Heads(2, 1).Dims(16, 16).SeqLen(131075).Seed(seed++);
    c.DTypes(kv == DType::kF32 ? DType::kF32 : DType::kF16, kv);
    c.Ranges({0, 7}, {131075, 100003});
    if (kv == DType::kBF16) c.Sinks(SinkShape::kShared, 1).BlockSize(97);
    ExpectMatchesOnAllTargets(c);
  }
}

// Every tensor strided: each dimension padded, the padding holding NaN (in
// the outputs, a sentinel that must survive).
TEST(Accuracy, StridedEverything) {
  uint64_t seed = 1200;
  for (DType dtype : kFloatTypes) {
    Case c;
    c.Batch(5).Heads(6, 3).Dims(40, 24).SeqLen(150).DTypes(dtype, dtype);
    c.Sinks(SinkShape::kPerKvHead, 2, dtype).BlockSize(33).Seed(seed++);
    c.query_padding = {1, 2, 3};
    c.kv_padding = {1, 3, 2, 5};
    c.output_padding = {2, 1, 4};
    c.lse_padding = {1, 3};
    c.aux_padding = {2, 1};
    ExpectMatchesOnAllTargets(c);
  }
}

// The query read in place from a packed [B, Hq + 2 * Hkv, D] QKV projection:
// the K and V slots after the query heads are padding of dimension 1.
TEST(Accuracy, QueryFromPackedQkv) {
  Case c;
  c.Batch(3).Heads(8, 2).Dims(64, 64).SeqLen(100).Seed(1300);
  c.query_padding = {0, 2 * 2, 0};
  ExpectMatchesOnAllTargets(c);
}

// A KV cache whose capacity (256) exceeds the seq_len the call passes (100),
// with K and V heads interleaved per position (padding of dimension 2).
TEST(Accuracy, KvCacheWithLargerCapacity) {
  Case c;
  c.Batch(3).Heads(4, 2).Dims(32, 32).SeqLen(100).Seed(1400);
  c.DTypes(DType::kBF16, DType::kBF16);
  c.kv_padding = {0, 156, 2, 0};
  c.Ranges({0, 50, 99}, {100, 100, 100});
  ExpectMatchesOnAllTargets(c);
}

TEST(Accuracy, OddBatch) {
  Case c;
  c.Batch(17).Heads(12, 4).Dims(80, 80).SeqLen(97).Seed(1500);
  c.DTypes(DType::kBF16, DType::kBF16).Sinks(SinkShape::kPerQoHead, 1);
  ExpectMatchesOnAllTargets(c);
}

// Returns a case drawn from `seed`: random shapes, dtypes, ranges and
// options, with the reference restricted to a few rows when it would be slow.
Case RandomCase(uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto pick = [&rng](auto values) {
    return values[std::uniform_int_distribution<size_t>(
        0, values.size() - 1)(rng)];
  };
  using Ints = std::vector<int64_t>;
  Case c;
  c.seed = seed;
  c.batch = pick(Ints{1, 2, 3, 5, 17});
  c.num_kv_heads = pick(Ints{1, 2, 3, 4});
  c.num_qo_heads = c.num_kv_heads * pick(Ints{1, 1, 2, 3, 4, 7, 8});
  c.head_dim = pick(Ints{1, 3, 17, 64, 80, 96, 128, 256});
  c.head_dim_v = rng() % 2 ? c.head_dim : pick(Ints{1, 8, 33, 64, 128});
  c.seq_len = std::uniform_int_distribution<int64_t>(1, 600)(rng);
  c.query_dtype =
      pick(std::vector<DType>(std::begin(kFloatTypes), std::end(kFloatTypes)));
  c.kv_dtype =
      pick(std::vector<DType>(std::begin(kFloatTypes), std::end(kFloatTypes)));
  if (rng() % 2) c.BlockSize(pick(Ints{1, 5, 16, 37, 128, 700}));
  if (rng() % 3 == 0)
    c.Window(pick(Ints{-1, 0, 1, 9, 100}), pick(Ints{-1, 0, 2}));
  if (rng() % 3 == 0) c.SoftCap(pick(std::vector<double>{1.0, 10.0, 50.0}));
  if (rng() % 3 == 0)
    c.options.softmax_scale = pick(std::vector<double>{-0.3, 0.0, 0.05, 1.0});
  if (rng() % 2) {
    c.Sinks(
        pick(std::vector<SinkShape>{SinkShape::kPerQoHead,
                                    SinkShape::kPerKvHead, SinkShape::kShared}),
        pick(Ints{1, 2, 5}),
        pick(std::vector<DType>(std::begin(kFloatTypes),
                                std::end(kFloatTypes))));
  }
  if (rng() % 3 == 0) {
    c.query_padding = {pick(Ints{0, 1}), pick(Ints{0, 3}), pick(Ints{0, 5})};
    c.kv_padding = {pick(Ints{0, 2}), pick(Ints{0, 7}), pick(Ints{0, 1}),
                    pick(Ints{0, 3})};
    c.output_padding = {1, 2, 3};
    c.lse_padding = {1, 1};
  }
  c.Threads(static_cast<int>(pick(Ints{0, 1, 2, 3})));
  // About 2M multiply-adds of reference work per case at most.
  const int64_t per_row =
      c.num_qo_heads * c.seq_len * (c.head_dim + c.head_dim_v);
  const int64_t affordable = std::max<int64_t>(1, 2000000 / per_row);
  for (int64_t b = 0; affordable < c.batch && b < c.batch;
       b += (c.batch + affordable - 1) / affordable) {
    c.rows.push_back(b);
  }
  return c;
}

TEST(Accuracy, RandomSweep) {
  for (uint64_t seed = 1; seed <= 100; ++seed) {
    const Case c = RandomCase(seed);
    SCOPED_TRACE(c.Describe());
    ExpectMatchesOnAllTargets(c);
  }
}

// The output rows' vector rounding to bf16 and f16 against the scalar
// rounding, on every target: random bit patterns (so every exponent, NaN,
// inf and subnormal), then the boundaries that rounding gets wrong first.
TEST(Accuracy, OutputRoundingMatchesScalarOnEveryTarget) {
  // Three values before the row, so that it starts at an odd offset.
  std::vector<float> values(3, 1.0f);
  for (const uint32_t bits :
       {0x00000000u, 0x80000000u, 0x00000001u, 0x007FFFFFu, 0x3F808000u,
        0x3F818000u, 0x3F80FFFFu, 0x7F7FFFFFu, 0x7F800000u, 0xFF800000u,
        0x7FC00000u, 0x7F800001u, 0xFFFFFFFFu, 0x477FEFFFu, 0x477FF000u,
        0x38800000u, 0x387FFFFFu, 0x33800000u, 0x33000000u, 0x33000001u,
        0x3F801000u, 0x3F803000u, 0x3F802FFFu}) {
    values.push_back(F32FromBits(bits));
  }
  std::mt19937 rng(7);
  for (int i = 0; i < 20000; ++i) values.push_back(F32FromBits(rng()));
  // 20023 values: every vector width also leaves a scalar tail.
  const int64_t n = static_cast<int64_t>(values.size()) - 3;
  test::ForEachTarget([&] {
    for (const DType dtype : {DType::kBF16, DType::kF16}) {
      std::vector<uint16_t> out(values.size() + 5, 0xABCDu);
      StoreOutputRow(values.data() + 3, n, out.data(), dtype, 5);
      for (int64_t i = 0; i < n; ++i) {
        const float x = values[i + 3];
        const uint16_t got = out[i + 5];
        // F16C keeps more of a NaN's payload than the scalar rounding.
        if (dtype == DType::kF16 && std::isnan(x)) {
          ASSERT_TRUE(std::isnan(F32FromF16Bits(got))) << i;
          continue;
        }
        const uint16_t want = dtype == DType::kBF16 ? BF16BitsFromF32(x)
                                                    : F16BitsFromF32(x);
        ASSERT_EQ(got, want) << DTypeName(dtype) << " of bits 0x" << std::hex
                             << BitsFromF32(x);
      }
      // Nothing written outside the row.
      for (int i = 0; i < 5; ++i) ASSERT_EQ(out[i], 0xABCDu);
      ASSERT_EQ(out[n + 5], 0xABCDu);
    }
  });
}

}  // namespace
}  // namespace test
}  // namespace raggedattn
