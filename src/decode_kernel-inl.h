// Per-target decode kernel: one work item = one chunk of one row for one KV
// head and its whole query group. Compiled once per SIMD target through
// decode_kernel.cc.

// Per-target include guard, as Highway requires.
#if defined(RAGGEDATTN_SRC_DECODE_KERNEL_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef RAGGEDATTN_SRC_DECODE_KERNEL_INL_H_
#undef RAGGEDATTN_SRC_DECODE_KERNEL_INL_H_
#else
#define RAGGEDATTN_SRC_DECODE_KERNEL_INL_H_
#endif

#include <cmath>
#include <cstdint>
#include <limits>

#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"
#include "src/decode_kernel.h"
#include "src/dtype.h"

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

// Per-thread scratch of one work item, carved from one allocation.
struct Scratch {
  float* query;   // [group_size, head_dim] f32, pre-widened
  float* logits;  // [group_size, tile_capacity], becomes probabilities
  float* acc;     // [group_size, head_dim_v] unnormalised output
  float* max;     // [group_size]
  float* sum;     // [group_size]
  int64_t tile_capacity;
};

// Returns the floats of scratch one thread needs for tiles of up to
// max_tile tokens.
inline int64_t ScratchFloats(const Problem& problem, int64_t max_tile) {
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(DF()));
  const int64_t capacity = (max_tile + lanes - 1) / lanes * lanes;
  const int64_t g = problem.group_size;
  return g * (problem.head_dim + capacity + problem.head_dim_v + 2);
}

inline Scratch CarveScratch(const Problem& problem, int64_t max_tile,
                            float* base) {
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(DF()));
  const int64_t g = problem.group_size;
  Scratch s;
  s.tile_capacity = (max_tile + lanes - 1) / lanes * lanes;
  s.query = base;
  s.logits = s.query + g * problem.head_dim;
  s.acc = s.logits + g * s.tile_capacity;
  s.max = s.acc + g * problem.head_dim_v;
  s.sum = s.max + g;
  return s;
}

