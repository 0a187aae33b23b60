// Per-target decode kernel: one work item = one chunk of one row, every
// query head. Compiled once per SIMD target and KV dtype through the files
// CMake generates from decode_kernel_dtype.cc.in.
//
// Layout of the work, per tile of block_size tokens, for groups of up to 8
// query heads per KV head (RunWorkItem):
//   1. logits: the query heads of a KV head are cut into head blocks of kH
//      heads; kT = lanes / kH tokens go with them, so one block computes
//      kH * kT dot products at once and one shuffle tree reduces all of them
//      into a single vector (lane t * kH + h: token t, head h);
//   2. softmax on those vectors as they are, per head via their lane;
//   3. values: in address order, a few tokens at a time, each widened value
//      vector serving every head of its KV head.
// Larger groups put one head in each lane instead (RunWideWorkItem), which
// needs no reduction at all. Throughout, the next tile's rows are requested
// while this one computes.
//
// bf16 and f16 rows widen in registers two vectors at a time; for bf16 the
// two vectors hold the even and the odd elements (a shift and a mask, no
// shuffle), so the query and the accumulators use that order too and are
// put back in natural order once per work item. On CPUs with AVX512-BF16, a
// bf16 query and bf16 keys skip the widening for the logits: vdpbf16ps
// multiplies the raw pairs.

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
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <type_traits>
#include <vector>

#if HWY_ARCH_X86
#include <immintrin.h>
#endif

#include "hwy/aligned_allocator.h"
#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"
#include "src/decode_kernel.h"
#include "src/dtype.h"
#include "src/threading.h"

HWY_BEFORE_NAMESPACE();

// AVX-512 targets may also use AVX512-BF16's vdpbf16ps for bf16 x bf16 dot
// products, which Highway 1.0 does not offer: the instruction is enabled for
// their code here and runs only where Bf16DotProductsAllowed() says the CPU
// has it. GCC emits it only for the intrinsics below.
#ifndef RAGGEDATTN_SPECIALIZE_HEAD_DIMS
#define RAGGEDATTN_SPECIALIZE_HEAD_DIMS 1
#endif

#undef RAGGEDATTN_BF16_DOTS
#if HWY_TARGET <= HWY_AVX3 && HWY_ARCH_X86 && defined(__GNUC__) && \
    !defined(__clang__)
#define RAGGEDATTN_BF16_DOTS 1
#pragma GCC push_options
#pragma GCC target("avx512bf16")
#else
#define RAGGEDATTN_BF16_DOTS 0
#endif

namespace raggedattn {
namespace HWY_NAMESPACE {

namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

// Every x86 target has a fixed vector length, so lane counts are constants.
static_assert(!HWY_HAVE_SCALABLE, "the kernel assumes fixed-width vectors");
inline constexpr int kLanes = static_cast<int>(hn::MaxLanes(DF()));
// Elements one LoadPair widens: two vectors.
inline constexpr int kPair = 2 * kLanes;

// Vector registers of the target, which bound the register blocking below.
#if HWY_TARGET <= HWY_AVX3
inline constexpr int kVectorRegisters = 32;
#else
inline constexpr int kVectorRegisters = 16;
#endif

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ---------------------------------------------------------------------------
// Widening KV rows.

// Widens KV elements to f32. Pair(p, a, b) reads kPair elements; Element
// names which of them lands in lane `lane` of vector `half`; One(p) reads
// kLanes elements in natural order; Scalar(p) one element.
template <typename T>
struct Widen;

template <>
struct Widen<float> {
  static HWY_INLINE void Pair(const float* p, VF& a, VF& b) {
    const DF df;
    a = hn::LoadU(df, p);
    b = hn::LoadU(df, p + kLanes);
  }
  static constexpr int Element(int half, int lane) {
    return half * kLanes + lane;
  }
  static HWY_INLINE VF One(const float* p) { return hn::LoadU(DF(), p); }
  static HWY_INLINE float Scalar(const float* p) { return *p; }
};

template <>
struct Widen<hwy::float16_t> {
  static HWY_INLINE void Pair(const hwy::float16_t* p, VF& a, VF& b) {
    a = One(p);
    b = One(p + kLanes);
  }
  static constexpr int Element(int half, int lane) {
    return half * kLanes + lane;
  }
  static HWY_INLINE VF One(const hwy::float16_t* p) {
    const DF df;
    const hn::Rebind<hwy::float16_t, DF> dh;
    return hn::PromoteTo(df, hn::LoadU(dh, p));
  }
  static HWY_INLINE float Scalar(const hwy::float16_t* p) {
    return F32FromF16Bits(*reinterpret_cast<const uint16_t*>(p));
  }
};

template <>
struct Widen<hwy::bfloat16_t> {
  // A bf16 is the upper half of an f32: viewed as u32 lanes, shifting left
  // by 16 widens the even elements and masking the low half the odd ones.
  static HWY_INLINE void Pair(const hwy::bfloat16_t* p, VF& a, VF& b) {
#if HWY_TARGET == HWY_SCALAR
    a = hn::Set(DF(), Scalar(p));
    b = hn::Set(DF(), Scalar(p + 1));
#else
    const DF df;
    const hn::RebindToUnsigned<DF> du32;
    const hn::Repartition<uint16_t, DF> du16;
    const auto bits = hn::BitCast(
        du32, hn::LoadU(du16, reinterpret_cast<const uint16_t*>(p)));
    a = hn::BitCast(df, hn::ShiftLeft<16>(bits));
    b = hn::BitCast(df, hn::And(bits, hn::Set(du32, 0xFFFF0000u)));
#endif
  }
  static constexpr int Element(int half, int lane) { return 2 * lane + half; }
  static HWY_INLINE VF One(const hwy::bfloat16_t* p) {
    const DF df;
    const hn::Rebind<hwy::bfloat16_t, DF> dbf;
    return hn::PromoteTo(df, hn::LoadU(dbf, p));
  }
  static HWY_INLINE float Scalar(const hwy::bfloat16_t* p) {
    return F32FromBF16Bits(*reinterpret_cast<const uint16_t*>(p));
  }
};

// Kernel order: bf16 rows widen each pair block of kPair elements into the
// even elements, then the odd ones (Widen<bf16>::Pair); elements after the
// last whole pair block, and every f32 or f16 element, keep natural order.
// The query is put in kernel order once per batch row and the value
// accumulators back in natural order once per work item.
template <typename T>
inline constexpr bool kPermutes = Widen<T>::Element(1, 0) != kLanes;

// Puts n f32 of `row` in kernel order in place.
template <typename T>
HWY_INLINE void ToKernelOrder(float* row, int64_t n) {
#if HWY_TARGET != HWY_SCALAR  // one lane: nothing to reorder
  if constexpr (kPermutes<T>) {
    const DF df;
    for (int64_t d = 0; d + kPair <= n; d += kPair) {
      const VF lo = hn::LoadU(df, row + d);
      const VF hi = hn::LoadU(df, row + d + kLanes);
      hn::StoreU(hn::ConcatEven(df, hi, lo), df, row + d);
      hn::StoreU(hn::ConcatOdd(df, hi, lo), df, row + d + kLanes);
    }
  }
#else
  (void)row;
  (void)n;
#endif
}

// Puts n f32 of `row` back in natural order in place: the inverse of
// ToKernelOrder.
template <typename T>
HWY_INLINE void ToNaturalOrder(float* row, int64_t n) {
#if HWY_TARGET != HWY_SCALAR  // one lane: nothing to reorder
  if constexpr (kPermutes<T>) {
    const DF df;
    for (int64_t d = 0; d + kPair <= n; d += kPair) {
      const VF even = hn::LoadU(df, row + d);
      const VF odd = hn::LoadU(df, row + d + kLanes);
      // Within each 128-bit block: lower and upper halves interleaved.
      const VF lower = hn::InterleaveLower(df, even, odd);
      const VF upper = hn::InterleaveUpper(df, even, odd);
      VF first = lower;
      VF second = upper;
      if constexpr (kLanes >= 8) {
        first = hn::ConcatLowerLower(df, upper, lower);
        second = hn::ConcatUpperUpper(df, upper, lower);
      }
      if constexpr (kLanes == 16) {
        // The blocks are now (l0 l1 u0 u1) and (l2 l3 u2 u3); natural order
        // is (l0 u0 l1 u1) and (l2 u2 l3 u3).
        alignas(64) static constexpr int32_t kSwapMiddle[16] = {
            0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15};
        const auto swap = hn::SetTableIndices(df, kSwapMiddle);
        first = hn::TableLookupLanes(first, swap);
        second = hn::TableLookupLanes(second, swap);
      }
      hn::StoreU(first, df, row + d);
      hn::StoreU(second, df, row + d + kLanes);
    }
  }
#else
  (void)row;
  (void)n;
#endif
}

// ---------------------------------------------------------------------------
// Reductions.

// Returns the vector whose lane i is the sum of the lanes of v[i], for i <
// kLanes; overwrites v. Each level adds pairs of vectors after moving half
// of each into the other's place (one blend, one shuffle), so kLanes sums
// cost about three instructions each instead of a full reduction apiece.
// Pairing v[j] with v[j + half] at every level leaves the sums in order.
HWY_INLINE VF SumEachVector(VF* v) {
#if HWY_TARGET == HWY_SCALAR
  return v[0];
#else
  const DF df;
  if constexpr (kLanes == 16) {
    for (int j = 0; j < 8; ++j) {
      v[j] = hn::Add(hn::ConcatUpperLower(df, v[j + 8], v[j]),
                     hn::ConcatLowerUpper(df, v[j + 8], v[j]));
    }
    for (int j = 0; j < 4; ++j) {
      v[j] = hn::Add(hn::OddEvenBlocks(v[j + 4], v[j]),
                     hn::SwapAdjacentBlocks(hn::OddEvenBlocks(v[j], v[j + 4])));
    }
  } else if constexpr (kLanes == 8) {
    for (int j = 0; j < 4; ++j) {
      v[j] = hn::Add(hn::ConcatUpperLower(df, v[j + 4], v[j]),
                     hn::ConcatLowerUpper(df, v[j + 4], v[j]));
    }
  }
  static_assert(kLanes == 4 || kLanes == 8 || kLanes == 16, "lanes");
  const hn::Repartition<uint64_t, DF> du64;
  for (int j = 0; j < 2; ++j) {
    const auto e = hn::BitCast(du64, v[j]);
    const auto f = hn::BitCast(du64, v[j + 2]);
    v[j] = hn::Add(hn::BitCast(df, hn::OddEven(f, e)),
                   hn::BitCast(df, hn::Shuffle01(hn::OddEven(e, f))));
  }
  return hn::Add(hn::OddEven(v[1], v[0]),
                 hn::Shuffle2301(hn::OddEven(v[0], v[1])));
#endif
}

// ---------------------------------------------------------------------------
// Prefetching.

inline constexpr int64_t kLine = 64;  // bytes per cache line
inline constexpr int64_t kRetryLines = 128;

// Requests `line` into L2, and again the line kRetryLines before it, so
// every line is requested twice: once in its turn and once about a hundred
// lines later. A repeated request can only help if the first one did not
// bring the line, so prefetches that find no free miss buffer seem to be
// dropped, and such a line would later be read on demand, one miss at a
// time. (Measured with bench from memory, same kernel with and without the
// second request, 2 threads: Llama-3-8B 83-84% of read bandwidth -> 88%,
// Mistral-7B 82-85% -> 86-89%, Gemma-2-9B 74-75% -> 80-83%; 1 thread,
// Gemma-2-9B 54% -> 57-59%. 32, 128 and 512 lines back did about equally
// well.) The wide kernel, bound by its arithmetic, runs 5 to 8% slower with
// the second request and goes without (`retry` false). Prefetches never
// fault, so requesting lines outside the attended range (past it, or before
// a run for the second request) is harmless; they are never read.
HWY_INLINE void RequestLine(const char* line, bool retry = true) {
  __builtin_prefetch(line, /*rw=*/0, /*locality=*/2);
  if (!retry) return;
  // Address arithmetic in integers: the line may precede the tensor.
  __builtin_prefetch(
      reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(line) -
                                    kRetryLines * kLine),
      /*rw=*/0, /*locality=*/2);
}

// `lines` consecutive cache lines from `first`, each to be requested twice
// if `retry` (see RequestLine).
struct LineRun {
  const char* first = nullptr;
  int64_t lines = 0;
  bool retry = true;
};

// Requests the lines of a LineRun in `steps` nearly equal parts, one part
// per Step(), so that a loop of `steps` iterations spreads them over its
// iterations. With no steps, requests them all at once.
class LineDrip {
 public:
  HWY_INLINE LineDrip(const LineRun& run, int64_t steps)
      : line_(run.first),
        end_(run.first + run.lines * kLine),
        per_step_(steps > 0 ? (run.lines + steps - 1) / steps : 0),
        retry_(run.retry) {
    if (steps <= 0) {
      for (; line_ < end_; line_ += kLine) RequestLine(line_, retry_);
    }
  }

