#include "tools/workload.h"

#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>

#include "src/dtype.h"

namespace raggedattn {
namespace bench {
namespace {

// Returns the next value of a splitmix64 stream: cheap, and good enough to
// make attention logits look like a model's.
inline uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Returns an approximately standard normal value from 64 random bits: the
// sum of four 16-bit uniforms (Irwin-Hall), centred and scaled to unit
// variance. Its tails end at 3.46 sigma, which attention does not mind.
inline float NormalFromBits(uint64_t bits) {
  const uint64_t sum = (bits & 0xFFFF) + ((bits >> 16) & 0xFFFF) +
                       ((bits >> 32) & 0xFFFF) + (bits >> 48);
  // Mean 4 * 65535 / 2; variance 4 * (65536^2 - 1) / 12.
  constexpr float kMean = 131070.0f;
  constexpr float kRcpStddev = 1.0f / 37837.23f;
  return (static_cast<float>(sum) - kMean) * kRcpStddev;
}

constexpr size_t kFillBlock = size_t{1} << 16;  // elements per seed
// Copies start on cache lines, so no line holds bytes of two copies.
constexpr size_t kLineBytes = 64;
constexpr size_t kHugePageBytes = size_t{2} << 20;
constexpr size_t kTileElements = size_t{1} << 23;  // drawn values per pool

size_t RoundUp(size_t bytes, size_t multiple) {
  return (bytes + multiple - 1) / multiple * multiple;
}

// The packed ragged layout of one case (see Workload).
struct Layout {
  std::vector<int32_t> sequence_start;
  std::vector<int32_t> sequence_end;
  int64_t stored_tokens = 0;
  size_t key_bytes = 0;    // one copy, rounded to cache lines
  size_t value_bytes = 0;  // one copy, rounded to cache lines
  size_t kv_bytes = 0;     // bytes a call reads
};

Layout MakeLayout(const CaseSpec& spec) {
  const Preset& p = spec.preset;
  if (spec.batch < 1 || spec.min_length < 1 ||
      spec.max_length < spec.min_length) {
    throw InvalidArgument(
        "bench case " + p.name + ": batch " + std::to_string(spec.batch) +
        ", lengths " + std::to_string(spec.min_length) + ".." +
        std::to_string(spec.max_length) + " must be >= 1 and ordered");
  }
  std::mt19937_64 rng(spec.seed);
  std::uniform_int_distribution<int64_t> length(spec.min_length,
                                                spec.max_length);
  Layout layout;
  layout.sequence_start.resize(static_cast<size_t>(spec.batch));
  layout.sequence_end.resize(static_cast<size_t>(spec.batch));
  for (int64_t b = 0; b < spec.batch; ++b) {
    const int64_t row_length = length(rng);
    // A window reads only the last window_left + 1 positions, so only those
    // are stored. The row's start then points back into the previous row's
    // storage, which the window leaves unread: docs/semantics.md promises
    // that unattended positions are never read.
    const int64_t attended = p.window_left >= 0
                                 ? std::min(row_length, p.window_left + 1)
                                 : row_length;
    const int64_t end = layout.stored_tokens + attended;
    if (end > INT32_MAX) {
      throw InvalidArgument("bench case " + p.name + ": batch " +
                            std::to_string(spec.batch) + " x length " +
                            std::to_string(spec.max_length) +
                            " exceeds the int32 positions of sequence_end");
    }
    layout.sequence_start[b] =
        static_cast<int32_t>(std::max<int64_t>(0, end - row_length));
    layout.sequence_end[b] = static_cast<int32_t>(end);
    layout.stored_tokens = end;
  }
  const size_t element = DTypeSize(spec.dtype);
  const size_t tokens = static_cast<size_t>(layout.stored_tokens);
  const size_t kv_heads = static_cast<size_t>(p.num_kv_heads);
  const size_t key = tokens * kv_heads * p.head_dim * element;
  const size_t value = tokens * kv_heads * p.head_dim_v * element;
  layout.kv_bytes = key + value;
  layout.key_bytes = RoundUp(key, kLineBytes);
  layout.value_bytes = RoundUp(value, kLineBytes);
  return layout;
}

int CopiesFor(const Layout& layout, size_t min_working_set) {
  const size_t copies = (min_working_set + layout.kv_bytes - 1) /
                        std::max<size_t>(layout.kv_bytes, 1);
  return static_cast<int>(std::clamp<size_t>(copies, 1, INT32_MAX));
}

}  // namespace

void FillRandomNormal(DType dtype, void* data, size_t count, uint64_t seed,
                      int num_threads) {
  const size_t num_blocks = (count + kFillBlock - 1) / kFillBlock;
  // Each block has its own stream, so the values do not depend on which
  // thread fills it.
#pragma omp parallel for num_threads(num_threads) schedule(static)
  for (size_t block = 0; block < num_blocks; ++block) {
    uint64_t state = seed ^ (block * 0xD1B54A32D192ED03ull);
    SplitMix64(state);
    const size_t begin = block * kFillBlock;
    const size_t end = std::min(count, begin + kFillBlock);
    for (size_t i = begin; i < end; ++i) {
      StoreFromF32(data, dtype, static_cast<int64_t>(i),
                   NormalFromBits(SplitMix64(state)));
    }
  }
}

RandomPool::RandomPool(DType dtype, size_t bytes, uint64_t seed,
                       int num_threads)
    : dtype_(dtype), bytes_(RoundUp(bytes, kHugePageBytes)) {
  data_ = static_cast<uint8_t*>(std::aligned_alloc(kHugePageBytes, bytes_));
  if (data_ == nullptr) {
    throw RuntimeError("bench: cannot allocate a random pool of " +
                       std::to_string(bytes_ >> 20) + " MiB");
  }
  // Huge pages spare the kernel and the read probe alike most TLB misses on
  // gigabyte working sets; a refusal only costs speed.
  madvise(data_, bytes_, MADV_HUGEPAGE);

  // Drawing a gigabyte element by element takes seconds, so one block is
  // drawn and the pool tiled with it, each tile starting elsewhere in the
  // block: rows of different copies still differ.
  const size_t element = DTypeSize(dtype);
  const size_t block_elements = std::min(kTileElements, bytes_ / element);
  std::vector<uint8_t> block(block_elements * element);
  FillRandomNormal(dtype, block.data(), block_elements, seed, num_threads);
  const size_t block_bytes = block.size();
  const size_t num_tiles = (bytes_ + block_bytes - 1) / block_bytes;
#pragma omp parallel for num_threads(num_threads) schedule(static)
  for (size_t tile = 0; tile < num_tiles; ++tile) {
    uint8_t* out = data_ + tile * block_bytes;
    const size_t size = std::min(block_bytes, bytes_ - tile * block_bytes);
    // An odd number of cache lines apart from the previous tile.
    const size_t shift = tile * 4099 * 64 % block_bytes;
    const size_t first = std::min(size, block_bytes - shift);
    std::memcpy(out, block.data() + shift, first);
    std::memcpy(out + first, block.data(), size - first);
  }
}

RandomPool::~RandomPool() { std::free(data_); }

size_t PoolBytesFor(const CaseSpec& spec, size_t min_working_set) {
  const Layout layout = MakeLayout(spec);
  return static_cast<size_t>(CopiesFor(layout, min_working_set)) *
         (layout.key_bytes + layout.value_bytes);
}

Workload::Workload(const CaseSpec& spec, const RandomPool& pool,
                   size_t min_working_set)
    : spec_(spec), options_(spec.preset.ToOptions(spec.num_threads)) {
  const Preset& p = spec.preset;
  if (pool.dtype() != spec.dtype) {
    throw InvalidArgument(std::string("bench: a ") + DTypeName(spec.dtype) +
                          " case needs a pool of that dtype, not " +
                          DTypeName(pool.dtype()));
  }
  Layout layout = MakeLayout(spec);
  sequence_start_ = std::move(layout.sequence_start);
  sequence_end_ = std::move(layout.sequence_end);
  stored_tokens_ = layout.stored_tokens;
  attended_tokens_ = layout.stored_tokens;
  kv_bytes_ = layout.kv_bytes;
  key_bytes_ = layout.key_bytes;
  copy_bytes_ = layout.key_bytes + layout.value_bytes;
  if (copy_bytes_ > pool.bytes()) {
    throw RuntimeError("bench case " + p.name + ": one copy of the KV (" +
                       std::to_string(copy_bytes_ >> 20) +
                       " MiB) exceeds the random pool (" +
                       std::to_string(pool.bytes() >> 20) + " MiB)");
  }
  num_copies_ = static_cast<int>(std::min<size_t>(
      CopiesFor(layout, min_working_set), pool.bytes() / copy_bytes_));
  pool_ = pool.data();

  // Queries and sinks get their own streams: drawn from the pool they would
  // equal some key rows and make those logits unusually large.
  const size_t element = DTypeSize(spec.dtype);
  const size_t query_count =
      static_cast<size_t>(spec.batch * p.num_qo_heads * p.head_dim);
  query_.resize(query_count * element);
  FillRandomNormal(spec.dtype, query_.data(), query_count, spec.seed + 1, 1);
  if (p.num_sinks > 0) {
    sinks_.resize(static_cast<size_t>(p.num_qo_heads * p.num_sinks));
    FillRandomNormal(DType::kF32, sinks_.data(), sinks_.size(), spec.seed + 2,
                     1);
  }
  output_.resize(
      static_cast<size_t>(spec.batch * p.num_qo_heads * p.head_dim_v) *
      element);
  lse_.resize(static_cast<size_t>(spec.batch * p.num_qo_heads));
}

double Workload::flops() const {
  const Preset& p = spec_.preset;
  return 2.0 * static_cast<double>(p.head_dim + p.head_dim_v) *
         static_cast<double>(p.num_qo_heads) *
         static_cast<double>(attended_tokens_);
}

TensorView Workload::KeyView(int copy) const {
  const Preset& p = spec_.preset;
  const uint8_t* base = pool_ + static_cast<size_t>(copy) * copy_bytes_;
  // Batch stride 0: every row indexes the same packed buffer.
  return TensorView::Strided(
      base, spec_.dtype,
      {spec_.batch, stored_tokens_, p.num_kv_heads, p.head_dim},
      {0, p.num_kv_heads * p.head_dim, p.head_dim, 1});
}

TensorView Workload::ValueView(int copy) const {
  const Preset& p = spec_.preset;
  const uint8_t* base =
      pool_ + static_cast<size_t>(copy) * copy_bytes_ + key_bytes_;
  return TensorView::Strided(
      base, spec_.dtype,
      {spec_.batch, stored_tokens_, p.num_kv_heads, p.head_dim_v},
      {0, p.num_kv_heads * p.head_dim_v, p.head_dim_v, 1});
}

Workload::CallViews Workload::Views() {
  const Preset& p = spec_.preset;
  CallViews views;
  views.query = TensorView::Contiguous(
      query_.data(), spec_.dtype, {spec_.batch, p.num_qo_heads, p.head_dim});
  views.sequence_start = TensorView::Contiguous(sequence_start_.data(),
                                                DType::kI32, {spec_.batch});
  views.sequence_end =
      TensorView::Contiguous(sequence_end_.data(), DType::kI32, {spec_.batch});
  views.output = TensorView::Contiguous(
      output_.data(), spec_.dtype, {spec_.batch, p.num_qo_heads, p.head_dim_v});
  views.lse = TensorView::Contiguous(lse_.data(), DType::kF32,
                                     {spec_.batch, p.num_qo_heads});
  views.sinks = TensorView::Contiguous(sinks_.data(), DType::kF32,
                                       {p.num_qo_heads, p.num_sinks});
  return views;
}

void Workload::Run(int copy) {
  const CallViews v = Views();
  ragged_decode_attention(v.query, KeyView(copy), ValueView(copy),
                          v.sequence_start, v.sequence_end, v.output, options_,
                          sinks_.empty() ? nullptr : &v.sinks, &v.lse);
}

std::vector<ByteSpan> Workload::KvSpans(int copy) const {
  const Preset& p = spec_.preset;
  const size_t element = DTypeSize(spec_.dtype);
  const size_t tokens = static_cast<size_t>(stored_tokens_);
  const size_t kv_heads = static_cast<size_t>(p.num_kv_heads);
  const uint8_t* base = pool_ + static_cast<size_t>(copy) * copy_bytes_;
  return {
      ByteSpan{base, tokens * kv_heads * p.head_dim * element},
      ByteSpan{base + key_bytes_, tokens * kv_heads * p.head_dim_v * element}};
}

reference::Error Workload::Check(int num_rows) {
  Run(0);
  const Preset& p = spec_.preset;
  std::mt19937_64 rng(spec_.seed + 3);
  std::vector<int64_t> rows(static_cast<size_t>(spec_.batch));
  for (int64_t b = 0; b < spec_.batch; ++b) rows[b] = b;
  std::shuffle(rows.begin(), rows.end(), rng);
  rows.resize(std::min<size_t>(rows.size(), static_cast<size_t>(num_rows)));

  // The reference is scalar float64 code, a few nanoseconds per
  // multiply-add: long rows of wide models are checked on a run of KV heads
  // (with their query groups) picked at random, not all of them.
  constexpr double kMaxMultiplyAdds = 2e7;
  double per_kv_head = 0.0;
  for (const int64_t b : rows) {
    const int64_t stored =
        sequence_end_[b] - (b == 0 ? 0 : sequence_end_[b - 1]);
    per_kv_head += static_cast<double>(stored * p.GroupSize() *
                                       (p.head_dim + p.head_dim_v));
  }
  const int64_t num_kv_heads = std::clamp<int64_t>(
      static_cast<int64_t>(kMaxMultiplyAdds / per_kv_head), 1, p.num_kv_heads);
  const int64_t first_kv_head = static_cast<int64_t>(
      rng() % static_cast<uint64_t>(p.num_kv_heads - num_kv_heads + 1));

  // Views of heads [first_kv_head, first_kv_head + num_kv_heads) only: the
  // same strides, shifted bases, fewer heads. Query head h of the sub-views
  // still reads KV head h / group_size.
  const CallViews v = Views();
  const int64_t group = p.GroupSize();
  const int64_t first_qo_head = first_kv_head * group;
  const int64_t num_qo_heads = num_kv_heads * group;
  const size_t element = DTypeSize(spec_.dtype);
  const auto shifted = [](const TensorView& view, int dim, int64_t first,
                          int64_t count, size_t element_bytes) {
    TensorView sub = view;
    sub.data = static_cast<uint8_t*>(view.data) +
               static_cast<size_t>(first * view.strides[dim]) * element_bytes;
    sub.shape[dim] = count;
    return sub;
  };
  const TensorView query =
      shifted(v.query, 1, first_qo_head, num_qo_heads, element);
  const TensorView key =
      shifted(KeyView(0), 2, first_kv_head, num_kv_heads, element);
  const TensorView value =
      shifted(ValueView(0), 2, first_kv_head, num_kv_heads, element);
  const TensorView output =
      shifted(v.output, 1, first_qo_head, num_qo_heads, element);
  const TensorView lse =
      shifted(v.lse, 1, first_qo_head, num_qo_heads, sizeof(float));
  const TensorView sinks =
      shifted(v.sinks, 0, first_qo_head, num_qo_heads, sizeof(float));
  // Rows are independent: one reference call per row, spread over the
  // case's threads.
  std::vector<reference::Error> errors(rows.size());
#pragma omp parallel for num_threads(spec_.num_threads) schedule(dynamic, 1)
  for (size_t i = 0; i < rows.size(); ++i) {
    const std::vector<int64_t> row = {rows[i]};
    const reference::Result expected =
        reference::Compute(query, key, value, v.sequence_start, v.sequence_end,
                           options_, sinks_.empty() ? nullptr : &sinks, row);
    errors[i] = reference::Compare(expected, output, &lse, row);
  }
  reference::Error worst;
  for (const reference::Error& e : errors) {
    // NaN compares false, so it must be carried explicitly.
    if (std::isnan(e.output) || std::isnan(e.lse)) return e;
    worst.output = std::max(worst.output, e.output);
    worst.lse = std::max(worst.lse, e.lse);
  }
  return worst;
}

}  // namespace bench
}  // namespace raggedattn
