// Per-target decode kernel: one work item = one chunk of one row, every
// query head. Compiled once per SIMD target and KV dtype through the files
// CMake generates from decode_kernel_dtype.cc.in.

// Per-target include guard, as Highway requires.
#if defined(RAGGEDATTN_SRC_DECODE_KERNEL_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef RAGGEDATTN_SRC_DECODE_KERNEL_INL_H_
#undef RAGGEDATTN_SRC_DECODE_KERNEL_INL_H_
#else
#define RAGGEDATTN_SRC_DECODE_KERNEL_INL_H_
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>

#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"
#include "src/decode_kernel.h"
#include "src/dtype.h"
#include "src/threading.h"

HWY_BEFORE_NAMESPACE();
namespace raggedattn {
namespace HWY_NAMESPACE {

namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

// Loads Lanes(df) elements of a KV row as f32; 16-bit formats widen in
// registers.
HWY_INLINE VF LoadF32(DF df, const float* p) { return hn::LoadU(df, p); }
HWY_INLINE VF LoadF32(DF df, const hwy::bfloat16_t* p) {
  const hn::Rebind<hwy::bfloat16_t, DF> dbf;
  return hn::PromoteTo(df, hn::LoadU(dbf, p));
}
HWY_INLINE VF LoadF32(DF df, const hwy::float16_t* p) {
  const hn::Rebind<hwy::float16_t, DF> dh;
  return hn::PromoteTo(df, hn::LoadU(dh, p));
}

// Scalar element loads for row tails shorter than a vector.
HWY_INLINE float ScalarF32(const float* p) { return *p; }
HWY_INLINE float ScalarF32(const hwy::bfloat16_t* p) {
  return F32FromBF16Bits(*reinterpret_cast<const uint16_t*>(p));
}
HWY_INLINE float ScalarF32(const hwy::float16_t* p) {
  return F32FromF16Bits(*reinterpret_cast<const uint16_t*>(p));
}

// Working memory of one work item: per-thread scratch for the widened query
// and the tile's logits, and the item's own partial states, which the kernel
// accumulates into directly.
struct Scratch {
  float* query;   // [num_qo_heads, head_dim] f32, pre-widened
  float* logits;  // [num_qo_heads, tile_capacity], becomes probabilities
  float* acc;     // [num_qo_heads, head_dim_v] unnormalised output
  float* max;     // [num_qo_heads]
  float* sum;     // [num_qo_heads]
  int64_t tile_capacity;
};

// Returns the floats of scratch one thread needs for tiles of up to
// max_tile tokens.
inline int64_t ScratchFloats(const Problem& problem, int64_t max_tile) {
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(DF()));
  const int64_t capacity = (max_tile + lanes - 1) / lanes * lanes;
  return problem.num_qo_heads * (problem.head_dim + capacity);
}

inline Scratch CarveScratch(const Problem& problem, int64_t max_tile,
                            float* base) {
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(DF()));
  const int64_t g = problem.num_qo_heads;
  Scratch s;
  s.tile_capacity = (max_tile + lanes - 1) / lanes * lanes;
  s.query = base;
  s.logits = s.query + g * problem.head_dim;
  s.acc = s.max = s.sum = nullptr;  // set per work item
  return s;
}

#if HWY_TARGET != HWY_SCALAR
// Returns the sum of the 128-bit blocks of v, halving the vector each step.
template <class D>
HWY_INLINE hn::Vec<hn::Full128<float>> SumBlocks(D d, hn::Vec<D> v) {
  if constexpr (hn::MaxLanes(D()) <= 4) {
    return v;
  } else {
    const hn::Half<D> dh;
    return SumBlocks(dh, hn::Add(hn::LowerHalf(dh, v), hn::UpperHalf(dh, v)));
  }
}
#endif

