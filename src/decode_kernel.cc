// RunPlan: picks the KV dtype's dispatch table (decode_kernel_dtype.cc.in,
// one translation unit per dtype so the targets compile in parallel), which
// picks the SIMD target once per call.

#include "src/decode_kernel.h"

#include <atomic>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/decode_kernel.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace raggedattn {
namespace HWY_NAMESPACE {

const char* TargetNameForTarget() { return hwy::TargetName(HWY_TARGET); }

int LanesForTarget() {
  return static_cast<int>(
      hwy::HWY_NAMESPACE::Lanes(hwy::HWY_NAMESPACE::ScalableTag<float>()));
}

}  // namespace HWY_NAMESPACE
}  // namespace raggedattn
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace raggedattn {

HWY_EXPORT(TargetNameForTarget);
HWY_EXPORT(LanesForTarget);

void RunPlan(const Problem& problem, const Plan& plan,
             const PartialStates& states) {
  switch (problem.kv_dtype) {
    case DType::kBF16:
      return RunPlanBF16(problem, plan, states);
    case DType::kF16:
      return RunPlanF16(problem, plan, states);
    default:
      return RunPlanF32(problem, plan, states);
  }
}

const char* DispatchedTargetName() {
  return HWY_DYNAMIC_DISPATCH(TargetNameForTarget)();
}

int DispatchedLanes() { return HWY_DYNAMIC_DISPATCH(LanesForTarget)(); }

namespace {
std::atomic<int64_t> bf16_dot_runs{0};

std::atomic<bool>& Bf16DotsAllowedFlag() {
  static std::atomic<bool> allowed{CpuPrefersBf16DotProducts()};
  return allowed;
}
}  // namespace

bool CpuHasBf16DotProducts() {
#if HWY_ARCH_X86 && defined(__GNUC__)
  static const bool has = __builtin_cpu_supports("avx512bf16");
  return has;
#else
  return false;
#endif
}

bool CpuIsAmd() {
#if HWY_ARCH_X86 && defined(__GNUC__)
  static const bool amd = __builtin_cpu_is("amd");
  return amd;
#else
  return false;
#endif
}

bool CpuPrefersBf16DotProducts() {
  return CpuHasBf16DotProducts() && CpuIsAmd();
}

bool Bf16DotProductsAllowed() {
  return CpuHasBf16DotProducts() &&
         Bf16DotsAllowedFlag().load(std::memory_order_relaxed);
}

void AllowBf16DotProducts(bool allowed) {
  Bf16DotsAllowedFlag().store(allowed, std::memory_order_relaxed);
}

void CountBf16DotProductRun() {
  bf16_dot_runs.fetch_add(1, std::memory_order_relaxed);
}

int64_t Bf16DotProductRuns() {
  return bf16_dot_runs.load(std::memory_order_relaxed);
}

}  // namespace raggedattn
#endif  // HWY_ONCE
