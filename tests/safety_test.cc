// docs/semantics.md: key and value rows that are not attended are never read
// (NaN there changes nothing, PROT_NONE pages there do not fault), NaN or inf
// inside attended data stays in its own heads, and offsets are 64-bit. Every
// check runs on every SIMD target.

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "raggedattn/raggedattn.h"
#include "src/dtype.h"
#include "src/reference/reference.h"
#include "tests/test_util.h"

namespace raggedattn {
namespace test {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// Sets every key and value element of row b's positions outside its attended
// range to `fill`.
void FillUnattended(const Case& c, Inputs* in, double fill) {
  for (int64_t b = 0; b < c.batch; ++b) {
    int64_t begin, end;
    AttendedRange(c, *in, b, &begin, &end);
    for (int64_t j = 0; j < c.seq_len; ++j) {
      if (j >= begin && j < end) continue;
      for (int64_t k = 0; k < c.num_kv_heads; ++k) {
        for (int64_t d = 0; d < c.head_dim; ++d)
          in->key.Set({b, j, k, d}, fill);
        for (int64_t d = 0; d < c.head_dim_v; ++d) {
          in->value.Set({b, j, k, d}, fill);
        }
      }
    }
  }
}

// Returns true when no output element is NaN or inf and no lse is NaN.
bool AllFinite(const Case& c, const Outputs& out) {
  bool finite = true;
  ForEachIndex({c.batch, c.num_qo_heads, c.head_dim_v},
               [&](const std::vector<int64_t>& i) {
                 finite = finite && std::isfinite(out.output.Get(i));
               });
  ForEachIndex({c.batch, c.num_qo_heads}, [&](const std::vector<int64_t>& i) {
    finite = finite && !std::isnan(out.lse.Get(i));
  });
  return finite;
}

TEST(Safety, UnattendedRowsAreNeverRead) {
  std::vector<Case> cases;
  cases.push_back(Case()
                      .Batch(4)
                      .Heads(8, 2)
                      .Dims(64, 64)
                      .SeqLen(200)
                      .BlockSize(16)
                      .Ranges({0, 33, 150, 7}, {200, 100, 151, 7})
                      .Seed(1));
  cases.push_back(Case()
                      .Batch(3)
                      .Heads(7, 1)
                      .Dims(20, 12)
                      .SeqLen(300)
                      .DTypes(DType::kBF16, DType::kBF16)
                      .BlockSize(7)
                      .Window(20, 0)
                      .Ranges({0, 50, 290}, {300, 299, 300})
                      .Seed(2));
  cases.push_back(Case()
                      .Batch(3)
                      .Heads(3, 3)
                      .Dims(17, 9)
                      .SeqLen(90)
                      .DTypes(DType::kF16, DType::kF16)
                      .BlockSize(1)
                      .Sinks(SinkShape::kPerQoHead, 2)
                      .Window(5, 1)
                      .Ranges({3, 40, 89}, {80, 41, 90})
                      .Seed(3));
  // Rows longer than a chunk, starting and ending mid-chunk.
  cases.push_back(Case()
                      .Batch(2)
                      .Heads(4, 2)
                      .Dims(32, 32)
                      .SeqLen(1600)
                      .DTypes(DType::kF32, DType::kBF16)
                      .Ranges({513, 1}, {1590, 1100})
                      .Seed(4));
  for (const Case& c : cases) {
    Inputs with_nan = MakeInputs(c);
    Inputs with_zero = with_nan;
    FillUnattended(c, &with_nan, kNaN);
    FillUnattended(c, &with_zero, 0.0);
    const reference::Result expected = Reference(c, with_zero);
    ForEachTarget([&] {
      const Outputs nan_run = RunLibrary(c, with_nan);
      const Outputs zero_run = RunLibrary(c, with_zero);
      EXPECT_TRUE(AllFinite(c, nan_run)) << c.Describe();
      EXPECT_TRUE(nan_run.output.SameBytes(zero_run.output)) << c.Describe();
      EXPECT_TRUE(nan_run.lse.SameBytes(zero_run.lse)) << c.Describe();
      ExpectMatches(c, with_zero, expected, zero_run);
    });
  }
}

// An anonymous mapping, unmapped on destruction.
class Mapping {
 public:
  explicit Mapping(size_t bytes, int flags = 0) : bytes_(bytes) {
    void* base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
    base_ = base == MAP_FAILED ? nullptr : static_cast<char*>(base);
  }
  ~Mapping() {
    if (base_ != nullptr) munmap(base_, bytes_);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;

  char* base() const { return base_; }

 private:
  char* base_ = nullptr;
  size_t bytes_ = 0;
};

// Fills positions [begin, end) of batch row b of a [B, S, H, D] view with
// N(0, 1) values rounded to its dtype.
void FillPositions(const TensorView& view, int64_t b, int64_t begin,
                   int64_t end, std::mt19937_64& rng) {
  std::normal_distribution<float> normal;
  for (int64_t j = begin; j < end; ++j) {
    for (int64_t h = 0; h < view.shape[2]; ++h) {
      for (int64_t d = 0; d < view.shape[3]; ++d) {
        StoreFromF32(
            view.data, view.dtype,
            b * view.strides[0] + j * view.strides[1] + h * view.strides[2] + d,
            normal(rng));
      }
    }
  }
}

struct GuardedLayout {
  DType dtype;
  int64_t num_qo_heads;
  int64_t num_kv_heads;
  int64_t head_dim;
  int64_t head_dim_v;
  bool window;         // cut the sequence range to the page-aligned rows
  int64_t block_size;  // 0: default
};

// A contiguous [1, S, Hkv, dim] tensor whose rows [begin, begin + count)
// fill whole pages, with every other row on PROT_NONE pages.
class GuardedTensor {
 public:
  GuardedTensor(DType dtype, int64_t seq_len, int64_t heads, int64_t dim,
                int64_t begin, int64_t count)
      : page_(static_cast<int64_t>(sysconf(_SC_PAGESIZE))) {
    const int64_t row_bytes =
        heads * dim * static_cast<int64_t>(DTypeSize(dtype));
    const int64_t before = RoundUp(begin * row_bytes) + page_;
    const int64_t body = count * row_bytes;
    const int64_t after =
        RoundUp((seq_len - begin - count) * row_bytes) + page_;
    EXPECT_EQ(body % page_, 0);
    mapping_ = std::make_unique<Mapping>(before + body + after);
    char* base = mapping_->base();
    EXPECT_NE(base, nullptr);
    EXPECT_EQ(mprotect(base, before, PROT_NONE), 0);
    EXPECT_EQ(mprotect(base + before + body, after, PROT_NONE), 0);
    view_ = TensorView::Contiguous(base + before - begin * row_bytes, dtype,
                                   {1, seq_len, heads, dim});
  }