// Writes the lane sums of a, b, c and d to sums[0..3]. Interleaving pairs
// of vectors before adding reduces four vectors with a handful of shuffles
// instead of four full horizontal reductions.
HWY_INLINE void SumLanes4(VF a, VF b, VF c, VF d, float* sums) {
#if HWY_TARGET == HWY_SCALAR
  sums[0] = hn::GetLane(a);
  sums[1] = hn::GetLane(b);
  sums[2] = hn::GetLane(c);
  sums[3] = hn::GetLane(d);
#else
  const DF df;
  // Per 128-bit block: [a0+a2, b0+b2, a1+a3, b1+b3] and likewise c, d.
  const VF ab =
      hn::Add(hn::InterleaveLower(df, a, b), hn::InterleaveUpper(df, a, b));
  const VF cd =
      hn::Add(hn::InterleaveLower(df, c, d), hn::InterleaveUpper(df, c, d));
  // Per block: [sum a, sum b, sum c, sum d].
  const hn::Repartition<uint64_t, DF> du64;
  const VF block_sums =
      hn::Add(hn::BitCast(df, hn::InterleaveLower(du64, hn::BitCast(du64, ab),
                                                  hn::BitCast(du64, cd))),
              hn::BitCast(df, hn::InterleaveUpper(du64, hn::BitCast(du64, ab),
                                                  hn::BitCast(du64, cd))));
  const hn::Vec<hn::Full128<float>> sums128 = SumBlocks(df, block_sums);
  hn::StoreU(sums128, hn::Full128<float>(), sums);
#endif
}

// Requests the cache lines of [row, row + bytes) into L2 only: they are used
// after a whole tile of other rows has passed through L1. Prefetches never
// fault, so requesting rows past the attended range is harmless.
HWY_INLINE void PrefetchRowToL2(const void* row, int64_t bytes) {
  const char* p = static_cast<const char*>(row);
  for (int64_t offset = 0; offset < bytes; offset += 64) {
    __builtin_prefetch(p + offset, /*rw=*/0, /*locality=*/2);
  }
}

// Requests the cache lines of a run of rows into L2 a few at a time, so the
// requests spread evenly over a stretch of arithmetic instead of arriving in
// one burst that would stall on the core's few line-fill buffers.
class RowStream {
 public:
  RowStream() = default;
  // rows rows of row_bytes bytes, stride_bytes apart, over about `steps`
  // calls of Step().
  RowStream(const void* first_row, int64_t stride_bytes, int64_t row_bytes,
            int64_t rows, int64_t steps)
      : row_(static_cast<const char*>(first_row)),
        stride_(stride_bytes),
        row_bytes_(row_bytes),
        rows_left_(rows) {
    const int64_t lines = rows * ((row_bytes + 63) / 64);
    lines_per_step_ = steps > 0 ? (lines + steps - 1) / steps : lines;
  }

  HWY_INLINE void Step() { Request(lines_per_step_); }
  // Requests every line not requested yet.
  void Finish() { Request(std::numeric_limits<int64_t>::max()); }

 private:
  HWY_INLINE void Request(int64_t lines) {
    for (; lines > 0 && rows_left_ > 0; --lines) {
      __builtin_prefetch(row_ + offset_, /*rw=*/0, /*locality=*/2);
      offset_ += 64;
      if (offset_ >= row_bytes_) {
        offset_ = 0;
        row_ += stride_;
        --rows_left_;
      }
    }
  }

  const char* row_ = nullptr;
  int64_t stride_ = 0;
  int64_t row_bytes_ = 0;
  int64_t rows_left_ = 0;
  int64_t offset_ = 0;
  int64_t lines_per_step_ = 0;
};

// The next tile's key and value rows, requested together.
struct RowPrefetcher {
  RowStream keys;
  RowStream values;
  HWY_INLINE void Step() {
    keys.Step();
    values.Step();
  }
  void Finish() {
    keys.Finish();
    values.Finish();
  }
};

