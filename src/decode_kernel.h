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
// Returns the floats per vector of that target.
int DispatchedLanes();

// Whether the AVX-512 kernels compute bf16 x bf16 dot products with
// AVX512-BF16 (vdpbf16ps): the CPU has it and it is allowed. It is allowed
// from the start where CpuPrefersBf16DotProducts(); tests switch it with
// AllowBf16DotProducts to check both kernels on one CPU, and calls must not
// run meanwhile.
bool Bf16DotProductsAllowed();
bool CpuHasBf16DotProducts();
void AllowBf16DotProducts(bool allowed);
// Whether vdpbf16ps is faster here than widening the keys to f32 and using
// FMAs: on AMD's cores (Zen 5, measured), not on Intel's. A Xeon (family 6,
// model 207) ran it at about half an instruction per cycle against two FMAs
// per cycle; there bench in L2 (`--small --context 256 --batch 1 --threads
// 1`, two runs each way) computed Llama-3-8B at 20.2-20.4 GB/s without it
// and 17.2-17.7 with it, Qwen2.5-7B at 12.3-12.4 and 10.2-10.4, and
// Falcon-7B at 39-40% of FMA peak and 30-34%. On an AMD EPYC (family 26) it
// raised Falcon-7B from 51-56% to 66-67% of FMA peak.
bool CpuPrefersBf16DotProducts();

// Whether the CPU is AMD's. Two defaults differ between AMD's cores and
// Intel's, as measured on an AMD EPYC (Zen 5) and an Intel Xeon (family 6,
// model 207): the AVX512-BF16 dot products above and the length of tiles
// (DefaultBlockSize).
bool CpuIsAmd();

// Counts the RunPlan calls that used the AVX512-BF16 dot products, so tests
// can tell which kernel ran.
void CountBf16DotProductRun();
int64_t Bf16DotProductRuns();

}  // namespace raggedattn

#endif  // RAGGEDATTN_SRC_DECODE_KERNEL_H_
