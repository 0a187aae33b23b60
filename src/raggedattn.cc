// The public entry point: validate, plan, run, merge.

#include "raggedattn/raggedattn.h"

#include <memory>
#include <new>

#include "src/decode_kernel.h"
#include "src/merge.h"
#include "src/plan.h"
#include "src/problem.h"

namespace raggedattn {

void validate_arguments(const TensorView& query, const TensorView& key,
                        const TensorView& value,
                        const TensorView& sequence_start,
                        const TensorView& sequence_end,
                        const TensorView& output, const Options& options,
                        const TensorView* softmax_aux,
                        const TensorView* maybe_lse) {
  Validate(query, key, value, sequence_start, sequence_end, output, options,
           softmax_aux, maybe_lse);
}

void ragged_decode_attention(const TensorView& query, const TensorView& key,
                             const TensorView& value,
                             const TensorView& sequence_start,
                             const TensorView& sequence_end,
                             const TensorView& output, const Options& options,
                             const TensorView* softmax_aux,
                             const TensorView* maybe_lse) {
  const Problem problem =
      Validate(query, key, value, sequence_start, sequence_end, output, options,
               softmax_aux, maybe_lse);
  try {
    const Plan plan = MakePlan(problem);
    const size_t num_states =
        plan.chunks.size() * static_cast<size_t>(problem.num_qo_heads);
    // Uninitialised: the kernel writes every state before the merge reads it.
    const size_t dim_v = static_cast<size_t>(problem.head_dim_v);
    const std::unique_ptr<float[]> buffer(new float[num_states * (dim_v + 2)]);
    const PartialStates states{buffer.get(), buffer.get() + num_states,
                               buffer.get() + 2 * num_states};
    RunPlan(problem, plan, states);
    MergeAndWrite(problem, plan, states);
  } catch (const std::bad_alloc&) {
    throw RuntimeError("ragged_decode_attention: out of memory for the plan");
  }
}

const char* active_simd_target() { return DispatchedTargetName(); }

}  // namespace raggedattn