// Writes dot(q[i], k[i]) for i < 4 over dim elements to sums[0..3]. Callers
// pass one key row four times (four heads) or one query four times (four
// tokens); after inlining the repeated loads are the same expression and are
// loaded and widened once.
template <int64_t kDim, typename T>
HWY_INLINE void Dots4(const float* q0, const float* q1, const float* q2,
                      const float* q3, const T* k0, const T* k1, const T* k2,
                      const T* k3, int64_t runtime_dim, float* sums) {
  const int64_t dim = kDim != 0 ? kDim : runtime_dim;
  const DF df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  const int64_t full = dim / lanes * lanes;
  // Two accumulator sets: FMA latency is 4 cycles on 2 ports, so four
  // chains would keep the units only half busy.
  VF a0 = hn::Zero(df), a1 = hn::Zero(df);
  VF a2 = hn::Zero(df), a3 = hn::Zero(df);
  VF b0 = hn::Zero(df), b1 = hn::Zero(df);
  VF b2 = hn::Zero(df), b3 = hn::Zero(df);
  int64_t d = 0;
  for (; d + 2 * lanes <= full; d += 2 * lanes) {
    const int64_t e = d + lanes;
    a0 = hn::MulAdd(hn::LoadU(df, q0 + d), LoadF32(df, k0 + d), a0);
    a1 = hn::MulAdd(hn::LoadU(df, q1 + d), LoadF32(df, k1 + d), a1);
    a2 = hn::MulAdd(hn::LoadU(df, q2 + d), LoadF32(df, k2 + d), a2);
    a3 = hn::MulAdd(hn::LoadU(df, q3 + d), LoadF32(df, k3 + d), a3);
    b0 = hn::MulAdd(hn::LoadU(df, q0 + e), LoadF32(df, k0 + e), b0);
    b1 = hn::MulAdd(hn::LoadU(df, q1 + e), LoadF32(df, k1 + e), b1);
    b2 = hn::MulAdd(hn::LoadU(df, q2 + e), LoadF32(df, k2 + e), b2);
    b3 = hn::MulAdd(hn::LoadU(df, q3 + e), LoadF32(df, k3 + e), b3);
  }
  if (d < full) {
    a0 = hn::MulAdd(hn::LoadU(df, q0 + d), LoadF32(df, k0 + d), a0);
    a1 = hn::MulAdd(hn::LoadU(df, q1 + d), LoadF32(df, k1 + d), a1);
    a2 = hn::MulAdd(hn::LoadU(df, q2 + d), LoadF32(df, k2 + d), a2);
    a3 = hn::MulAdd(hn::LoadU(df, q3 + d), LoadF32(df, k3 + d), a3);
  }
  SumLanes4(hn::Add(a0, b0), hn::Add(a1, b1), hn::Add(a2, b2), hn::Add(a3, b3),
            sums);
  for (d = full; d < dim; ++d) {
    sums[0] += q0[d] * ScalarF32(k0 + d);
    sums[1] += q1[d] * ScalarF32(k1 + d);
    sums[2] += q2[d] * ScalarF32(k2 + d);
    sums[3] += q3[d] * ScalarF32(k3 + d);
  }
}

// Dot products of one key row segment with a group of query heads:
// out[g * out_stride] = scale * dot(query + g * dim, key), g < groups, four
// heads at a time.
template <int64_t kDim, typename T>
HWY_INLINE void GroupLogits(const T* key, const float* query,
                            int64_t runtime_dim, int64_t groups, float scale,
                            float* out, int64_t out_stride) {
  const int64_t dim = kDim != 0 ? kDim : runtime_dim;
  const DF df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  const int64_t full = dim / lanes * lanes;
  int64_t g = 0;
  for (; g + 4 <= groups; g += 4) {
    const float* q = query + g * dim;
    HWY_ALIGN float sums[4];
    Dots4<kDim>(q, q + dim, q + 2 * dim, q + 3 * dim, key, key, key, key, dim,
                sums);
    for (int64_t i = 0; i < 4; ++i) out[(g + i) * out_stride] = sums[i] * scale;
  }
  for (; g < groups; ++g) {
    const float* q = query + g * dim;
    VF a = hn::Zero(df);
    for (int64_t d = 0; d < full; d += lanes) {
      a = hn::MulAdd(hn::LoadU(df, q + d), LoadF32(df, key + d), a);
    }
    float sum = hn::GetLane(hn::SumOfLanes(df, a));
    for (int64_t d = full; d < dim; ++d) sum += q[d] * ScalarF32(key + d);
    out[g * out_stride] = sum * scale;
  }
}