  HWY_INLINE void Step() {
    const char* stop = line_ + per_step_ * kLine;
    if (stop > end_) stop = end_;
    for (; line_ < stop; line_ += kLine) RequestLine(line_, retry_);
  }

 private:
  const char* line_;
  const char* end_;
  int64_t per_step_;
  bool retry_;
};

// Requests the cache lines of the next tile into L2 while this one computes:
// its key rows first, which the next tile's logits read first, then its
// value rows, at a rate fixed per tile. The kernel takes its share of lines
// inside its inner loops (every block of a dot product and every token of a
// value step through Take() and LineDrip, every vector of the softmax
// through Tick()), so the requests flow steadily instead of in bursts at a
// few points of the tile. (Measured with bench from memory, against bursts
// at the start of every dot product block and value step: 1 thread,
// Llama-3-8B and Mistral-7B 66-69% of read bandwidth -> 72-74%.)
class TilePrefetcher {
 public:
  // `count` rows of `bytes` bytes, `stride` bytes apart.
  struct Rows {
    const char* first = nullptr;
    int64_t stride = 0;
    int64_t bytes = 0;
    int64_t count = 0;
  };

  TilePrefetcher() = default;
  // Spreads the lines of `keys`, then `values`, over about `ticks` Tick()s.
  // `retry`: request each line twice (see RequestLine).
  TilePrefetcher(const Rows& keys, const Rows& values, int64_t ticks,
                 bool retry)
      : rows_{keys, values}, retry_(retry) {
    int64_t lines = 0;
    for (Rows& rows : rows_) {
      // Rows that follow each other without a gap are one run of bytes.
      if (rows.stride == rows.bytes && rows.count > 0) {
        rows.bytes *= rows.count;
        rows.count = 1;
      }
      // Lines per row, counting the partial ones at both ends.
      const int64_t skew =
          static_cast<int64_t>(reinterpret_cast<uintptr_t>(rows.first) % kLine);
      lines += rows.count * ((skew + rows.bytes + kLine - 1) / kLine);
    }
    // Lines per tick in units of 1 / kUnit, rounded up so that the last
    // tick of the tile has requested them all.
    rate_ = ticks > 0 ? (lines * kUnit + ticks - 1) / ticks : lines * kUnit;
  }

  // Requests one tick's share of the lines.
  HWY_INLINE void Tick() {
    credit_ += rate_;
    if (credit_ >= kUnit) {
      const int64_t lines = credit_ / kUnit;
      credit_ %= kUnit;
      Request(lines);
    }
  }

  // Returns the lines of `ticks` ticks for the caller to request, as far as
  // they lie in one row; the rest stay due.
  HWY_INLINE LineRun Take(int64_t ticks) {
    credit_ += rate_ * ticks;
    LineRun run;
    run.retry = retry_;
    if (credit_ < kUnit) return run;
    if (HWY_UNLIKELY(next_ >= end_) && !NextRun()) return run;
    run.first = next_;
    run.lines =
        std::min<int64_t>(credit_ / kUnit, (end_ - next_ + kLine - 1) / kLine);
    credit_ -= run.lines * kUnit;
    next_ += run.lines * kLine;
    return run;
  }

  // Requests every line not requested yet.
  void Finish() { Request(std::numeric_limits<int64_t>::max()); }

 private:
  static constexpr int64_t kUnit = int64_t{1} << 16;

  HWY_INLINE void Request(int64_t lines) {
    const char* line = next_;
    for (; lines > 0; --lines) {
      if (HWY_UNLIKELY(line >= end_)) {
        if (!NextRun()) return;
        line = next_;
      }
      RequestLine(line, retry_);
      line += kLine;
    }
    next_ = line;
  }

  // Moves to the next row, of the keys and then of the values. Returns false
  // (and stops every later request) when none is left.
  HWY_INLINE bool NextRun() {
    for (; stream_ < 2; ++stream_) {
      Rows& rows = rows_[stream_];
      if (rows.count > 0) {
        const uintptr_t first = reinterpret_cast<uintptr_t>(rows.first);
        next_ = rows.first - first % kLine;
        end_ = rows.first + rows.bytes;
        rows.first += rows.stride;
        --rows.count;
        return true;
      }
    }
    next_ = end_;
    rate_ = 0;
    credit_ = 0;
    return false;
  }