  const TensorView& view() const { return view_; }

 private:
  int64_t RoundUp(int64_t bytes) const {
    return (bytes + page_ - 1) / page_ * page_;
  }

  int64_t page_;
  std::unique_ptr<Mapping> mapping_;
  TensorView view_;
};

// The attended rows exactly fill whole pages; the pages right before and
// after them (the rest of the sequence, and the part of the row a window
// cuts off) are PROT_NONE, so any read outside the range faults.
TEST(Safety, ProtNoneAroundAttendedRange) {
  const int64_t page = sysconf(_SC_PAGESIZE);
  const GuardedLayout layouts[] = {
      {DType::kF32, 8, 2, 64, 64, false, 0},
      {DType::kBF16, 7, 1, 20, 12, false, 7},
      {DType::kF16, 3, 3, 3, 5, false, 1},
      {DType::kF32, 2, 1, 20, 9, true, 0},
      {DType::kBF16, 4, 2, 128, 128, true, 16},
  };
  uint64_t seed = 10;
  for (const GuardedLayout& l : layouts) {
    const int64_t size = static_cast<int64_t>(DTypeSize(l.dtype));
    // The fewest rows that fill whole pages for both key and value.
    const int64_t key_rows =
        page / std::gcd(page, l.num_kv_heads * l.head_dim * size);
    const int64_t value_rows =
        page / std::gcd(page, l.num_kv_heads * l.head_dim_v * size);
    const int64_t lcm = std::lcm(key_rows, value_rows);
    const int64_t count = lcm * std::max<int64_t>(1, 100 / lcm);
    // With a window, it keeps the last `count` rows of a longer range whose
    // first 500 rows sit on PROT_NONE pages.
    const int64_t begin = 1000;
    const int64_t start = l.window ? begin - 500 : begin;
    const int64_t end = begin + count;
    const int64_t seq_len = end + 777;

    GuardedTensor key(l.dtype, seq_len, l.num_kv_heads, l.head_dim, begin,
                      count);
    GuardedTensor value(l.dtype, seq_len, l.num_kv_heads, l.head_dim_v, begin,
                        count);
    std::mt19937_64 rng(seed++);
    FillPositions(key.view(), 0, begin, end, rng);
    FillPositions(value.view(), 0, begin, end, rng);

    Case c;
    c.Heads(l.num_qo_heads, l.num_kv_heads).Dims(l.head_dim, l.head_dim_v);
    c.SeqLen(seq_len).DTypes(l.dtype, l.dtype).Seed(seed);
    if (l.window) c.Window(count - 1, 0);
    if (l.block_size > 0) c.BlockSize(l.block_size);
    Tensor query(l.dtype, {1, l.num_qo_heads, l.head_dim});
    query.FillNormal(rng, 0.0, 1.0);
    Tensor starts(DType::kI32, {1});
    Tensor ends(DType::kI32, {1});
    starts.Set({0}, static_cast<double>(start));
    ends.Set({0}, static_cast<double>(end));

    const reference::Result expected =
        reference::Compute(query.view(), key.view(), value.view(),
                           starts.view(), ends.view(), c.options);
    ForEachTarget([&] {
      Outputs out = MakeOutputs(c);
      ragged_decode_attention(query.view(), key.view(), value.view(),
                              starts.view(), ends.view(), out.output.view(),
                              c.options, nullptr, &out.lse.view());
      const reference::Error error =
          reference::Compare(expected, out.output.view(), &out.lse.view());
      EXPECT_LE(error.output, reference::OutputTolerance(l.dtype))
          << c.Describe();
      EXPECT_LE(error.lse, reference::kLseTolerance) << c.Describe();
    });
  }
}

// NaN and inf inside attended query, key and value: no crash, the heads that
// read them may be NaN, every other head stays within the bound.
TEST(Safety, NonFiniteDataStaysInItsHeads) {
  const DType dtypes[] = {DType::kF32, DType::kBF16, DType::kF16};
  uint64_t seed = 20;
  for (DType dtype : dtypes) {
    Case c;
    c.Batch(4).Heads(8, 4).Dims(32, 32).SeqLen(50).DTypes(dtype, dtype);
    c.BlockSize(16).Sinks(SinkShape::kShared, 1).Seed(seed++);
    c.Ranges({0, 0, 0, 0}, {50, 50, 50, 50});
    Inputs in = MakeInputs(c);
    // (row, query head) pairs that read a poisoned element.
    std::vector<std::pair<int64_t, int64_t>> poisoned;
    in.query.Set({0, 1, 3}, kNaN);
    poisoned.push_back({0, 1});
    in.key.Set({1, 10, 2, 0}, kInf);
    poisoned.insert(poisoned.end(), {{1, 4}, {1, 5}});
    in.value.Set({2, 20, 0, 5}, -kInf);
    poisoned.insert(poisoned.end(), {{2, 0}, {2, 1}});
    in.key.Set({2, 30, 3, 1}, kNaN);
    poisoned.insert(poisoned.end(), {{2, 6}, {2, 7}});
    in.query.Set({3, 0, 0}, kInf);
    in.query.Set({3, 0, 1}, -kInf);
    poisoned.push_back({3, 0});

    const reference::Result expected = Reference(c, in);
    ForEachTarget([&] {
      const Outputs got = RunLibrary(c, in);
      int64_t checked = 0;
      for (int64_t b = 0; b < c.batch; ++b) {
        for (int64_t h = 0; h < c.num_qo_heads; ++h) {
          bool skip = false;
          for (const auto& p : poisoned)
            skip = skip || p == std::make_pair(b, h);
          if (skip) continue;
          // Scale by this KV head's own values: row 2 holds an inf elsewhere.
          const int64_t k = h / 2;
          double scale = 0.0;
          for (int64_t j = 0; j < c.seq_len; ++j) {
            for (int64_t d = 0; d < c.head_dim_v; ++d) {
              scale = std::max(scale, std::abs(in.value.Get({b, j, k, d})));
            }
          }
          for (int64_t d = 0; d < c.head_dim_v; ++d) {
            const double want =
                expected.output[(b * c.num_qo_heads + h) * c.head_dim_v + d];
            EXPECT_LE(std::abs(got.output.Get({b, h, d}) - want) / scale,
                      reference::OutputTolerance(dtype))
                << "row " << b << " head " << h << "; " << c.Describe();
          }
          EXPECT_NEAR(got.lse.Get({b, h}), expected.lse[b * c.num_qo_heads + h],
                      reference::kLseTolerance)
              << "row " << b << " head " << h;
          ++checked;
        }
      }
      EXPECT_EQ(checked, c.batch * c.num_qo_heads - 8);
    });
  }
}

// Runs one call on hand-made key and value views against the reference.
void ExpectRawViewsMatch(const TensorView& key, const TensorView& value,
                         const std::vector<int32_t>& starts,
                         const std::vector<int32_t>& ends, int64_t num_qo_heads,
                         uint64_t seed) {
  const int64_t batch = key.shape[0];
  std::mt19937_64 rng(seed);
  Tensor query(DType::kF32, {batch, num_qo_heads, key.shape[3]});
  query.FillNormal(rng, 0.0, 1.0);
  Tensor start_view(DType::kI32, {batch});
  Tensor end_view(DType::kI32, {batch});
  for (int64_t b = 0; b < batch; ++b) {
    start_view.Set({b}, starts[b]);
    end_view.Set({b}, ends[b]);
    FillPositions(key, b, starts[b], ends[b], rng);
    FillPositions(value, b, starts[b], ends[b], rng);
  }
  Case c;
  c.Batch(batch).Heads(num_qo_heads, key.shape[2]);
  c.Dims(key.shape[3], value.shape[3]).SeqLen(key.shape[1]);
  const reference::Result expected = reference::Compute(
      query.view(), key, value, start_view.view(), end_view.view(), c.options);
  ForEachTarget([&] {
    Outputs out = MakeOutputs(c);
    ragged_decode_attention(query.view(), key, value, start_view.view(),
                            end_view.view(), out.output.view(), c.options,
                            nullptr, &out.lse.view());
    const reference::Error error =
        reference::Compare(expected, out.output.view(), &out.lse.view());
    EXPECT_LE(error.output, reference::OutputTolerance(DType::kF32));
    EXPECT_LE(error.lse, reference::kLseTolerance);
  });
}

// A batch stride past 2^32 elements (8 GiB of bf16): row 1 lives beyond
// every 32-bit offset. Only the attended pages are ever touched.
TEST(Safety, SixtyFourBitBatchStride) {
  const int64_t stride_b = (int64_t{1} << 32) + 4096;
  const int64_t seq_len = 64, heads = 2, dim = 64;
  const size_t bytes = (stride_b + seq_len * heads * dim) * 2;
  Mapping keys(bytes, MAP_NORESERVE);
  Mapping values(bytes, MAP_NORESERVE);
  ASSERT_NE(keys.base(), nullptr);
  ASSERT_NE(values.base(), nullptr);
  const TensorView key =
      TensorView::Strided(keys.base(), DType::kBF16, {2, seq_len, heads, dim},
                          {stride_b, heads * dim, dim, 1});
  const TensorView value =
      TensorView::Strided(values.base(), DType::kBF16, {2, seq_len, heads, dim},
                          {stride_b, heads * dim, dim, 1});
  ExpectRawViewsMatch(key, value, {0, 5}, {64, 60}, 8, 30);
}

// Positions whose offset exceeds 2^32 elements: a cache with a large
// per-position stride, attended far into the sequence.
TEST(Safety, SixtyFourBitPositionOffsets) {
  const int64_t stride_n = 1024, dim = 64;
  const int64_t begin = 4300000, end = begin + 300;
  ASSERT_GT(begin * stride_n, int64_t{1} << 32);
  const size_t bytes = end * stride_n * 2;
  Mapping keys(bytes, MAP_NORESERVE);
  Mapping values(bytes, MAP_NORESERVE);
  ASSERT_NE(keys.base(), nullptr);
  ASSERT_NE(values.base(), nullptr);
  const TensorView key = TensorView::Strided(
      keys.base(), DType::kBF16, {1, end, 1, dim}, {0, stride_n, dim, 1});
  const TensorView value = TensorView::Strided(
      values.base(), DType::kBF16, {1, end, 1, dim}, {0, stride_n, dim, 1});
  ExpectRawViewsMatch(key, value, {static_cast<int32_t>(begin)},
                      {static_cast<int32_t>(end)}, 4, 31);
}

}  // namespace
}  // namespace test
}  // namespace raggedattn