// logits[h * capacity + j] = scale * dot(query[h], key row j) for every
// query head h and the n tokens of one tile. Tokens outer, KV heads inner:
// the rows are read in address order, which the hardware prefetchers follow;
// walking one KV head's rows instead jumps num_kv_heads * head_dim elements
// per token and leaves the core waiting on memory.
//
// For a chunk's first tile, value_tile is non-null and the tile's value rows
// are requested into L2 on the way, in the same order, so that TileValues,
// which walks them head by head, finds them there. Later tiles' value rows
// are requested during the previous tile's TileValues instead, which keeps
// memory busy while the value pass computes.
template <int64_t kDim, typename T>
HWY_INLINE void TileLogits(const Problem& problem, const T* key_tile,
                           const T* value_tile, int64_t n, const Scratch& s,
                           RowPrefetcher& prefetcher) {
  const int64_t dim = kDim != 0 ? kDim : problem.head_dim;
  const int64_t groups = problem.group_size;
  const int64_t stride = problem.key_stride_n;
  const int64_t cap = s.tile_capacity;
  const int64_t value_stride = problem.value_stride_n;
  const int64_t value_bytes =
      static_cast<int64_t>(sizeof(T)) *
      ((problem.num_kv_heads - 1) * problem.value_stride_h +
       problem.head_dim_v);
  int64_t j = 0;
  if (groups < 4) {
    for (; j + 4 <= n; j += 4) {
      const T* row = key_tile + j * stride;
      for (int64_t t = 0; value_tile != nullptr && t < 4; ++t) {
        PrefetchRowToL2(value_tile + (j + t) * value_stride, value_bytes);
      }
      for (int64_t kv = 0; kv < problem.num_kv_heads; ++kv) {
        prefetcher.Step();
        const T* key = row + kv * problem.key_stride_h;
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t head = kv * groups + g;
          // Four tokens share one reduction when a group has few heads.
          const float* q = s.query + head * dim;
          HWY_ALIGN float sums[4];
          Dots4<kDim>(q, q, q, q, key, key + stride, key + 2 * stride,
                      key + 3 * stride, dim, sums);
          float* out = s.logits + head * cap + j;
          for (int t = 0; t < 4; ++t) out[t] = sums[t] * problem.softmax_scale;
        }
      }
    }
  }
  for (; j < n; ++j) {
    const T* row = key_tile + j * stride;
    if (value_tile != nullptr) {
      PrefetchRowToL2(value_tile + j * value_stride, value_bytes);
    }
    for (int64_t kv = 0; kv < problem.num_kv_heads; ++kv) {
      prefetcher.Step();
      GroupLogits<kDim>(
          row + kv * problem.key_stride_h, s.query + kv * groups * dim, dim,
          groups, problem.softmax_scale, s.logits + kv * groups * cap + j, cap);
    }
  }
}

// Turns one head's n tile logits into probabilities relative to the updated
// running max, and rescales that head's accumulator. `padded` is n rounded up
// to whole vectors; the padding is set to -inf and so contributes 0.
HWY_INLINE void TileSoftmax(const Problem& problem, int64_t g, int64_t n,
                            int64_t padded, const Scratch& s) {
  const DF df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  float* logits = s.logits + g * s.tile_capacity;

  if (problem.soft_cap > 0.0f) {
    const VF cap = hn::Set(df, problem.soft_cap);
    const VF inv_cap = hn::Set(df, 1.0f / problem.soft_cap);
    for (int64_t j = 0; j < padded; j += lanes) {
      const VF x = hn::LoadU(df, logits + j);
      hn::StoreU(hn::Mul(cap, hn::Tanh(df, hn::Mul(x, inv_cap))), df,
                 logits + j);
    }
  }
  for (int64_t j = n; j < padded; ++j) {
    logits[j] = -std::numeric_limits<float>::infinity();
  }

  VF vmax = hn::Set(df, -std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < padded; j += lanes) {
    vmax = hn::Max(vmax, hn::LoadU(df, logits + j));
  }
  const float tile_max = hn::GetLane(hn::MaxOfLanes(df, vmax));
  const float old_max = s.max[g];
  const float new_max = tile_max > old_max ? tile_max : old_max;
  if (!(new_max > -std::numeric_limits<float>::infinity())) {
    // Nothing finite yet: every probability of the tile is zero.
    for (int64_t j = 0; j < padded; ++j) logits[j] = 0.0f;
    return;
  }

  const VF shift = hn::Set(df, new_max);
  VF vsum = hn::Zero(df);
  for (int64_t j = 0; j < padded; j += lanes) {
    const VF p = hn::Exp(df, hn::Sub(hn::LoadU(df, logits + j), shift));
    hn::StoreU(p, df, logits + j);
    vsum = hn::Add(vsum, p);
  }
  const float tile_sum = hn::GetLane(hn::SumOfLanes(df, vsum));

  // exp(-inf) would be 0 anyway; the branch also avoids exp(-inf - -inf).
  const float alpha = old_max == -std::numeric_limits<float>::infinity()
                          ? 0.0f
                          : std::exp(old_max - new_max);
  s.max[g] = new_max;
  s.sum[g] = s.sum[g] * alpha + tile_sum;
  if (alpha != 1.0f) {
    float* acc = s.acc + g * problem.head_dim_v;
    const int64_t dim_v = problem.head_dim_v;
    const int64_t full = dim_v / lanes * lanes;
    const VF valpha = hn::Set(df, alpha);
    for (int64_t d = 0; d < full; d += lanes) {
      hn::StoreU(hn::Mul(hn::LoadU(df, acc + d), valpha), df, acc + d);
    }
    for (int64_t d = full; d < dim_v; ++d) acc[d] *= alpha;
  }
}