  Rows rows_[2];
  int stream_ = 0;
  const char* next_ = nullptr;  // the next line of the current row
  const char* end_ = nullptr;   // one past the current row
  int64_t rate_ = 0;
  int64_t credit_ = 0;
  bool retry_ = true;
};

// ---------------------------------------------------------------------------
// Logits.

// Ticks of one BlockDots or BlockDotsBf16 call: one per block of kPair
// elements (kBf16Lanes == kPair).
inline int64_t DotTicks(int64_t dim) { return dim / kPair; }

// Returns the vector whose lane t * kH + h is dot(query head h, key row t)
// for h < kH, t < kT (other lanes 0). `query` holds kH rows of `dim` f32 in
// kernel order; rows[t] points at token t's key row of this KV head. Takes
// DotTicks(dim) ticks of `prefetcher`'s lines, a share per pair block.
template <int kH, int kT, int64_t kDim, typename T>
HWY_INLINE VF BlockDots(const T* const* rows, const float* query,
                        int64_t runtime_dim, TilePrefetcher& prefetcher) {
  static_assert(kH * kT <= kLanes, "one lane per dot product");
  const int64_t dim = kDim != 0 ? kDim : runtime_dim;
  const int64_t pair_end = dim / kPair * kPair;
  const int64_t vector_end = dim / kLanes * kLanes;
  const DF df;
  VF acc[kLanes];
  for (int i = 0; i < kLanes; ++i) acc[i] = hn::Zero(df);

  const int64_t ticks = DotTicks(dim);
  LineDrip drip(prefetcher.Take(ticks), ticks);
  for (int64_t d = 0; d < pair_end; d += kPair) {
    drip.Step();
    VF ka[kT], kb[kT];
    for (int t = 0; t < kT; ++t) Widen<T>::Pair(rows[t] + d, ka[t], kb[t]);
    for (int h = 0; h < kH; ++h) {
      const VF qa = hn::LoadU(df, query + h * dim + d);
      const VF qb = hn::LoadU(df, query + h * dim + d + kLanes);
      for (int t = 0; t < kT; ++t) {
        acc[t * kH + h] = hn::MulAdd(qa, ka[t], acc[t * kH + h]);
        acc[t * kH + h] = hn::MulAdd(qb, kb[t], acc[t * kH + h]);
      }
    }
  }
  for (int64_t d = pair_end; d < vector_end; d += kLanes) {
    for (int t = 0; t < kT; ++t) {
      const VF k = Widen<T>::One(rows[t] + d);
      for (int h = 0; h < kH; ++h) {
        acc[t * kH + h] =
            hn::MulAdd(hn::LoadU(df, query + h * dim + d), k, acc[t * kH + h]);
      }
    }
  }
  VF sums = SumEachVector(acc);
  if (vector_end < dim) {
    HWY_ALIGN float tail[kLanes] = {};
    for (int t = 0; t < kT; ++t) {
      for (int h = 0; h < kH; ++h) {
        float sum = 0.0f;
        for (int64_t d = vector_end; d < dim; ++d) {
          sum += query[h * dim + d] * Widen<T>::Scalar(rows[t] + d);
        }
        tail[t * kH + h] = sum;
      }
    }
    sums = hn::Add(sums, hn::Load(df, tail));
  }
  return sums;
}

#if RAGGEDATTN_BF16_DOTS
// Elements of one vector of bf16 products: pairs of them add into one f32
// lane.
inline constexpr int kBf16Lanes = 2 * kLanes;

// Returns acc + the products of a and b (32 bf16 each), adjacent pairs
// summed into each f32 lane. Products of two bf16 are exact in f32.
HWY_INLINE VF DotBf16(VF acc, __m512i a, __m512i b) {
  return VF{_mm512_dpbf16_ps(acc.raw, reinterpret_cast<__m512bh>(a),
                             reinterpret_cast<__m512bh>(b))};
}

// BlockDots for a bf16 query and bf16 keys, both in natural order: `query`
// holds kH rows of dim bf16 (as bits). Rows past a multiple of 32 elements
// are read with a mask, never past their end. Takes DotTicks(dim) ticks of
// `prefetcher`'s lines, a share per whole block of 32 elements.
template <int kH, int kT, int64_t kDim>
HWY_INLINE VF BlockDotsBf16(const hwy::bfloat16_t* const* rows,
                            const uint16_t* query, int64_t runtime_dim,
                            TilePrefetcher& prefetcher) {
  static_assert(kH * kT <= kLanes, "one lane per dot product");
  const int64_t dim = kDim != 0 ? kDim : runtime_dim;
  const DF df;
  VF acc[kLanes];
  for (int i = 0; i < kLanes; ++i) acc[i] = hn::Zero(df);
  int64_t d = 0;
  const int64_t ticks = DotTicks(dim);
  LineDrip drip(prefetcher.Take(ticks), ticks);
  for (; d + kBf16Lanes <= dim; d += kBf16Lanes) {
    drip.Step();
    __m512i k[kT];
    for (int t = 0; t < kT; ++t) k[t] = _mm512_loadu_si512(rows[t] + d);
    for (int h = 0; h < kH; ++h) {
      const __m512i q = _mm512_loadu_si512(query + h * dim + d);
      for (int t = 0; t < kT; ++t) {
        acc[t * kH + h] = DotBf16(acc[t * kH + h], q, k[t]);
      }
    }
  }
  if (d < dim) {
    const __mmask32 mask = _cvtu32_mask32((1u << (dim - d)) - 1u);
    __m512i k[kT];
    for (int t = 0; t < kT; ++t)
      k[t] = _mm512_maskz_loadu_epi16(mask, rows[t] + d);
    for (int h = 0; h < kH; ++h) {
      const __m512i q = _mm512_maskz_loadu_epi16(mask, query + h * dim + d);
      for (int t = 0; t < kT; ++t) {
        acc[t * kH + h] = DotBf16(acc[t * kH + h], q, k[t]);
      }
    }
  }
  return SumEachVector(acc);
}
#endif  // RAGGEDATTN_BF16_DOTS

// ---------------------------------------------------------------------------
// Working memory.

// Per-thread scratch, reused by every work item the thread runs.
struct ThreadScratch {
  // [num_kv_heads, head_blocks, kH, head_dim] f32 in kernel order; heads
  // past the group are zero. Holds batch row query_row's query.
  float* query = nullptr;
  int64_t query_row = -1;
  // [tile_blocks, num_kv_heads, head_blocks, kLanes]: a tile's logits, then
  // its probabilities, one vector per (token block, KV head, head block).
  float* logits = nullptr;
  // Wide head blocks only (kH == kLanes, see RunWideWorkItem):
  // [num_kv_heads, head_blocks, head_dim, kLanes]: the query transposed,
  // heads in lanes.
  float* query_t = nullptr;
  // [WideTileRows(tile), max(head_dim, head_dim_v)]: one KV head's key or
  // value rows of a tile, widened to f32 in kernel order.
  float* rows = nullptr;
  // [num_kv_heads, head_blocks, head_dim_v, kLanes]: the accumulators
  // transposed, heads in lanes; then [num_kv_heads, head_blocks, 3, kLanes]:
  // each head block's WideSoftmax state.
  float* acc_t = nullptr;
};

// ---------------------------------------------------------------------------
// Softmax.

// Caps `count` vectors of logits, `stride` floats apart, to
// soft_cap * tanh(x / soft_cap); soft_cap <= 0 leaves them. Ticks
// `prefetcher`, if any, once per vector.
HWY_INLINE void ApplySoftCap(float* logits, int64_t count, int64_t stride,
                             float soft_cap, TilePrefetcher* prefetcher) {
  if (!(soft_cap > 0.0f)) return;
  const DF df;
  const VF cap = hn::Set(df, soft_cap);
  const VF inv_cap = hn::Set(df, 1.0f / soft_cap);
  for (int64_t i = 0; i < count; ++i) {
    if (prefetcher != nullptr) prefetcher->Tick();
    float* p = logits + i * stride;
    hn::Store(hn::Mul(cap, hn::Tanh(df, hn::Mul(hn::Load(df, p), inv_cap))), df,
              p);
  }
}

// Turns the logits of one (KV head, head block) of a tile into probabilities
// relative to the updated running max of each head, and returns in alpha[h]
// the factor that rescales head h's accumulator to that max. `logits` is the
// block's first vector, `stride` floats between token blocks; the last block
// holds `last_tokens` real tokens. Heads [0, heads) of the block are real.
// Ticks `prefetcher` SoftmaxTicks times.
template <int kH, int kT>
HWY_INLINE void BlockSoftmax(float* logits, int64_t blocks, int64_t stride,
                             int64_t last_tokens, int64_t heads, float soft_cap,
                             float* max, float* sum, float* alpha,
                             TilePrefetcher& prefetcher) {
  const DF df;
  ApplySoftCap(logits, blocks, stride, soft_cap, &prefetcher);
  if (last_tokens < kT) {
    // The last block's missing tokens repeat a real row; they must weigh 0.
    HWY_ALIGN float lane_token[kLanes];
    for (int lane = 0; lane < kLanes; ++lane) lane_token[lane] = lane / kH;
    float* p = logits + (blocks - 1) * stride;
    const auto real = hn::Lt(hn::Load(df, lane_token),
                             hn::Set(df, static_cast<float>(last_tokens)));
    hn::Store(hn::IfThenElse(real, hn::Load(df, p), hn::Set(df, kNegInf)), df,
              p);
  }

  VF vmax = hn::Set(df, kNegInf);
  for (int64_t i = 0; i < blocks; ++i) {
    vmax = hn::Max(vmax, hn::Load(df, logits + i * stride));
  }
  HWY_ALIGN float lanes[kLanes];
  hn::Store(vmax, df, lanes);
  HWY_ALIGN float shift[kLanes] = {};
  float new_max[kH];
  for (int64_t h = 0; h < heads; ++h) {
    float m = max[h];
    for (int t = 0; t < kT; ++t)
      m = lanes[t * kH + h] > m ? lanes[t * kH + h] : m;
    new_max[h] = m;
    // Nothing finite yet: every probability is exp(-inf - 0) = 0.
    const float s = m > kNegInf ? m : 0.0f;
    for (int t = 0; t < kT; ++t) shift[t * kH + h] = s;
  }

  const VF vshift = hn::Load(df, shift);
  VF vsum = hn::Zero(df);
  for (int64_t i = 0; i < blocks; ++i) {
    prefetcher.Tick();
    float* p = logits + i * stride;
    const VF e = hn::Exp(df, hn::Sub(hn::Load(df, p), vshift));
    hn::Store(e, df, p);
    vsum = hn::Add(vsum, e);
  }
  hn::Store(vsum, df, lanes);
  for (int64_t h = 0; h < heads; ++h) {
    float tile_sum = 0.0f;
    for (int t = 0; t < kT; ++t) tile_sum += lanes[t * kH + h];
    // exp(-inf) would be 0 anyway; the branch also avoids exp(-inf - -inf).
    alpha[h] = max[h] == kNegInf ? 0.0f : std::exp(max[h] - new_max[h]);
    max[h] = new_max[h];
    sum[h] = sum[h] * alpha[h] + tile_sum;
  }
}

// Ticks of one BlockSoftmax over `blocks` vectors.
inline int64_t SoftmaxTicks(int64_t blocks, float soft_cap) {
  return soft_cap > 0.0f ? 2 * blocks : blocks;
}

// ---------------------------------------------------------------------------
// Values.

// Columns (in vectors) a block of kHv heads keeps in registers: as many as
// leave room for the widened row and the broadcast weight, and even, since
// rows widen a pair of vectors at a time.
constexpr int ValueColumns(int heads) {
  if (kVectorRegisters >= 32) {
    return heads <= 2 ? 8 : heads == 3 ? 6 : heads <= 6 ? 4 : 2;
  }
  return heads <= 2 ? 4 : 2;
}
// Heads one value block covers at most.
inline constexpr int kMaxValueHeads = kVectorRegisters >= 32 ? 8 : 4;

// Tokens of one step of the value pass for head blocks of kH: whole token
// blocks of the logits, at least 8 so that loading and storing the
// accumulators is shared by enough FMAs. (Measured with bench, one thread:
// 8 tokens run Llama-3-8B 5 to 10% faster than 4 both in cache and from
// memory; 16 run faster still in cache but not from memory.)
constexpr int ValueTokens(int heads_per_block) {
  return kLanes / heads_per_block > 8 ? kLanes / heads_per_block : 8;
}

// One step of the value pass for kHv heads and kC column vectors (kC == 1:
// one vector in natural order; otherwise kC / 2 widened pairs):
// acc[h][c] += sum_t weights[t][h] * rows[t][c] over `tokens` tokens
// (kTokens when it is known at compile time), requesting the lines of `run`
// a few per token; `acc` holds rows kStride floats apart (runtime_stride if
// kStride is 0). Each widened value vector serves every head. Not inlined:
// inside the work item GCC ran out of vector registers and stored each
// loaded value vector to the stack to widen it from there; on its own the
// step keeps everything in registers (bf16 in cache, one thread: 5 to 10%
// faster for Llama-3-8B, Qwen2.5-7B and Mistral-7B).
template <int kHv, int kC, int kTokens, int64_t kStride, typename T>
HWY_NOINLINE void ValueStep(const T* const* rows, int64_t column,
                            const float* const* weights, int64_t weight_offset,
                            int tokens, float* acc, int64_t runtime_stride,
                            LineRun run) {
  const int64_t acc_stride = kStride != 0 ? kStride : runtime_stride;
  static_assert(kC == 1 || kC % 2 == 0, "pairs or one natural vector");
  const DF df;
  const int count = kTokens != 0 ? kTokens : tokens;
  LineDrip drip(run, count);
  VF sums[kHv][kC];
  for (int h = 0; h < kHv; ++h) {
    for (int c = 0; c < kC; ++c) {
      sums[h][c] = hn::LoadU(df, acc + h * acc_stride + c * kLanes);
    }
  }
  HWY_UNROLL(16)
  for (int t = 0; t < count; ++t) {
    drip.Step();
    const T* row = rows[t] + column;
    VF x[kC];
    if constexpr (kC == 1) {
      x[0] = Widen<T>::One(row);
    } else {
      for (int c = 0; c < kC; c += 2) {
        Widen<T>::Pair(row + c * kLanes, x[c], x[c + 1]);
      }
    }
    const float* w = weights[t] + weight_offset;
    for (int h = 0; h < kHv; ++h) {
      const VF weight = hn::Set(df, w[h]);
      for (int c = 0; c < kC; ++c) {
        sums[h][c] = hn::MulAdd(weight, x[c], sums[h][c]);
      }
    }
  }
  for (int h = 0; h < kHv; ++h) {
    for (int c = 0; c < kC; ++c) {
      hn::StoreU(sums[h][c], df, acc + h * acc_stride + c * kLanes);
    }
  }
}

// ValueStep over every column of kHv heads: blocks of kC vectors, then
// single pairs, a natural vector, and scalar columns.
template <int kHv, int kTokens, int64_t kDimV, typename T>
HWY_INLINE void HeadValues(const T* const* rows, const float* const* weights,
                           int64_t weight_offset, int tokens,
                           int64_t runtime_dim_v, float* acc,
                           TilePrefetcher& prefetcher) {
  constexpr int kC = ValueColumns(kHv);
  const int64_t dim_v = kDimV != 0 ? kDimV : runtime_dim_v;
  const int64_t pair_end = dim_v / kPair * kPair;
  const int count = kTokens != 0 ? kTokens : tokens;
  int64_t d = 0;
  for (; d + kC * kLanes <= pair_end; d += kC * kLanes) {
    ValueStep<kHv, kC, kTokens, kDimV>(rows, d, weights, weight_offset, tokens,
                                       acc + d, dim_v, prefetcher.Take(count));
  }
  if constexpr (kC > 2) {
    for (; d < pair_end; d += kPair) {
      ValueStep<kHv, 2, kTokens, kDimV>(rows, d, weights, weight_offset, tokens,
                                        acc + d, dim_v, prefetcher.Take(count));
    }
  }
  for (; d + kLanes <= dim_v; d += kLanes) {
    ValueStep<kHv, 1, kTokens, kDimV>(rows, d, weights, weight_offset, tokens,
                                      acc + d, dim_v, prefetcher.Take(count));
  }
  for (; d < dim_v; ++d) {
    for (int t = 0; t < count; ++t) {
      const float x = Widen<T>::Scalar(rows[t] + d);
      const float* w = weights[t] + weight_offset;
      for (int h = 0; h < kHv; ++h) acc[h * dim_v + d] += w[h] * x;
    }
  }
}

// The ValueStep calls of HeadValues<heads> over dim_v columns.
inline int64_t ValueStepCalls(int heads, int64_t dim_v) {
  const int64_t columns = ValueColumns(heads) * kLanes;
  const int64_t pair_end = dim_v / kPair * kPair;
  const int64_t blocks = pair_end / columns;
  return blocks + (pair_end - blocks * columns) / kPair +
         (dim_v - pair_end) / kLanes;
}

// HeadValues for `heads` heads (at most kMaxValueHeads), chosen at run time.
template <int kTokens, int64_t kDimV, typename T>
HWY_INLINE void SomeHeadValues(int64_t heads, const T* const* rows,
                               const float* const* weights,
                               int64_t weight_offset, int tokens, int64_t dim_v,
                               float* acc, TilePrefetcher& prefetcher) {
  switch (heads) {
    case 1:
      return HeadValues<1, kTokens, kDimV>(rows, weights, weight_offset, tokens,
                                           dim_v, acc, prefetcher);
    case 2:
      return HeadValues<2, kTokens, kDimV>(rows, weights, weight_offset, tokens,
                                           dim_v, acc, prefetcher);
    case 3:
      return HeadValues<3, kTokens, kDimV>(rows, weights, weight_offset, tokens,
                                           dim_v, acc, prefetcher);
    case 4:
      return HeadValues<4, kTokens, kDimV>(rows, weights, weight_offset, tokens,
                                           dim_v, acc, prefetcher);
    default:
      break;
  }
  if constexpr (kMaxValueHeads > 4) {
    switch (heads) {
      case 5:
        return HeadValues<5, kTokens, kDimV>(rows, weights, weight_offset,
                                             tokens, dim_v, acc, prefetcher);
      case 6:
        return HeadValues<6, kTokens, kDimV>(rows, weights, weight_offset,
                                             tokens, dim_v, acc, prefetcher);
      case 7:
        return HeadValues<7, kTokens, kDimV>(rows, weights, weight_offset,
                                             tokens, dim_v, acc, prefetcher);
      default:
        return HeadValues<8, kTokens, kDimV>(rows, weights, weight_offset,
                                             tokens, dim_v, acc, prefetcher);
    }
  }
}

// Multiplies n floats by alpha.
HWY_INLINE void Rescale(float* acc, int64_t n, float alpha) {
  const DF df;
  const VF a = hn::Set(df, alpha);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    hn::StoreU(hn::Mul(a, hn::LoadU(df, acc + i)), df, acc + i);
  }
  for (; i < n; ++i) acc[i] *= alpha;
}

