// Per-target bodies of the probes, compiled once per SIMD target like the
// kernel (src/decode_kernel.cc), so both run the same instruction set.

#include "tools/probes.h"

#include <omp.h>

#include <algorithm>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "tools/probes.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace raggedattn {
namespace bench {
namespace HWY_NAMESPACE {

namespace hn = hwy::HWY_NAMESPACE;

// Returns a checksum of [begin, end) (32-bit words summed per lane, lanes
// and leftover bytes added in 64 bits) so the loads cannot be optimized away:
// every byte is loaded once.
uint64_t SumBytes(const uint8_t* begin, const uint8_t* end) {
  const hn::ScalableTag<uint32_t> d;
  const size_t vector_bytes = hn::Lanes(d) * sizeof(uint32_t);
  uint64_t scalar = 0;

  // Scalar head up to vector alignment, so the main loop uses aligned loads.
  const uint8_t* p = begin;
  while (p < end && reinterpret_cast<uintptr_t>(p) % vector_bytes != 0) {
    scalar += *p++;
  }

  // Four independent accumulators hide the add latency; the loop is bound by
  // the loads, which is the point.
  auto sum0 = hn::Zero(d);
  auto sum1 = hn::Zero(d);
  auto sum2 = hn::Zero(d);
  auto sum3 = hn::Zero(d);
  const size_t step = 4 * vector_bytes;
  for (; static_cast<size_t>(end - p) >= step; p += step) {
    const uint32_t* words = reinterpret_cast<const uint32_t*>(p);
    const size_t n = hn::Lanes(d);
    sum0 = hn::Add(sum0, hn::Load(d, words));
    sum1 = hn::Add(sum1, hn::Load(d, words + n));
    sum2 = hn::Add(sum2, hn::Load(d, words + 2 * n));
    sum3 = hn::Add(sum3, hn::Load(d, words + 3 * n));
  }
  for (; static_cast<size_t>(end - p) >= vector_bytes; p += vector_bytes) {
    sum0 = hn::Add(sum0, hn::Load(d, reinterpret_cast<const uint32_t*>(p)));
  }
  while (p < end) scalar += *p++;

  // Lane by lane in 64 bits: SumOfLanes on u32 reaches GCC's
  // _mm512_reduce_add_epi32, whose signed adds overflow (UBSan).
  const auto total = hn::Add(hn::Add(sum0, sum1), hn::Add(sum2, sum3));
  HWY_ALIGN uint32_t lanes[hn::MaxLanes(d)];
  hn::Store(total, d, lanes);
  for (size_t i = 0; i < hn::Lanes(d); ++i) scalar += lanes[i];
  return scalar;
}

uint64_t ReadProbeForTarget(const std::vector<ByteSpan>& spans,
                            int num_threads) {
  size_t total_bytes = 0;
  for (const ByteSpan& span : spans) total_bytes += span.bytes;
  uint64_t sum = 0;

  // Thread t reads bytes [t * total / n, (t + 1) * total / n) of the spans
  // laid end to end: equal shares, each mostly one contiguous stream.
#pragma omp parallel num_threads(num_threads) reduction(+ : sum)
  {
    const size_t threads = static_cast<size_t>(omp_get_num_threads());
    const size_t thread = static_cast<size_t>(omp_get_thread_num());
    const size_t first = total_bytes / threads * thread +
                         std::min(thread, total_bytes % threads);
    const size_t last = first + total_bytes / threads +
                        (thread < total_bytes % threads ? 1 : 0);
    size_t span_begin = 0;
    for (const ByteSpan& span : spans) {
      const size_t span_end = span_begin + span.bytes;
      const size_t begin = std::max(first, span_begin);
      const size_t end = std::min(last, span_end);
      if (begin < end) {
        const uint8_t* base = static_cast<const uint8_t*>(span.data);
        sum += SumBytes(base + (begin - span_begin), base + (end - span_begin));
      }
      span_begin = span_end;
    }
  }
  return sum;
}

// Returns the flops of `iterations` rounds on one thread; stores a value that
// depends on every FMA in *sink.
double FmaLoop(int64_t iterations, float* sink) {
  const hn::ScalableTag<float> d;
  // Two FMA ports with a latency of four cycles need eight independent
  // chains to stay busy; twelve leave margin and still fit the registers of
  // every target.
  constexpr int kChains = 12;
  const auto multiplier = hn::Set(d, 0.999999f);
  const auto addend = hn::Set(d, 1e-6f);
  auto c0 = hn::Set(d, 1.0f), c1 = hn::Set(d, 1.1f), c2 = hn::Set(d, 1.2f);
  auto c3 = hn::Set(d, 1.3f), c4 = hn::Set(d, 1.4f), c5 = hn::Set(d, 1.5f);
  auto c6 = hn::Set(d, 1.6f), c7 = hn::Set(d, 1.7f), c8 = hn::Set(d, 1.8f);
  auto c9 = hn::Set(d, 1.9f), c10 = hn::Set(d, 2.0f), c11 = hn::Set(d, 2.1f);
  for (int64_t i = 0; i < iterations; ++i) {
    c0 = hn::MulAdd(c0, multiplier, addend);
    c1 = hn::MulAdd(c1, multiplier, addend);
    c2 = hn::MulAdd(c2, multiplier, addend);
    c3 = hn::MulAdd(c3, multiplier, addend);
    c4 = hn::MulAdd(c4, multiplier, addend);
    c5 = hn::MulAdd(c5, multiplier, addend);
    c6 = hn::MulAdd(c6, multiplier, addend);
    c7 = hn::MulAdd(c7, multiplier, addend);
    c8 = hn::MulAdd(c8, multiplier, addend);
    c9 = hn::MulAdd(c9, multiplier, addend);
    c10 = hn::MulAdd(c10, multiplier, addend);
    c11 = hn::MulAdd(c11, multiplier, addend);
  }
  const auto total = hn::Add(hn::Add(hn::Add(hn::Add(c0, c1), hn::Add(c2, c3)),
                                     hn::Add(hn::Add(c4, c5), hn::Add(c6, c7))),
                             hn::Add(hn::Add(c8, c9), hn::Add(c10, c11)));
  *sink = hn::GetLane(hn::SumOfLanes(d, total));
  return 2.0 * kChains * static_cast<double>(hn::Lanes(d)) *
         static_cast<double>(iterations);
}

// Stored to after every FMA probe, so the chains are not dead code.
volatile float fma_sink;

double FmaProbeForTarget(int num_threads, int64_t iterations) {
  double flops = 0.0;
  float sink = 0.0f;
#pragma omp parallel num_threads(num_threads) reduction(+ : flops, sink)
  {
    float thread_sink = 0.0f;
    flops += FmaLoop(iterations, &thread_sink);
    sink += thread_sink;
  }
  fma_sink = sink;
  return flops;
}

const char* ProbeTargetNameForTarget() { return hwy::TargetName(HWY_TARGET); }

}  // namespace HWY_NAMESPACE
}  // namespace bench
}  // namespace raggedattn
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace raggedattn {
namespace bench {

HWY_EXPORT(ReadProbeForTarget);
HWY_EXPORT(FmaProbeForTarget);
HWY_EXPORT(ProbeTargetNameForTarget);

uint64_t ReadProbe(const std::vector<ByteSpan>& spans, int num_threads) {
  return HWY_DYNAMIC_DISPATCH(ReadProbeForTarget)(spans, num_threads);
}

double FmaProbe(int num_threads, int64_t iterations) {
  return HWY_DYNAMIC_DISPATCH(FmaProbeForTarget)(num_threads, iterations);
}

const char* ProbeTargetName() {
  return HWY_DYNAMIC_DISPATCH(ProbeTargetNameForTarget)();
}

}  // namespace bench
}  // namespace raggedattn
#endif  // HWY_ONCE
