// Combines a row's partial softmax states with its sinks into the output.

#ifndef RAGGEDATTN_SRC_MERGE_H_
#define RAGGEDATTN_SRC_MERGE_H_

#include "src/decode_kernel.h"
#include "src/plan.h"
#include "src/problem.h"

namespace raggedattn {

// Writes output (and lse, when requested) of every row from the partial
// states, merging each row's chunks in position order so the result does not
// depend on which thread computed which chunk.
void MergeAndWrite(const Problem& problem, const Plan& plan,
                   const PartialStates& states);

}  // namespace raggedattn

#endif  // RAGGEDATTN_SRC_MERGE_H_