// ---------------------------------------------------------------------------
// Work items.

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

// Writes n elements of a query row (any query dtype) as f32 to `out`.
template <typename Q>
HWY_INLINE void WidenRow(const void* base, int64_t offset, int64_t n,
                         float* out) {
  const Q* in = static_cast<const Q*>(base) + offset;
  int64_t d = 0;
  for (; d + kLanes <= n; d += kLanes) {
    hn::StoreU(Widen<Q>::One(in + d), DF(), out + d);
  }
  for (; d < n; ++d) out[d] = Widen<Q>::Scalar(in + d);
}

// Returns the prefetcher of the rows that follow the tile ending at `end` of
// `chunk`: the chunk's next tile, or else the first tile of the thread's next
// item (next_item, -1 if none), requested over about `ticks` ticks, each line
// twice if `retry` (see RequestLine). Memory
// fetches them into L2 while this tile computes, so that the core rarely
// waits on it.
template <typename T>
TilePrefetcher NextTilePrefetcher(const Problem& problem, const Plan& plan,
                                  const Chunk& chunk, int64_t end,
                                  int64_t next_item, int64_t ticks,
                                  bool retry) {
  TileRows<T> following;
  if (end < chunk.end) {
    following = TileAt<T>(problem, plan, chunk, end);
  } else if (next_item >= 0) {
    const Chunk& next = plan.chunks[next_item];
    following = TileAt<T>(problem, plan, next, next.begin);
  }
  const int64_t size = static_cast<int64_t>(sizeof(T));
  // A token's rows of every KV head, from the first to the end of the last.
  const auto token_rows = [&](const T* first, int64_t stride_n,
                              int64_t stride_h, int64_t dim) {
    TilePrefetcher::Rows rows;
    rows.first = reinterpret_cast<const char*>(first);
    rows.stride = stride_n * size;
    rows.bytes = size * ((problem.num_kv_heads - 1) * stride_h + dim);
    rows.count = following.rows;
    return rows;
  };
  return TilePrefetcher(token_rows(following.key, problem.key_stride_n,
                                   problem.key_stride_h, problem.head_dim),
                        token_rows(following.value, problem.value_stride_n,
                                   problem.value_stride_h, problem.head_dim_v),
                        ticks, retry);
}

