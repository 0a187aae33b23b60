// Runs a plan's work items on the best SIMD target of this CPU.

#ifndef RAGGEDATTN_SRC_DECODE_KERNEL_H_
#define RAGGEDATTN_SRC_DECODE_KERNEL_H_

#include <cstdint>

#include "src/plan.h"
#include "src/problem.h"

namespace raggedattn {

// Partial softmax states of every chunk, one per (chunk, query head):
//   max  [num_chunks, num_qo_heads]              running max of the logits
//   sum  [num_chunks, num_qo_heads]              sum of exp(logit - max)
//   out  [num_chunks, num_qo_heads, head_dim_v]  unnormalised output
// A chunk whose logits are all -inf has max = -inf, sum = 0, out = 0.
struct PartialStates {
  float* max = nullptr;
  float* sum = nullptr;
  float* out = nullptr;
};

// Computes the partial states of every work item of `plan`, on
// problem.num_threads threads. Dispatches once to the best SIMD target.
void RunPlan(const Problem& problem, const Plan& plan,
             const PartialStates& states);

// RunPlan for one KV dtype each; defined in the translation units generated
// from decode_kernel_dtype.cc.in.
void RunPlanBF16(const Problem& problem, const Plan& plan,
                 const PartialStates& states);
void RunPlanF16(const Problem& problem, const Plan& plan,
                const PartialStates& states);
void RunPlanF32(const Problem& problem, const Plan& plan,
                const PartialStates& states);

// Returns the name of the SIMD target RunPlan dispatches to.
const char* DispatchedTargetName();

}  // namespace raggedattn

#endif  // RAGGEDATTN_SRC_DECODE_KERNEL_H_
