#include "tests/test_util.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>
#include <utility>

#include "gtest/gtest.h"
#include "hwy/targets.h"
#include "src/decode_kernel.h"
#include "src/dtype.h"

namespace raggedattn {
namespace test {

Tensor::Tensor(DType dtype, std::vector<int64_t> shape,
               std::vector<int64_t> padding)
    : shape_(std::move(shape)) {
  const int rank = static_cast<int>(shape_.size());
  padding.resize(shape_.size(), 0);
  physical_shape_.resize(shape_.size());
  int64_t count = 1;
  for (int i = 0; i < rank; ++i) {
    physical_shape_[i] = shape_[i] + padding[i];
    count *= physical_shape_[i];
  }
  const int64_t bytes = count * static_cast<int64_t>(DTypeSize(dtype));
  // At least one word, so that even an empty tensor has non-null data.
  storage_.resize(static_cast<size_t>(std::max<int64_t>(1, (bytes + 3) / 4)));

  view_.data = storage_.data();
  view_.dtype = dtype;
  view_.rank = rank;
  int64_t stride = 1;
  for (int i = rank - 1; i >= 0; --i) {
    view_.shape[i] = shape_[i];
    view_.strides[i] = stride;
    stride *= physical_shape_[i];
  }
  FillAll(std::numeric_limits<double>::quiet_NaN());
}

Tensor& Tensor::operator=(const Tensor& other) {
  shape_ = other.shape_;
  physical_shape_ = other.physical_shape_;
  storage_ = other.storage_;
  view_ = other.view_;
  view_.data = storage_.data();
  return *this;
}

Tensor& Tensor::operator=(Tensor&& other) noexcept {
  shape_ = std::move(other.shape_);
  physical_shape_ = std::move(other.physical_shape_);
  storage_ = std::move(other.storage_);
  view_ = other.view_;
  view_.data = storage_.data();
  return *this;
}

int64_t Tensor::Offset(const std::vector<int64_t>& index) const {
  int64_t offset = 0;
  for (size_t i = 0; i < index.size(); ++i)
    offset += index[i] * view_.strides[i];
  return offset;
}

double Tensor::Get(const std::vector<int64_t>& index) const {
  const int64_t offset = Offset(index);
  if (view_.dtype == DType::kI32) {
    return static_cast<const int32_t*>(view_.data)[offset];
  }
  return LoadAsF32(view_.data, view_.dtype, offset);
}

void Tensor::Set(const std::vector<int64_t>& index, double value) {
  const int64_t offset = Offset(index);
  if (view_.dtype == DType::kI32) {
    static_cast<int32_t*>(view_.data)[offset] = static_cast<int32_t>(value);
  } else {
    StoreFromF32(view_.data, view_.dtype, offset, static_cast<float>(value));
  }
}

void Tensor::FillNormal(std::mt19937_64& rng, double mean, double stddev) {
  std::normal_distribution<double> normal(mean, stddev);
  ForEachIndex(shape_, [&](const std::vector<int64_t>& index) {
    Set(index, normal(rng));
  });
}

void Tensor::FillAll(double value) {
  ForEachIndex(physical_shape_,
               [&](const std::vector<int64_t>& index) { Set(index, value); });
}

bool Tensor::SameBytes(const Tensor& other) const {
  return storage_ == other.storage_;
}

int64_t Tensor::ChangedPadding(const Tensor& before) const {
  const size_t size = DTypeSize(view_.dtype);
  const auto* bytes = static_cast<const unsigned char*>(view_.data);
  const auto* old_bytes = static_cast<const unsigned char*>(before.view_.data);
  int64_t changed = 0;
  ForEachIndex(physical_shape_, [&](const std::vector<int64_t>& index) {
    bool padding = false;
    for (size_t i = 0; i < index.size(); ++i) {
      padding = padding || index[i] >= shape_[i];
    }
    const int64_t at = Offset(index) * static_cast<int64_t>(size);
    if (padding && std::memcmp(bytes + at, old_bytes + at, size) != 0) {
      ++changed;
    }
  });
  return changed;
}

bool Tensor::SameLogicalBytes(const Tensor& other) const {
  if (shape_ != other.shape_ || view_.dtype != other.view_.dtype) return false;
  const size_t size = DTypeSize(view_.dtype);
  const auto* a = static_cast<const unsigned char*>(view_.data);
  const auto* b = static_cast<const unsigned char*>(other.view_.data);
  bool same = true;
  ForEachIndex(shape_, [&](const std::vector<int64_t>& index) {
    same = same && std::memcmp(a + Offset(index) * size,
                               b + other.Offset(index) * size, size) == 0;
  });
  return same;
}

void ForEachIndex(
    const std::vector<int64_t>& shape,
    const std::function<void(const std::vector<int64_t>&)>& body) {
  for (int64_t extent : shape) {
    if (extent <= 0) return;
  }
  std::vector<int64_t> index(shape.size(), 0);
  while (true) {
    body(index);
    int i = static_cast<int>(shape.size()) - 1;
    for (; i >= 0; --i) {
      if (++index[i] < shape[i]) break;
      index[i] = 0;
    }
    if (i < 0) return;
  }
}

std::string Case::Describe() const {
  std::ostringstream out;
  out << "B=" << batch << " Hq=" << num_qo_heads << " Hkv=" << num_kv_heads
      << " D=" << head_dim << " Dv=" << head_dim_v << " S=" << seq_len
      << " query=" << DTypeName(query_dtype) << " kv=" << DTypeName(kv_dtype);
  if (sinks != SinkShape::kNone) {
    const char* shapes[] = {"", "[Hq,N]", "[Hkv,N]", "[N]"};
    out << " sinks=" << shapes[static_cast<int>(sinks)] << " N=" << num_sinks
        << " " << DTypeName(aux_dtype);
  }
  if (options.softmax_scale) out << " scale=" << *options.softmax_scale;
  if (options.block_size) out << " block=" << *options.block_size;
  if (options.sliding_window) {
    out << " window=(" << options.sliding_window->left << ","
        << options.sliding_window->right << ")";
  }
  if (options.logits_soft_cap) out << " cap=" << *options.logits_soft_cap;
  out << " threads=" << options.num_threads << " seed=" << seed;
  return out.str();
}

Inputs MakeInputs(const Case& c) {
  std::mt19937_64 rng(c.seed);
  Inputs in;
  in.query = Tensor(c.query_dtype, {c.batch, c.num_qo_heads, c.head_dim},
                    c.query_padding);
  in.key = Tensor(c.kv_dtype, {c.batch, c.seq_len, c.num_kv_heads, c.head_dim},
                  c.kv_padding);
  in.value =
      Tensor(c.kv_dtype, {c.batch, c.seq_len, c.num_kv_heads, c.head_dim_v},
             c.kv_padding);
  in.query.FillNormal(rng, 0.0, c.query_stddev);
  in.key.FillNormal(rng, 0.0, c.key_stddev);
  in.value.FillNormal(rng, 0.0, c.value_stddev);

  in.sequence_start = Tensor(DType::kI32, {c.batch});
  in.sequence_end = Tensor(DType::kI32, {c.batch});
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  for (int64_t b = 0; b < c.batch; ++b) {
    int64_t start;
    int64_t end;
    if (!c.starts.empty()) {
      start = c.starts[b];
      end = c.ends[b];
    } else {
      // A mix of full rows, empty rows and rows starting past the first
      // tiles, the shapes a serving batch holds.
      const double kind = uniform(rng);
      std::uniform_int_distribution<int64_t> position(0, c.seq_len);
      if (kind < 0.1 || c.seq_len == 0) {
        start = end = position(rng);
      } else {
        end = kind < 0.3
                  ? c.seq_len
                  : std::uniform_int_distribution<int64_t>(1, c.seq_len)(rng);
        start = kind < 0.6
                    ? 0
                    : std::uniform_int_distribution<int64_t>(0, end - 1)(rng);
      }
    }
    in.sequence_start.Set({b}, static_cast<double>(start));
    in.sequence_end.Set({b}, static_cast<double>(end));
  }

  in.has_aux = c.sinks != SinkShape::kNone;
  switch (c.sinks) {
    case SinkShape::kPerQoHead:
      in.aux =
          Tensor(c.aux_dtype, {c.num_qo_heads, c.num_sinks}, c.aux_padding);
      break;
    case SinkShape::kPerKvHead:
      in.aux =
          Tensor(c.aux_dtype, {c.num_kv_heads, c.num_sinks}, c.aux_padding);
      break;
    case SinkShape::kShared:
      in.aux = Tensor(c.aux_dtype, {c.num_sinks}, c.aux_padding);
      break;
    case SinkShape::kNone:
      break;
  }
  if (in.has_aux) in.aux.FillNormal(rng, c.sink_mean, c.sink_stddev);
  return in;
}

Outputs MakeOutputs(const Case& c) {
  Outputs out;
  out.output = Tensor(c.query_dtype, {c.batch, c.num_qo_heads, c.head_dim_v},
                      c.output_padding);
  out.lse = Tensor(DType::kF32, {c.batch, c.num_qo_heads}, c.lse_padding);
  out.output.FillAll(kSentinel);
  out.lse.FillAll(kSentinel);
  return out;
}

Outputs RunLibrary(const Case& c, const Inputs& inputs,
                   const Options& options) {
  Outputs out = MakeOutputs(c);
  ragged_decode_attention(inputs.query.view(), inputs.key.view(),
                          inputs.value.view(), inputs.sequence_start.view(),
                          inputs.sequence_end.view(), out.output.view(),
                          options, inputs.aux_view(), &out.lse.view());
  return out;
}

reference::Result Reference(const Case& c, const Inputs& inputs) {
  return reference::Compute(inputs.query.view(), inputs.key.view(),
                            inputs.value.view(), inputs.sequence_start.view(),
                            inputs.sequence_end.view(), c.options,
                            inputs.aux_view(), c.rows);
}

void AttendedRange(const Case& c, const Inputs& inputs, int64_t b,
                   int64_t* begin, int64_t* end) {
  int64_t lo = static_cast<int64_t>(inputs.sequence_start.Get({b}));
  int64_t hi = static_cast<int64_t>(inputs.sequence_end.Get({b}));
  const int64_t position = hi - 1;
  if (c.options.sliding_window) {
    const SlidingWindow& w = *c.options.sliding_window;
    if (w.left >= 0) lo = std::max(lo, position - w.left);
    // j <= position + right as a difference: the sum may overflow int64.
    if (w.right >= 0 && w.right < hi - position) hi = position + w.right + 1;
  }
  if (hi <= lo) hi = lo;
  *begin = lo;
  *end = hi;
}

namespace {

std::vector<int64_t> RowsOf(const Case& c) {
  if (!c.rows.empty()) return c.rows;
  std::vector<int64_t> rows(static_cast<size_t>(c.batch));
  for (int64_t b = 0; b < c.batch; ++b) rows[b] = b;
  return rows;
}

}  // namespace

void ExpectMatches(const Case& c, const Inputs& inputs,
                   const reference::Result& expected, const Outputs& got) {
  const reference::Error error =
      reference::Compare(expected, got.output.view(), &got.lse.view(), c.rows);
  const double tolerance = reference::OutputTolerance(c.query_dtype);
  const bool output_ok = error.output <= tolerance;
  const bool lse_ok = error.lse <= c.lse_tolerance;
  EXPECT_TRUE(output_ok && lse_ok)
      << "output error " << error.output << " (bound " << tolerance
      << "), lse error " << error.lse << " (bound " << c.lse_tolerance
      << ") for " << c.Describe();
  if (!output_ok || !lse_ok) {
    // Name the first failing row to make the failure actionable.
    for (int64_t b : RowsOf(c)) {
      const reference::Error row =
          reference::Compare(expected, got.output.view(), &got.lse.view(), {b});
      if (!(row.output <= tolerance) || !(row.lse <= c.lse_tolerance)) {
        int64_t begin, end;
        AttendedRange(c, inputs, b, &begin, &end);
        ADD_FAILURE() << "first failing row " << b << ": attended [" << begin
                      << ", " << end << "), output error " << row.output
                      << ", lse error " << row.lse;
        break;
      }
    }
  }

  for (int64_t b : RowsOf(c)) {
    int64_t begin, end;
    AttendedRange(c, inputs, b, &begin, &end);
    if (begin != end) continue;
    bool all_zero = true;
    ForEachIndex(
        {c.num_qo_heads, c.head_dim_v}, [&](const std::vector<int64_t>& index) {
          all_zero = all_zero && got.output.Get({b, index[0], index[1]}) == 0.0;
        });
    EXPECT_TRUE(all_zero) << "empty row " << b << " must output exactly 0; "
                          << c.Describe();
  }

  const Outputs blank = MakeOutputs(c);
  EXPECT_EQ(got.output.ChangedPadding(blank.output), 0)
      << "output padding overwritten; " << c.Describe();
  EXPECT_EQ(got.lse.ChangedPadding(blank.lse), 0)
      << "lse padding overwritten; " << c.Describe();
}

void ExpectMatchesOnAllTargets(const Case& c, const Inputs& inputs) {
  const reference::Result expected = Reference(c, inputs);
  ForEachTarget(
      [&] { ExpectMatches(c, inputs, expected, RunLibrary(c, inputs)); });
}

std::vector<int64_t> AllTargets() {
  hwy::SetSupportedTargetsForTest(0);
  return hwy::SupportedAndGeneratedTargets();
}

namespace {

// Restores the CPU's own target choice even when a body returns early.
class ForcedTarget {
 public:
  explicit ForcedTarget(int64_t target) {
    hwy::SetSupportedTargetsForTest(target);
  }
  ~ForcedTarget() { hwy::SetSupportedTargetsForTest(0); }
  ForcedTarget(const ForcedTarget&) = delete;
  ForcedTarget& operator=(const ForcedTarget&) = delete;
};

}  // namespace

void ForEachTarget(const std::function<void()>& body) {
  const std::vector<int64_t> targets = AllTargets();
  ASSERT_FALSE(targets.empty());
  for (int64_t target : targets) {
    const ForcedTarget forced(target);
    const char* name = hwy::TargetName(target);
    SCOPED_TRACE(std::string("SIMD target ") + name);
    // Without this the loop could run one target five times unnoticed.
    ASSERT_STREQ(active_simd_target(), name);
    // AVX-512 targets on a CPU with AVX512-BF16 have a second kernel for
    // bf16 x bf16 dot products, used by default only where it is faster:
    // both run, whatever the default.
    if (target <= HWY_AVX3 && CpuHasBf16DotProducts()) {
      {
        SCOPED_TRACE("with AVX512-BF16 dot products");
        const ScopedBf16DotProducts on(true);
        body();
      }
      SCOPED_TRACE("without AVX512-BF16 dot products");
      const ScopedBf16DotProducts off(false);
      body();
    } else {
      body();
    }
  }
}

}  // namespace test
}  // namespace raggedattn