// Fills the thread's query scratch with batch row b's query, in kernel order
// for T, in head blocks of kH (heads past the group zero).
template <typename T, int kH>
void PrepareQuery(const Problem& problem, int64_t b, int64_t head_blocks,
                  ThreadScratch& scratch) {
  if (scratch.query_row == b) return;
  const int64_t dim = problem.head_dim;
  const int64_t groups = problem.group_size;
  for (int64_t kv = 0; kv < problem.num_kv_heads; ++kv) {
    for (int64_t slot = 0; slot < head_blocks * kH; ++slot) {
      float* out = scratch.query + (kv * head_blocks * kH + slot) * dim;
      if (slot >= groups) {
        std::fill(out, out + dim, 0.0f);
        continue;
      }
      const int64_t offset = b * problem.query_stride_b +
                             (kv * groups + slot) * problem.query_stride_h;
      switch (problem.query_dtype) {
        case DType::kBF16:
          WidenRow<hwy::bfloat16_t>(problem.query, offset, dim, out);
          break;
        case DType::kF16:
          WidenRow<hwy::float16_t>(problem.query, offset, dim, out);
          break;
        default:
          WidenRow<float>(problem.query, offset, dim, out);
      }
      ToKernelOrder<T>(out, dim);
    }
  }
  scratch.query_row = b;
}