// Vector registers of the target, which bound the register blocking below.
#if HWY_TARGET <= HWY_AVX3
inline constexpr int kVectorRegisters = 32;
#else
inline constexpr int kVectorRegisters = 16;
#endif

// acc[h][c] += sum_j p[h][j] * value_j[c] over the n tokens of a tile for
// kHeads heads and kVectors vectors of columns. The accumulators stay in
// registers for the whole tile and each widened value vector serves every
// head, so the loop is almost only FMAs.
template <int kHeads, int kVectors, typename T>
HWY_INLINE void ValueBlock(const T* value, int64_t stride, int64_t n,
                           const float* p, int64_t p_stride, float* acc,
                           int64_t acc_stride, RowPrefetcher& prefetcher) {
  const DF df;
  const size_t lanes = hn::Lanes(df);
  VF sums[kHeads][kVectors];
  HWY_UNROLL(8)
  for (int h = 0; h < kHeads; ++h) {
    HWY_UNROLL(8)
    for (int c = 0; c < kVectors; ++c) {
      sums[h][c] = hn::LoadU(df, acc + h * acc_stride + c * lanes);
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    prefetcher.Step();
    const T* row = value + j * stride;
    VF x[kVectors];
    HWY_UNROLL(8)
    for (int c = 0; c < kVectors; ++c) x[c] = LoadF32(df, row + c * lanes);
    HWY_UNROLL(8)
    for (int h = 0; h < kHeads; ++h) {
      const VF weight = hn::Set(df, p[h * p_stride + j]);
      HWY_UNROLL(8)
      for (int c = 0; c < kVectors; ++c) {
        sums[h][c] = hn::MulAdd(weight, x[c], sums[h][c]);
      }
    }
  }
  HWY_UNROLL(8)
  for (int h = 0; h < kHeads; ++h) {
    HWY_UNROLL(8)
    for (int c = 0; c < kVectors; ++c) {
      hn::StoreU(sums[h][c], df, acc + h * acc_stride + c * lanes);
    }
  }
}

// ValueBlock over every column of kHeads heads: blocks of whole vectors as
// wide as the registers allow, then single vectors, then scalar columns.
template <int kHeads, int64_t kDimV, typename T>
HWY_INLINE void HeadValues(const T* value, int64_t stride, int64_t n,
                           int64_t runtime_dim_v, const float* p,
                           int64_t p_stride, float* acc,
                           RowPrefetcher& prefetcher) {
  const int64_t dim_v = kDimV != 0 ? kDimV : runtime_dim_v;
  const DF df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  const int64_t full = dim_v / lanes * lanes;
  // Leaves registers for the widened row and the broadcast weight; a power
  // of two so that the common head dims split into whole blocks.
  constexpr int kLimit = (kVectorRegisters - 8) / kHeads;
  constexpr int kBlock = kLimit >= 8   ? 8
                         : kLimit >= 4 ? 4
                         : kLimit >= 2 ? 2
                                       : 1;
  int64_t d = 0;
  for (; d + kBlock * lanes <= full; d += kBlock * lanes) {
    ValueBlock<kHeads, kBlock>(value + d, stride, n, p, p_stride, acc + d,
                               dim_v, prefetcher);
  }
  for (; d < full; d += lanes) {
    ValueBlock<kHeads, 1>(value + d, stride, n, p, p_stride, acc + d, dim_v,
                          prefetcher);
  }
  for (; d < dim_v; ++d) {
    for (int64_t j = 0; j < n; ++j) {
      const float x = ScalarF32(value + j * stride + d);
      for (int h = 0; h < kHeads; ++h) {
        acc[h * dim_v + d] += p[h * p_stride + j] * x;
      }
    }
  }
}

// acc[h] += sum_j p[h][j] * value row j over one tile, KV head by KV head and
// four query heads at a time. TileLogits already brought the rows into L2.
//
// `prefetcher` requests the next tile's value rows a few lines per token.
template <int64_t kDimV, typename T>
HWY_INLINE void TileValues(const Problem& problem, const T* value_tile,
                           int64_t n, const Scratch& s,
                           RowPrefetcher& prefetcher) {
  const int64_t groups = problem.group_size;
  const int64_t dim_v = kDimV != 0 ? kDimV : problem.head_dim_v;
  const int64_t stride = problem.value_stride_n;
  const int64_t cap = s.tile_capacity;
  for (int64_t kv = 0; kv < problem.num_kv_heads; ++kv) {
    const T* value = value_tile + kv * problem.value_stride_h;
    int64_t g = 0;
    for (; g + 4 <= groups; g += 4) {
      const int64_t head = kv * groups + g;
      HeadValues<4, kDimV>(value, stride, n, dim_v, s.logits + head * cap, cap,
                           s.acc + head * dim_v, prefetcher);
    }
    for (; g + 2 <= groups; g += 2) {
      const int64_t head = kv * groups + g;
      HeadValues<2, kDimV>(value, stride, n, dim_v, s.logits + head * cap, cap,
                           s.acc + head * dim_v, prefetcher);
    }
    for (; g < groups; ++g) {
      const int64_t head = kv * groups + g;
      HeadValues<1, kDimV>(value, stride, n, dim_v, s.logits + head * cap, cap,
                           s.acc + head * dim_v, prefetcher);
    }
  }
}

// The key and value rows of one tile: `rows` rows from `key` and `value`.
template <typename T>
struct TileRows {
  const T* key = nullptr;
  const T* value = nullptr;
  int64_t rows = 0;
};

// Returns the rows of the tile of `chunk` that starts at position `begin`.
// Tiles are aligned to multiples of block_size in absolute positions.
template <typename T>
TileRows<T> TileAt(const Problem& problem, const Plan& plan, const Chunk& chunk,
                   int64_t begin) {
  const int64_t boundary = (begin / plan.block_size + 1) * plan.block_size;
  TileRows<T> tile;
  tile.key = static_cast<const T*>(problem.key) +
             chunk.batch * problem.key_stride_b + begin * problem.key_stride_n;
  tile.value = static_cast<const T*>(problem.value) +
               chunk.batch * problem.value_stride_b +
               begin * problem.value_stride_n;
  tile.rows = (boundary < chunk.end ? boundary : chunk.end) - begin;
  return tile;
}

// Computes the partial states of every query head for one chunk. kDim and
// kDimV are the head dims when known at compile time, else 0. `next_item`
// is the item this thread runs next (-1 if none): its first tile is
// requested during this item's last.
template <typename T, int64_t kDim, int64_t kDimV>
void RunWorkItem(const Problem& problem, const Plan& plan, int64_t item,
                 int64_t next_item, const Scratch& thread_scratch,
                 const PartialStates& states) {
  const int64_t dim_v = kDimV != 0 ? kDimV : problem.head_dim_v;
  Scratch s = thread_scratch;
  s.acc = states.out + item * problem.num_qo_heads * dim_v;
  s.max = states.max + item * problem.num_qo_heads;
  s.sum = states.sum + item * problem.num_qo_heads;
  const DF df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  const Chunk& chunk = plan.chunks[item];
  const int64_t b = chunk.batch;
  const int64_t heads = problem.num_qo_heads;

  for (int64_t h = 0; h < heads; ++h) {
    LoadRowAsF32(problem.query, problem.query_dtype,
                 b * problem.query_stride_b + h * problem.query_stride_h,
                 problem.head_dim, s.query + h * problem.head_dim);
    s.max[h] = -std::numeric_limits<float>::infinity();
    s.sum[h] = 0.0f;
  }
  for (int64_t i = 0; i < heads * dim_v; ++i) s.acc[i] = 0.0f;

  const int64_t key_row_bytes =
      static_cast<int64_t>(sizeof(T)) *
      ((problem.num_kv_heads - 1) * problem.key_stride_h + problem.head_dim);
  const int64_t value_row_bytes =
      static_cast<int64_t>(sizeof(T)) *
      ((problem.num_kv_heads - 1) * problem.value_stride_h + dim_v);
  // Prefetch steps per token: one per KV head in the logits pass and one per
  // (KV head, head block, column block) in the value pass.
  const int64_t steps_per_token =
      problem.num_kv_heads * (1 + (problem.group_size + 3) / 4 *
                                      ((dim_v + 4 * lanes - 1) / (4 * lanes)));
  for (int64_t begin = chunk.begin; begin < chunk.end;) {
    const TileRows<T> tile = TileAt<T>(problem, plan, chunk, begin);
    const int64_t n = tile.rows;
    const int64_t padded = (n + lanes - 1) / lanes * lanes;
    const int64_t end = begin + n;

    // The tile after this one, which memory fetches into L2 while this one
    // computes, so that the core rarely waits on memory.
    TileRows<T> following;
    if (end < chunk.end) {
      following = TileAt<T>(problem, plan, chunk, end);
    } else if (next_item >= 0) {
      const Chunk& next = plan.chunks[next_item];
      following = TileAt<T>(problem, plan, next, next.begin);
    }
    RowPrefetcher prefetcher;
    prefetcher.keys = RowStream(
        following.key, problem.key_stride_n * static_cast<int64_t>(sizeof(T)),
        key_row_bytes, following.rows, n * steps_per_token);
    prefetcher.values =
        RowStream(following.value,
                  problem.value_stride_n * static_cast<int64_t>(sizeof(T)),
                  value_row_bytes, following.rows, n * steps_per_token);

    TileLogits<kDim>(problem, tile.key,
                     begin == chunk.begin ? tile.value : nullptr, n, s,
                     prefetcher);
    for (int64_t h = 0; h < heads; ++h) TileSoftmax(problem, h, n, padded, s);
    TileValues<kDimV>(problem, tile.value, n, s, prefetcher);
    prefetcher.Finish();
    begin = end;
  }
}

template <typename T, int64_t kDim, int64_t kDimV>
void RunPlanAs(const Problem& problem, const Plan& plan,
               const PartialStates& states) {
  int64_t max_tile = 1;
  for (const Chunk& chunk : plan.chunks) {
    max_tile =
        std::max(max_tile, std::min(chunk.end - chunk.begin, plan.block_size));
  }
  const int64_t num_items = plan.NumWorkItems();
  const int threads = static_cast<int>(
      std::min<int64_t>(problem.num_threads, std::max<int64_t>(num_items, 1)));
  const int64_t per_thread = ScratchFloats(problem, max_tile);
  // Uninitialised: every element is written before it is read.
  const std::unique_ptr<float[]> scratch(
      new float[static_cast<size_t>(per_thread * threads)]);
  ParallelForWithNext(
      threads, num_items, [&](int64_t item, int64_t next, int thread) {
        const Scratch s = CarveScratch(problem, max_tile,
                                       scratch.get() + thread * per_thread);
        RunWorkItem<T, kDim, kDimV>(problem, plan, item, next, s, states);
      });
}

// Head dims of real models get compile-time loop bounds; others share one
// generic instantiation. Each one costs compile time for every target.
template <typename T>
void RunPlanForDims(const Problem& problem, const Plan& plan,
                    const PartialStates& states) {
  if (problem.head_dim == problem.head_dim_v) {
    switch (problem.head_dim) {
      case 64:
        return RunPlanAs<T, 64, 64>(problem, plan, states);
      case 128:
        return RunPlanAs<T, 128, 128>(problem, plan, states);
      case 256:
        return RunPlanAs<T, 256, 256>(problem, plan, states);
      default:
        break;
    }
  }
  RunPlanAs<T, 0, 0>(problem, plan, states);
}

}  // namespace HWY_NAMESPACE
}  // namespace raggedattn
HWY_AFTER_NAMESPACE();

#endif  // per-target include guard