// logits[g * capacity + j] = scale * dot(query[g], key row j) for the n
// tokens of one tile. Four heads share each widened key vector.
template <typename T>
HWY_INLINE void TileLogits(const Problem& problem, const T* key_row0,
                           int64_t n, const Scratch& s) {
  const DF df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  const int64_t dim = problem.head_dim;
  const int64_t full = dim / lanes * lanes;
  const int64_t groups = problem.group_size;
  const float scale = problem.softmax_scale;
  for (int64_t j = 0; j < n; ++j) {
    const T* key = key_row0 + j * problem.key_stride_n;
    int64_t g = 0;
    for (; g + 4 <= groups; g += 4) {
      const float* q0 = s.query + g * dim;
      const float* q1 = q0 + dim;
      const float* q2 = q1 + dim;
      const float* q3 = q2 + dim;
      VF a0 = hn::Zero(df), a1 = hn::Zero(df);
      VF a2 = hn::Zero(df), a3 = hn::Zero(df);
      for (int64_t d = 0; d < full; d += lanes) {
        const VF k = LoadF32(df, key + d);
        a0 = hn::MulAdd(hn::LoadU(df, q0 + d), k, a0);
        a1 = hn::MulAdd(hn::LoadU(df, q1 + d), k, a1);
        a2 = hn::MulAdd(hn::LoadU(df, q2 + d), k, a2);
        a3 = hn::MulAdd(hn::LoadU(df, q3 + d), k, a3);
      }
      float s0 = hn::GetLane(hn::SumOfLanes(df, a0));
      float s1 = hn::GetLane(hn::SumOfLanes(df, a1));
      float s2 = hn::GetLane(hn::SumOfLanes(df, a2));
      float s3 = hn::GetLane(hn::SumOfLanes(df, a3));
      for (int64_t d = full; d < dim; ++d) {
        const float k = ScalarF32(key + d);
        s0 += q0[d] * k;
        s1 += q1[d] * k;
        s2 += q2[d] * k;
        s3 += q3[d] * k;
      }
      s.logits[(g + 0) * s.tile_capacity + j] = s0 * scale;
      s.logits[(g + 1) * s.tile_capacity + j] = s1 * scale;
      s.logits[(g + 2) * s.tile_capacity + j] = s2 * scale;
      s.logits[(g + 3) * s.tile_capacity + j] = s3 * scale;
    }
    for (; g < groups; ++g) {
      const float* q = s.query + g * dim;
      VF a = hn::Zero(df);
      for (int64_t d = 0; d < full; d += lanes) {
        a = hn::MulAdd(hn::LoadU(df, q + d), LoadF32(df, key + d), a);
      }
      float sum = hn::GetLane(hn::SumOfLanes(df, a));
      for (int64_t d = full; d < dim; ++d) sum += q[d] * ScalarF32(key + d);
      s.logits[g * s.tile_capacity + j] = sum * scale;
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

// acc[g] += sum_j p[g][j] * value row j over one tile. Four heads share each
// widened value vector; each head's accumulator stays in registers across the
// tile's tokens.
template <typename T>
HWY_INLINE void TileValues(const Problem& problem, const T* value_row0,
                           int64_t n, const Scratch& s) {
  const DF df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  const int64_t dim_v = problem.head_dim_v;
  const int64_t full = dim_v / lanes * lanes;
  const int64_t groups = problem.group_size;
  const int64_t stride = problem.value_stride_n;
  const int64_t cap = s.tile_capacity;
  int64_t g = 0;
  for (; g + 4 <= groups; g += 4) {
    const float* p0 = s.logits + g * cap;
    float* acc0 = s.acc + g * dim_v;
    for (int64_t d = 0; d < full; d += lanes) {
      VF a0 = hn::LoadU(df, acc0 + d);
      VF a1 = hn::LoadU(df, acc0 + dim_v + d);
      VF a2 = hn::LoadU(df, acc0 + 2 * dim_v + d);
      VF a3 = hn::LoadU(df, acc0 + 3 * dim_v + d);
      for (int64_t j = 0; j < n; ++j) {
        const VF v = LoadF32(df, value_row0 + j * stride + d);
        a0 = hn::MulAdd(hn::Set(df, p0[j]), v, a0);
        a1 = hn::MulAdd(hn::Set(df, p0[cap + j]), v, a1);
        a2 = hn::MulAdd(hn::Set(df, p0[2 * cap + j]), v, a2);
        a3 = hn::MulAdd(hn::Set(df, p0[3 * cap + j]), v, a3);
      }
      hn::StoreU(a0, df, acc0 + d);
      hn::StoreU(a1, df, acc0 + dim_v + d);
      hn::StoreU(a2, df, acc0 + 2 * dim_v + d);
      hn::StoreU(a3, df, acc0 + 3 * dim_v + d);
    }
  }
  for (; g < groups; ++g) {
    const float* p = s.logits + g * cap;
    float* acc = s.acc + g * dim_v;
    for (int64_t d = 0; d < full; d += lanes) {
      VF a = hn::LoadU(df, acc + d);
      for (int64_t j = 0; j < n; ++j) {
        a = hn::MulAdd(hn::Set(df, p[j]),
                       LoadF32(df, value_row0 + j * stride + d), a);
      }
      hn::StoreU(a, df, acc + d);
    }
  }
  // Columns past the last whole vector, all heads.
  for (int64_t j = 0; j < n; ++j) {
    const T* value = value_row0 + j * stride;
    for (int64_t d = full; d < dim_v; ++d) {
      const float v = ScalarF32(value + d);
      for (int64_t h = 0; h < groups; ++h) {
        s.acc[h * dim_v + d] += s.logits[h * cap + j] * v;
      }
    }
  }
}

// Computes the partial states of work item `item` (chunk, kv_head).
template <typename T>
void RunWorkItem(const Problem& problem, const Plan& plan, int64_t item,
                 const Scratch& s, const PartialStates& states) {
  const DF df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  const int64_t chunk_index = item / problem.num_kv_heads;
  const int64_t kv_head = item % problem.num_kv_heads;
  const Chunk& chunk = plan.chunks[chunk_index];
  const int64_t b = chunk.batch;
  const int64_t groups = problem.group_size;
  const int64_t first_head = kv_head * groups;

  for (int64_t g = 0; g < groups; ++g) {
    const int64_t offset = b * problem.query_stride_b +
                           (first_head + g) * problem.query_stride_h;
    for (int64_t d = 0; d < problem.head_dim; ++d) {
      s.query[g * problem.head_dim + d] =
          LoadAsF32(problem.query, problem.query_dtype, offset + d);
    }
    s.max[g] = -std::numeric_limits<float>::infinity();
    s.sum[g] = 0.0f;
  }
  for (int64_t i = 0; i < groups * problem.head_dim_v; ++i) s.acc[i] = 0.0f;

  const T* key_base = static_cast<const T*>(problem.key) +
                      b * problem.key_stride_b + kv_head * problem.key_stride_h;
  const T* value_base = static_cast<const T*>(problem.value) +
                        b * problem.value_stride_b +
                        kv_head * problem.value_stride_h;
  // Tiles are aligned to multiples of block_size in absolute positions.
  for (int64_t begin = chunk.begin; begin < chunk.end;) {
    const int64_t boundary =
        (begin / plan.block_size + 1) * plan.block_size;
    const int64_t end = boundary < chunk.end ? boundary : chunk.end;
    const int64_t n = end - begin;
    const int64_t padded = (n + lanes - 1) / lanes * lanes;

    TileLogits(problem, key_base + begin * problem.key_stride_n, n, s);
    for (int64_t g = 0; g < groups; ++g) TileSoftmax(problem, g, n, padded, s);
    TileValues(problem, value_base + begin * problem.value_stride_n, n, s);
    begin = end;
  }

  const int64_t state = chunk_index * problem.num_qo_heads + first_head;
  for (int64_t g = 0; g < groups; ++g) {
    states.max[state + g] = s.max[g];
    states.sum[state + g] = s.sum[g];
  }
  float* out = states.out + state * problem.head_dim_v;
  for (int64_t i = 0; i < groups * problem.head_dim_v; ++i) out[i] = s.acc[i];
}

}  // namespace HWY_NAMESPACE
}  // namespace raggedattn
HWY_AFTER_NAMESPACE();

#endif  // per-target include guard
