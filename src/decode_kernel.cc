// RunPlan: picks the KV dtype's dispatch table (decode_kernel_dtype.cc.in,
// one translation unit per dtype so the targets compile in parallel), which
// picks the SIMD target once per call.

#include "src/decode_kernel.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/decode_kernel.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace raggedattn {
namespace HWY_NAMESPACE {

const char* TargetNameForTarget() { return hwy::TargetName(HWY_TARGET); }

}  // namespace HWY_NAMESPACE
}  // namespace raggedattn
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace raggedattn {

HWY_EXPORT(TargetNameForTarget);

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

}  // namespace raggedattn
#endif  // HWY_ONCE
