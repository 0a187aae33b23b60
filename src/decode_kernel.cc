// Dispatch table of the decode kernel: decode_kernel-inl.h compiled once per
// SIMD target, and RunPlan choosing among them once per call.

#include "src/decode_kernel.h"

#include <algorithm>
#include <memory>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/decode_kernel.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "src/decode_kernel-inl.h"
#include "src/threading.h"

HWY_BEFORE_NAMESPACE();
namespace raggedattn {
namespace HWY_NAMESPACE {

template <typename T, int64_t kDim, int64_t kDimV>
void RunPlanAs(const Problem& problem, const Plan& plan,
               const PartialStates& states) {
  int64_t max_tile = 1;
  for (const Chunk& chunk : plan.chunks) {
    max_tile = std::max(max_tile, std::min(chunk.end - chunk.begin,
                                           plan.block_size));
  }
  const int64_t num_items = plan.NumWorkItems();
  const int threads = static_cast<int>(
      std::min<int64_t>(problem.num_threads, std::max<int64_t>(num_items, 1)));
  const int64_t per_thread = ScratchFloats(problem, max_tile);
  // Uninitialised: every element is written before it is read.
  const std::unique_ptr<float[]> scratch(
      new float[static_cast<size_t>(per_thread * threads)]);
  ParallelFor(threads, num_items, [&](int64_t item, int thread) {
    const Scratch s =
        CarveScratch(problem, max_tile, scratch.get() + thread * per_thread);
    RunWorkItem<T, kDim, kDimV>(problem, plan, item, s, states);
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

void RunPlanForTarget(const Problem& problem, const Plan& plan,
                      const PartialStates& states) {
  switch (problem.kv_dtype) {
    case DType::kBF16:
      return RunPlanForDims<hwy::bfloat16_t>(problem, plan, states);
    case DType::kF16:
      return RunPlanForDims<hwy::float16_t>(problem, plan, states);
    default:
      return RunPlanForDims<float>(problem, plan, states);
  }
}

const char* TargetNameForTarget() { return hwy::TargetName(HWY_TARGET); }

}  // namespace HWY_NAMESPACE
}  // namespace raggedattn
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace raggedattn {

HWY_EXPORT(RunPlanForTarget);
HWY_EXPORT(TargetNameForTarget);

void RunPlan(const Problem& problem, const Plan& plan,
             const PartialStates& states) {
  HWY_DYNAMIC_DISPATCH(RunPlanForTarget)(problem, plan, states);
}

const char* DispatchedTargetName() {
  return HWY_DYNAMIC_DISPATCH(TargetNameForTarget)();
}

}  // namespace raggedattn
#endif  // HWY_ONCE