// Fills `out` with batch row b's bf16 query as bits in natural order, in head
// blocks of kH (heads past the group zero): rows [num_kv_heads, head_blocks,
// kH, head_dim], or with `pairs` (kH == kLanes) the layout of WideDotsBf16,
// [num_kv_heads, head_blocks, head_dim / 2, kLanes, 2].
template <int kH>
void PrepareQueryBf16(const Problem& problem, int64_t b, int64_t head_blocks,
                      bool pairs, uint16_t* out) {
  const int64_t dim = problem.head_dim;
  const int64_t groups = problem.group_size;
  const uint16_t* query = static_cast<const uint16_t*>(problem.query);
  for (int64_t kv = 0; kv < problem.num_kv_heads; ++kv) {
    for (int64_t slot = 0; slot < head_blocks * kH; ++slot) {
      const uint16_t* in =
          slot < groups ? query + b * problem.query_stride_b +
                              (kv * groups + slot) * problem.query_stride_h
                        : nullptr;
      const int64_t block = kv * head_blocks + slot / kH;
      const int64_t h = slot % kH;
      for (int64_t d = 0; d < dim; ++d) {
        const uint16_t bits = slot < groups ? in[d] : 0;
        if (pairs) {
          out[block * dim * kH + (d / 2 * kH + h) * 2 + d % 2] = bits;
        } else {
          out[(block * kH + h) * dim + d] = bits;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Wide head blocks: a whole vector of query heads (groups of more than 8, as
// in multi-query attention), one head per lane. The dot products then need
// no reduction at all: each step multiplies a vector of the transposed query
// by one key element broadcast from a widened row, and the value pass
// likewise multiplies a vector of probabilities by one value element. The
// loads are the rows (widened once per tile into L1 scratch) and one vector
// per step, so the loop is almost only FMAs.

// Tokens and head blocks one step of the wide passes keeps in registers.
inline constexpr int kWideTokens = kVectorRegisters >= 32 ? 8 : 4;
inline constexpr int kWideColumns = kVectorRegisters >= 32 ? 8 : 4;

// Rows of a tile of n tokens in the widened scratch: whole steps of tokens.
inline int64_t WideTileRows(int64_t n) {
  return (n + kWideTokens - 1) / kWideTokens * kWideTokens;
}

// Widens `rows` rows of `dim` elements, `stride` elements apart, to f32 in
// kernel order, and zeroes rows [rows, WideTileRows(rows)).
template <typename T>
HWY_INLINE void WidenTile(const T* first, int64_t stride, int64_t rows,
                          int64_t dim, float* out) {
  const DF df;
  const int64_t pair_end = dim / kPair * kPair;
  for (int64_t t = 0; t < rows; ++t) {
    const T* row = first + t * stride;
    float* o = out + t * dim;
    int64_t d = 0;
    for (; d < pair_end; d += kPair) {
      VF a, b;
      Widen<T>::Pair(row + d, a, b);
      hn::StoreU(a, df, o + d);
      hn::StoreU(b, df, o + d + kLanes);
    }
    for (; d + kLanes <= dim; d += kLanes) {
      hn::StoreU(Widen<T>::One(row + d), df, o + d);
    }
    for (; d < dim; ++d) o[d] = Widen<T>::Scalar(row + d);
  }
  std::fill(out + rows * dim, out + WideTileRows(rows) * dim, 0.0f);
}

// Stores scale * acc[b][t] as token t's logits of head block b.
template <int kB>
HWY_INLINE void StoreWideLogits(const VF (&acc)[kB][kWideTokens], float scale,
                                float* logits, int64_t block_stride) {
  const DF df;
  const VF vscale = hn::Set(df, scale);
  for (int b = 0; b < kB; ++b) {
    for (int t = 0; t < kWideTokens; ++t) {
      hn::Store(hn::Mul(acc[b][t], vscale), df,
                logits + t * block_stride + b * kLanes);
    }
  }
}

// Calls body(kB, hb) for head blocks [hb, hb + kB): pairs (kB == 2, which
// share each row element between two blocks), then a last single block.
template <class Body>
HWY_INLINE void ForHeadBlockPairs(int64_t head_blocks, const Body& body) {
  int64_t hb = 0;
  for (; hb + 2 <= head_blocks; hb += 2) {
    body(std::integral_constant<int, 2>(), hb);
  }
  if (hb < head_blocks) body(std::integral_constant<int, 1>(), hb);
}

// logits[t][b] = scale * dot(query block b, key row t) for kWideTokens
// tokens and kB head blocks: `query_t` points at kB transposed blocks
// (query_stride floats apart), `keys` at the first widened row, `logits` at
// token 0's vector of block 0 (block_stride floats between tokens).
template <int kB, int64_t kDim>
HWY_INLINE void WideDots(const float* query_t, int64_t query_stride,
                         const float* keys, int64_t runtime_dim, float scale,
                         float* logits, int64_t block_stride) {
  const int64_t dim = kDim != 0 ? kDim : runtime_dim;
  const DF df;
  VF acc[kB][kWideTokens];
  for (int b = 0; b < kB; ++b) {
    for (int t = 0; t < kWideTokens; ++t) acc[b][t] = hn::Zero(df);
  }
  for (int64_t d = 0; d < dim; ++d) {
    VF q[kB];
    for (int b = 0; b < kB; ++b) {
      q[b] = hn::Load(df, query_t + b * query_stride + d * kLanes);
    }
    for (int t = 0; t < kWideTokens; ++t) {
      const VF k = hn::Set(df, keys[t * dim + d]);
      for (int b = 0; b < kB; ++b) acc[b][t] = hn::MulAdd(q[b], k, acc[b][t]);
    }
  }
  StoreWideLogits<kB>(acc, scale, logits, block_stride);
}

#if RAGGEDATTN_BF16_DOTS
// WideDots for a bf16 query and bf16 keys read straight from the cache:
// `query_pairs` holds kB blocks (query_stride bits apart) of dim / 2
// vectors, vector j the pairs (q[2j], q[2j + 1]) of kLanes heads; rows[t] is
// token t's key row, broadcast a pair at a time. dim is even.
template <int kB, int64_t kDim>
HWY_INLINE void WideDotsBf16(const uint16_t* query_pairs, int64_t query_stride,
                             const hwy::bfloat16_t* const* rows,
                             int64_t runtime_dim, float scale, float* logits,
                             int64_t block_stride) {
  const int64_t dim = kDim != 0 ? kDim : runtime_dim;
  const DF df;
  VF acc[kB][kWideTokens];
  for (int b = 0; b < kB; ++b) {
    for (int t = 0; t < kWideTokens; ++t) acc[b][t] = hn::Zero(df);
  }
  for (int64_t d = 0; d < dim; d += 2) {
    __m512i q[kB];
    for (int b = 0; b < kB; ++b) {
      q[b] = _mm512_load_si512(query_pairs + b * query_stride + d * kLanes);
    }
    for (int t = 0; t < kWideTokens; ++t) {
      int32_t pair;
      std::memcpy(&pair, rows[t] + d, sizeof(pair));
      const __m512i k = _mm512_set1_epi32(pair);
      for (int b = 0; b < kB; ++b) acc[b][t] = DotBf16(acc[b][t], q[b], k);
    }
  }
  StoreWideLogits<kB>(acc, scale, logits, block_stride);
}
#endif  // RAGGEDATTN_BF16_DOTS

// acc_t[c] = alpha * acc_t[c] + sum_t p[t] * values[t][c] for kWideColumns
// columns starting at `column`, kB head blocks and n tokens: `probs` is token
// 0's vector of block 0, `acc_t` block 0's transposed accumulators
// (acc_stride floats between blocks), `alpha` block 0's rescale vector
// (3 * kLanes floats between blocks: WideSoftmax's state).
template <int kB>
HWY_INLINE void WideValues(const float* probs, int64_t block_stride,
                           const float* values, int64_t dim_v, int64_t n,
                           int64_t column, const float* alpha, float* acc_t,
                           int64_t acc_stride) {
  const DF df;
  VF acc[kB][kWideColumns];
  for (int b = 0; b < kB; ++b) {
    const VF a = hn::Load(df, alpha + b * 3 * kLanes);
    for (int c = 0; c < kWideColumns; ++c) {
      acc[b][c] = hn::Mul(
          a, hn::Load(df, acc_t + b * acc_stride + (column + c) * kLanes));
    }
  }
  for (int64_t t = 0; t < n; ++t) {
    VF p[kB];
    for (int b = 0; b < kB; ++b) {
      p[b] = hn::Load(df, probs + t * block_stride + b * kLanes);
    }
    const float* v = values + t * dim_v + column;
    for (int c = 0; c < kWideColumns; ++c) {
      const VF x = hn::Set(df, v[c]);
      for (int b = 0; b < kB; ++b) acc[b][c] = hn::MulAdd(p[b], x, acc[b][c]);
    }
  }
  for (int b = 0; b < kB; ++b) {
    for (int c = 0; c < kWideColumns; ++c) {
      hn::Store(acc[b][c], df, acc_t + b * acc_stride + (column + c) * kLanes);
    }
  }
}

// The remaining columns [column, dim_v) of WideValues, one at a time.
HWY_INLINE void WideValuesTail(const float* probs, int64_t block_stride,
                               const float* values, int64_t dim_v, int64_t n,
                               int64_t column, const float* alpha,
                               float* acc_t) {
  const DF df;
  const VF a = hn::Load(df, alpha);
  for (int64_t c = column; c < dim_v; ++c) {
    VF acc = hn::Mul(a, hn::Load(df, acc_t + c * kLanes));
    for (int64_t t = 0; t < n; ++t) {
      acc = hn::MulAdd(hn::Load(df, probs + t * block_stride),
                       hn::Set(df, values[t * dim_v + c]), acc);
    }
    hn::Store(acc, df, acc_t + c * kLanes);
  }
}

// BlockSoftmax for one wide head block over n tokens (token t's logits at
// logits + t * stride), with the running max and sum of its heads kept as
// vectors in state[0] and state[1]; writes the accumulators' rescale factors
// to state[2]. Every lane is a head, so nothing here is scalar.
HWY_INLINE void WideSoftmax(float* logits, int64_t n, int64_t stride,
                            float soft_cap, float* state) {
  const DF df;
  ApplySoftCap(logits, n, stride, soft_cap, /*prefetcher=*/nullptr);
  const VF neg_inf = hn::Set(df, kNegInf);
  VF tile_max = neg_inf;
  for (int64_t t = 0; t < n; ++t) {
    tile_max = hn::Max(tile_max, hn::Load(df, logits + t * stride));
  }
  const VF old_max = hn::Load(df, state);
  const VF new_max = hn::Max(old_max, tile_max);
  // Nothing finite yet: every probability is exp(-inf - 0) = 0.
  const VF shift = hn::IfThenZeroElse(hn::Eq(new_max, neg_inf), new_max);
  VF tile_sum = hn::Zero(df);
  for (int64_t t = 0; t < n; ++t) {
    float* p = logits + t * stride;
    const VF e = hn::Exp(df, hn::Sub(hn::Load(df, p), shift));
    hn::Store(e, df, p);
    tile_sum = hn::Add(tile_sum, e);
  }
  // A head with nothing finite before weighs its (zero) past by 0, which
  // also avoids exp(-inf - -inf).
  const VF alpha = hn::IfThenZeroElse(hn::Eq(old_max, neg_inf),
                                      hn::Exp(df, hn::Sub(old_max, shift)));
  hn::Store(new_max, df, state);
  hn::Store(hn::MulAdd(hn::Load(df, state + kLanes), alpha, tile_sum), df,
            state + kLanes);
  hn::Store(alpha, df, state + 2 * kLanes);
}

// RunWorkItem for head blocks of kLanes heads.
template <typename T, int64_t kDim, int64_t kDimV, bool kDot>
void RunWideWorkItem(const Problem& problem, const Plan& plan, int64_t item,
                     int64_t next_item, ThreadScratch& scratch,
                     const PartialStates& states) {
  const int64_t dim = kDim != 0 ? kDim : problem.head_dim;
  const int64_t dim_v = kDimV != 0 ? kDimV : problem.head_dim_v;
  const int64_t heads = problem.num_qo_heads;
  const int64_t groups = problem.group_size;
  const int64_t kv_heads = problem.num_kv_heads;
  const int64_t head_blocks = (groups + kLanes - 1) / kLanes;
  const int64_t all_blocks = kv_heads * head_blocks;
  const Chunk& chunk = plan.chunks[item];
  const DF df;

  std::fill(scratch.acc_t, scratch.acc_t + all_blocks * dim_v * kLanes, 0.0f);
  // Per head block: running max, running sum and rescale factors (see
  // WideSoftmax), after the accumulators.
  float* softmax = scratch.acc_t + all_blocks * dim_v * kLanes;
  for (int64_t block = 0; block < all_blocks; ++block) {
    std::fill(softmax + block * 3 * kLanes,
              softmax + block * 3 * kLanes + kLanes, kNegInf);
    std::fill(softmax + block * 3 * kLanes + kLanes,
              softmax + block * 3 * kLanes + 3 * kLanes, 0.0f);
  }
  // With kDot: the query as bf16 pairs (see WideDotsBf16) where the
  // transposed f32 query would be.
  uint16_t* query_pairs = reinterpret_cast<uint16_t*>(scratch.query_t);
  if (kDot && scratch.query_row != chunk.batch) {
    PrepareQueryBf16<kLanes>(problem, chunk.batch, head_blocks,
                             /*pairs=*/true, query_pairs);
    scratch.query_row = chunk.batch;
  }
  if (!kDot && scratch.query_row != chunk.batch) {
    PrepareQuery<T, kLanes>(problem, chunk.batch, head_blocks, scratch);
    for (int64_t block = 0; block < all_blocks; ++block) {
      const float* q = scratch.query + block * kLanes * dim;
      float* q_t = scratch.query_t + block * dim * kLanes;
      for (int64_t d = 0; d < dim; ++d) {
        for (int lane = 0; lane < kLanes; ++lane) {
          q_t[d * kLanes + lane] = q[lane * dim + d];
        }
      }
    }
  }

  // Floats between tokens of the logits scratch: one vector per head block.
  const int64_t block_stride = all_blocks * kLanes;
  const int64_t column_end = dim_v / kWideColumns * kWideColumns;

  for (int64_t begin = chunk.begin; begin < chunk.end;) {
    const TileRows<T> tile = TileAt<T>(problem, plan, chunk, begin);
    const int64_t n = tile.rows;
    const int64_t end = begin + n;
    // One tick per KV head of either pass.
    TilePrefetcher prefetcher = NextTilePrefetcher<T>(
        problem, plan, chunk, end, next_item, 2 * kv_heads, /*retry=*/false);

    for (int64_t kv = 0; kv < kv_heads; ++kv) {
      prefetcher.Tick();
#if RAGGEDATTN_BF16_DOTS
      if constexpr (kDot) {
        const uint16_t* q = query_pairs + kv * head_blocks * dim * kLanes;
        float* logits = scratch.logits + kv * head_blocks * kLanes;
        for (int64_t t = 0; t < n; t += kWideTokens) {
          // Tokens past the tile repeat its last row; softmax reads only n.
          const hwy::bfloat16_t* rows[kWideTokens];
          for (int i = 0; i < kWideTokens; ++i) {
            rows[i] = tile.key + kv * problem.key_stride_h +
                      std::min<int64_t>(t + i, n - 1) * problem.key_stride_n;
          }
          ForHeadBlockPairs(head_blocks, [&](auto blocks, int64_t hb) {
            WideDotsBf16<decltype(blocks)::value, kDim>(
                q + hb * dim * kLanes, dim * kLanes, rows, dim,
                problem.softmax_scale, logits + t * block_stride + hb * kLanes,
                block_stride);
          });
        }
        continue;
      }
#endif
      WidenTile(tile.key + kv * problem.key_stride_h, problem.key_stride_n, n,
                dim, scratch.rows);
      const float* q_t = scratch.query_t + kv * head_blocks * dim * kLanes;
      float* logits = scratch.logits + kv * head_blocks * kLanes;
      for (int64_t t = 0; t < n; t += kWideTokens) {
        ForHeadBlockPairs(head_blocks, [&](auto blocks, int64_t hb) {
          WideDots<decltype(blocks)::value, kDim>(
              q_t + hb * dim * kLanes, dim * kLanes, scratch.rows + t * dim,
              dim, problem.softmax_scale,
              logits + t * block_stride + hb * kLanes, block_stride);
        });
      }
    }

    // Softmax per head block.
    for (int64_t block = 0; block < all_blocks; ++block) {
      WideSoftmax(scratch.logits + block * kLanes, n, block_stride,
                  problem.soft_cap, softmax + block * 3 * kLanes);
    }

    for (int64_t kv = 0; kv < kv_heads; ++kv) {
      prefetcher.Tick();
      WidenTile(tile.value + kv * problem.value_stride_h,
                problem.value_stride_n, n, dim_v, scratch.rows);
      const float* probs = scratch.logits + kv * head_blocks * kLanes;
      float* acc_t = scratch.acc_t + kv * head_blocks * dim_v * kLanes;
      const float* state = softmax + kv * head_blocks * 3 * kLanes;
      ForHeadBlockPairs(head_blocks, [&](auto blocks, int64_t hb) {
        for (int64_t c = 0; c < column_end; c += kWideColumns) {
          WideValues<decltype(blocks)::value>(
              probs + hb * kLanes, block_stride, scratch.rows, dim_v, n, c,
              state + hb * 3 * kLanes + 2 * kLanes, acc_t + hb * dim_v * kLanes,
              dim_v * kLanes);
        }
      });
      for (int64_t hb = 0; hb < head_blocks && column_end < dim_v; ++hb) {
        WideValuesTail(probs + hb * kLanes, block_stride, scratch.rows, dim_v,
                       n, column_end, state + hb * 3 * kLanes + 2 * kLanes,
                       acc_t + hb * dim_v * kLanes);
      }
    }
    prefetcher.Finish();
    begin = end;
  }

  // Back to one row per head, in natural order.
  float* acc = states.out + item * heads * dim_v;
  for (int64_t block = 0; block < all_blocks; ++block) {
    const int64_t kv = block / head_blocks;
    const int64_t hb = block % head_blocks;
    const int64_t count = std::min<int64_t>(kLanes, groups - hb * kLanes);
    const float* acc_t = scratch.acc_t + block * dim_v * kLanes;
    for (int64_t lane = 0; lane < count; ++lane) {
      const int64_t head = kv * groups + hb * kLanes + lane;
      states.max[item * heads + head] = softmax[block * 3 * kLanes + lane];
      states.sum[item * heads + head] =
          softmax[block * 3 * kLanes + kLanes + lane];
      float* out = acc + head * dim_v;
      for (int64_t d = 0; d < dim_v; ++d) out[d] = acc_t[d * kLanes + lane];
      ToNaturalOrder<T>(out, dim_v);
    }
  }
}

// Computes the partial states of every query head for one chunk, with head
// blocks of kH. kDim and kDimV are the head dims when known at compile time,
// else 0. `next_item` is the item this thread runs next (-1 if none): its
// first tile is requested during this item's last.
template <typename T, int kH, int64_t kDim, int64_t kDimV, bool kDot>
void RunWorkItem(const Problem& problem, const Plan& plan, int64_t item,
                 int64_t next_item, ThreadScratch& scratch,
                 const PartialStates& states) {
  if constexpr (kH == kLanes && kLanes >= 4) {
    return RunWideWorkItem<T, kDim, kDimV, kDot>(problem, plan, item, next_item,
                                                 scratch, states);
  }
  constexpr int kT = kLanes / kH;
  const int64_t dim = kDim != 0 ? kDim : problem.head_dim;
  const int64_t dim_v = kDimV != 0 ? kDimV : problem.head_dim_v;
  const int64_t heads = problem.num_qo_heads;
  const int64_t groups = problem.group_size;
  const int64_t kv_heads = problem.num_kv_heads;
  const int64_t head_blocks = (groups + kH - 1) / kH;
  const Chunk& chunk = plan.chunks[item];
  const float scale = problem.softmax_scale;

  float* acc = states.out + item * heads * dim_v;
  float* max = states.max + item * heads;
  float* sum = states.sum + item * heads;
  for (int64_t h = 0; h < heads; ++h) {
    max[h] = kNegInf;
    sum[h] = 0.0f;
  }
  for (int64_t i = 0; i < heads * dim_v; ++i) acc[i] = 0.0f;
  // With kDot: the query as bf16 bits where the f32 query would be.
  [[maybe_unused]] const uint16_t* query_bits =
      reinterpret_cast<uint16_t*>(scratch.query);
  if (kDot && scratch.query_row != chunk.batch) {
    PrepareQueryBf16<kH>(problem, chunk.batch, head_blocks, /*pairs=*/false,
                         reinterpret_cast<uint16_t*>(scratch.query));
    scratch.query_row = chunk.batch;
  }
  if (!kDot) PrepareQuery<T, kH>(problem, chunk.batch, head_blocks, scratch);

  // Floats between token blocks of the logits scratch.
  const int64_t block_stride = kv_heads * head_blocks * kLanes;
  constexpr int kTv = ValueTokens(kH);
  // ValueStep calls per KV head and value step (see the value pass below).
  int64_t value_calls = 0;
  for (int64_t hb = 0; hb < head_blocks; ++hb) {
    const int64_t count = std::min<int64_t>(kH, groups - hb * kH);
    for (int64_t h = 0; h < count; h += kMaxValueHeads) {
      value_calls += ValueStepCalls(
          static_cast<int>(std::min<int64_t>(kMaxValueHeads, count - h)),
          dim_v);
    }
  }

  for (int64_t begin = chunk.begin; begin < chunk.end;) {
    const TileRows<T> tile = TileAt<T>(problem, plan, chunk, begin);
    const int64_t n = tile.rows;
    const int64_t end = begin + n;
    const int64_t blocks = (n + kT - 1) / kT;
    const int64_t last_tokens = n - (blocks - 1) * kT;

    // The next tile's rows are requested at a steady rate over this one:
    // one tick per block of each dot product, per vector of the softmax and
    // per token of each value step, each about 25 vector instructions.
    const int64_t ticks =
        kv_heads * (blocks * head_blocks * DotTicks(dim) +
                    head_blocks * SoftmaxTicks(blocks, problem.soft_cap) +
                    n * value_calls);
    TilePrefetcher prefetcher =
        NextTilePrefetcher<T>(problem, plan, chunk, end, next_item, ticks,
                              /*retry=*/true);

    // Logits, token blocks in address order. Missing tokens of the last
    // block repeat its last real row, which is attended; BlockSoftmax gives
    // them weight 0.
    const DF df;
    const VF vscale = hn::Set(df, scale);
    for (int64_t i = 0; i < blocks; ++i) {
      const T* rows[kT];
      for (int t = 0; t < kT; ++t) {
        const int64_t token = std::min<int64_t>(i * kT + t, n - 1);
        rows[t] = tile.key + token * problem.key_stride_n;
      }
      for (int64_t kv = 0; kv < kv_heads; ++kv) {
        const T* kv_rows[kT];
        for (int t = 0; t < kT; ++t) {
          kv_rows[t] = rows[t] + kv * problem.key_stride_h;
        }
        for (int64_t hb = 0; hb < head_blocks; ++hb) {
          const int64_t first = (kv * head_blocks + hb) * kH * dim;
          VF dots;
#if RAGGEDATTN_BF16_DOTS
          if constexpr (kDot) {
            dots = BlockDotsBf16<kH, kT, kDim>(kv_rows, query_bits + first, dim,
                                               prefetcher);
          } else
#endif
          {
            dots = BlockDots<kH, kT, kDim>(kv_rows, scratch.query + first, dim,
                                           prefetcher);
          }
          hn::Store(hn::Mul(dots, vscale), df,
                    scratch.logits + i * block_stride +
                        (kv * head_blocks + hb) * kLanes);
        }
      }
    }

    // Softmax of every head block; accumulators rescaled to the new max.
    for (int64_t kv = 0; kv < kv_heads; ++kv) {
      for (int64_t hb = 0; hb < head_blocks; ++hb) {
        const int64_t first_head = kv * groups + hb * kH;
        const int64_t count = std::min<int64_t>(kH, groups - hb * kH);
        float alpha[kH] = {};
        BlockSoftmax<kH, kT>(scratch.logits + (kv * head_blocks + hb) * kLanes,
                             blocks, block_stride, last_tokens, count,
                             problem.soft_cap, max + first_head,
                             sum + first_head, alpha, prefetcher);
        for (int64_t h = 0; h < count; ++h) {
          if (alpha[h] != 1.0f) {
            Rescale(acc + (first_head + h) * dim_v, dim_v, alpha[h]);
          }
        }
      }
    }

    // Values, kTv tokens at a time in address order.
    for (int64_t j = 0; j < n; j += kTv) {
      const int tokens = static_cast<int>(std::min<int64_t>(kTv, n - j));
      const T* rows[kTv];
      const float* weights[kTv];
      for (int t = 0; t < kTv; ++t) {
        const int64_t token = j + std::min(t, tokens - 1);
        rows[t] = tile.value + token * problem.value_stride_n;
        weights[t] =
            scratch.logits + token / kT * block_stride + token % kT * kH;
      }
      for (int64_t kv = 0; kv < kv_heads; ++kv) {
        const T* kv_rows[kTv];
        for (int t = 0; t < kTv; ++t) {
          kv_rows[t] = rows[t] + kv * problem.value_stride_h;
        }
        for (int64_t hb = 0; hb < head_blocks; ++hb) {
          const int64_t first_head = kv * groups + hb * kH;
          const int64_t count = std::min<int64_t>(kH, groups - hb * kH);
          for (int64_t h = 0; h < count; h += kMaxValueHeads) {
            const int64_t offset = (kv * head_blocks + hb) * kLanes + h;
            const int64_t some = std::min<int64_t>(kMaxValueHeads, count - h);
            float* out = acc + (first_head + h) * dim_v;
            if (tokens == kTv) {
              SomeHeadValues<kTv, kDimV>(some, kv_rows, weights, offset, tokens,
                                         dim_v, out, prefetcher);
            } else {
              SomeHeadValues<0, kDimV>(some, kv_rows, weights, offset, tokens,
                                       dim_v, out, prefetcher);
            }
          }
        }
      }
    }
    prefetcher.Finish();
    begin = end;
  }

  for (int64_t h = 0; h < heads; ++h) ToNaturalOrder<T>(acc + h * dim_v, dim_v);
}

// Returns the head block for a group of `groups` query heads: the whole
// group rounded up to a size with its own code, or kLanes heads.
inline int HeadBlockFor(int64_t groups) {
  constexpr int kSizes[] = {1, 2, 4, 5, 6, 7, 8, 16};
  for (const int size : kSizes) {
    if (size <= kLanes && groups <= size) return size;
  }
  return kLanes;
}

template <typename T, int kH, int64_t kDim, int64_t kDimV, bool kDot>
void RunPlanWith(const Problem& problem, const Plan& plan,
                 const PartialStates& states) {
  int64_t max_tile = 1;
  for (const Chunk& chunk : plan.chunks) {
    max_tile =
        std::max(max_tile, std::min(chunk.end - chunk.begin, plan.block_size));
  }
  constexpr int kT = kLanes / kH;
  const int64_t head_blocks = (problem.group_size + kH - 1) / kH;
  const int64_t query_floats =
      problem.num_kv_heads * head_blocks * kH * problem.head_dim;
  // Wide head blocks: the logits of whole steps of tokens, the transposed
  // query, the transposed accumulators, three softmax vectors per head block
  // and one KV head's widened rows of a tile.
  const bool wide = kH == kLanes && kLanes >= 4;
  const int64_t token_blocks =
      wide ? WideTileRows(max_tile) : (max_tile + kT - 1) / kT;
  const int64_t logits_floats =
      token_blocks * problem.num_kv_heads * head_blocks * kLanes;
  const int64_t blocks = problem.num_kv_heads * head_blocks;
  const int64_t wide_floats =
      wide ? query_floats +
                 WideTileRows(max_tile) *
                     std::max(problem.head_dim, problem.head_dim_v) +
                 blocks * (problem.head_dim_v + 3) * kLanes
           : 0;
  // Whole vectors, so that every thread's scratch starts vector-aligned.
  const int64_t per_thread =
      (query_floats + logits_floats + wide_floats + kLanes - 1) / kLanes *
      kLanes;

  const int64_t num_items = plan.NumWorkItems();
  const int threads = static_cast<int>(
      std::min<int64_t>(problem.num_threads, std::max<int64_t>(num_items, 1)));
  // Uninitialised: every element is written before it is read.
  const hwy::AlignedFreeUniquePtr<float[]> memory =
      hwy::AllocateAligned<float>(static_cast<size_t>(per_thread * threads));
  if (!memory) throw std::bad_alloc();
  std::vector<ThreadScratch> scratch(static_cast<size_t>(threads));
  for (int t = 0; t < threads; ++t) {
    scratch[t].logits = memory.get() + t * per_thread;
    scratch[t].query = scratch[t].logits + logits_floats;
    if (wide) {
      scratch[t].query_t = scratch[t].query + query_floats;
      scratch[t].acc_t = scratch[t].query_t + query_floats;
      scratch[t].rows =
          scratch[t].acc_t + blocks * (problem.head_dim_v + 3) * kLanes;
    }
  }
  ParallelForWithNext(threads, num_items,
                      [&](int64_t item, int64_t next, int thread) {
                        RunWorkItem<T, kH, kDim, kDimV, kDot>(
                            problem, plan, item, next, scratch[thread], states);
                      });
}

// RunPlanWith, with bf16 dot products (kDot) for a bf16 query and bf16 KV
// where the CPU has them. The wide kernel reads key pairs, so it needs an
// even head_dim.
template <typename T, int kH, int64_t kDim, int64_t kDimV>
void RunPlanAs(const Problem& problem, const Plan& plan,
               const PartialStates& states) {
#if RAGGEDATTN_BF16_DOTS
  if constexpr (std::is_same_v<T, hwy::bfloat16_t>) {
    const bool wide = kH == kLanes;
    if (problem.query_dtype == DType::kBF16 &&
        (!wide || problem.head_dim % 2 == 0) && Bf16DotProductsAllowed()) {
      CountBf16DotProductRun();
      return RunPlanWith<T, kH, kDim, kDimV, true>(problem, plan, states);
    }
  }
#endif
  RunPlanWith<T, kH, kDim, kDimV, false>(problem, plan, states);
}

// Head dims of real models get compile-time loop bounds; others share one
// generic instantiation. Each one costs compile time for every target.
template <typename T, int kH>
void RunPlanForDims(const Problem& problem, const Plan& plan,
                    const PartialStates& states) {
#if RAGGEDATTN_SPECIALIZE_HEAD_DIMS  // see CMakeLists.txt
  if (problem.head_dim == problem.head_dim_v) {
    switch (problem.head_dim) {
      case 64:
        return RunPlanAs<T, kH, 64, 64>(problem, plan, states);
      case 128:
        return RunPlanAs<T, kH, 128, 128>(problem, plan, states);
      case 256:
        return RunPlanAs<T, kH, 256, 256>(problem, plan, states);
      default:
        break;
    }
  }
#endif
  RunPlanAs<T, kH, 0, 0>(problem, plan, states);
}

// Dispatches on the head block, then on the head dims.
template <typename T>
void RunPlanForShape(const Problem& problem, const Plan& plan,
                     const PartialStates& states) {
  switch (HeadBlockFor(problem.group_size)) {
    case 1:
      return RunPlanForDims<T, 1>(problem, plan, states);
    case 2:
      return RunPlanForDims<T, 2>(problem, plan, states);
    default:
      break;
  }
  if constexpr (kLanes >= 4) {
    if (HeadBlockFor(problem.group_size) == 4) {
      return RunPlanForDims<T, 4>(problem, plan, states);
    }
  }
  if constexpr (kLanes >= 8) {
    switch (HeadBlockFor(problem.group_size)) {
      case 5:
        return RunPlanForDims<T, 5>(problem, plan, states);
      case 6:
        return RunPlanForDims<T, 6>(problem, plan, states);
      case 7:
        return RunPlanForDims<T, 7>(problem, plan, states);
      case 8:
        return RunPlanForDims<T, 8>(problem, plan, states);
      default:
        break;
    }
  }
  if constexpr (kLanes >= 16) {
    return RunPlanForDims<T, 16>(problem, plan, states);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace raggedattn

#if RAGGEDATTN_BF16_DOTS
#pragma GCC pop_options
#endif
HWY_AFTER_NAMESPACE();

#endif  // per-target include guard
