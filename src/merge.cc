#include "src/merge.h"

#include <cmath>
#include <limits>
#include <memory>

#include "src/dtype.h"
#include "src/output_row.h"
#include "src/threading.h"

namespace raggedattn {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Returns the element offset of query head h's row of sink logits.
int64_t SinkOffset(const Problem& problem, int64_t head) {
  switch (problem.sink_layout) {
    case SinkLayout::kPerQoHead:
      return head * problem.sinks_stride_row;
    case SinkLayout::kPerKvHead:
      return head / problem.group_size * problem.sinks_stride_row;
    default:
      return 0;
  }
}

// Merges the states of one (row, head). `weights` has room for the row's
// chunks, `row_out` for head_dim_v floats.
void MergeHead(const Problem& problem, const RowPlan& row, int64_t b,
               int64_t head, const PartialStates& states, double* weights,
               float* row_out) {
  const int64_t heads = problem.num_qo_heads;
  const int64_t dim_v = problem.head_dim_v;

  // The common max over chunks and sinks keeps every exponent <= 0.
  double max = kNegInf;
  for (int64_t c = 0; c < row.num_chunks; ++c) {
    const double m = states.max[(row.first_chunk + c) * heads + head];
    if (m > max || std::isnan(m)) max = m;
  }
  const bool has_sinks = problem.sink_layout != SinkLayout::kNone;
  const int64_t sink_offset = has_sinks ? SinkOffset(problem, head) : 0;
  for (int64_t n = 0; has_sinks && n < problem.num_sinks; ++n) {
    const double a =
        LoadAsF32(problem.sinks, problem.sinks_dtype, sink_offset + n);
    if (a > max) max = a;
  }

  double denominator = 0.0;
  for (int64_t c = 0; c < row.num_chunks; ++c) {
    const int64_t state = (row.first_chunk + c) * heads + head;
    const double m = states.max[state];
    // An empty chunk (max -inf) weighs 0; exp(-inf - -inf) would be NaN.
    // The chunk with the max (every row of one chunk) weighs exactly 1.
    weights[c] = m == kNegInf ? 0.0 : m == max ? 1.0 : std::exp(m - max);
    denominator += weights[c] * states.sum[state];
  }
  for (int64_t n = 0; has_sinks && n < problem.num_sinks; ++n) {
    const double a =
        LoadAsF32(problem.sinks, problem.sinks_dtype, sink_offset + n);
    if (a != kNegInf) denominator += std::exp(a - max);
  }

  const int64_t out_offset =
      b * problem.output_stride_b + head * problem.output_stride_h;
  // Nothing attended and no finite sink: output 0, lse -inf.
  for (int64_t d = 0; d < dim_v; ++d) row_out[d] = 0.0f;
  if (max != kNegInf) {
    // Each chunk's weight is normalised before use, so the sum stays in f32
    // range and the output is rounded to its dtype only once, at the store.
    for (int64_t c = 0; c < row.num_chunks; ++c) {
      if (weights[c] == 0.0) continue;
      const float weight = static_cast<float>(weights[c] / denominator);
      const float* out =
          states.out + ((row.first_chunk + c) * heads + head) * dim_v;
      AddScaledRow(out, weight, dim_v, row_out);
    }
  }
  StoreOutputRow(row_out, dim_v, problem.output, problem.query_dtype,
                 out_offset);
  if (problem.lse != nullptr) {
    problem.lse[b * problem.lse_stride_b + head * problem.lse_stride_h] =
        static_cast<float>(max == kNegInf ? kNegInf
                                          : max + std::log(denominator));
  }
}

}  // namespace

void MergeAndWrite(const Problem& problem, const Plan& plan,
                   const PartialStates& states) {
  int64_t max_chunks = 0;
  for (const RowPlan& row : plan.rows) {
    if (row.num_chunks > max_chunks) max_chunks = row.num_chunks;
  }
  const int threads = problem.num_threads;
  // Per thread: chunk weights, then the output row in f32.
  const int64_t per_thread = max_chunks + (problem.head_dim_v + 1) / 2;
  const std::unique_ptr<double[]> scratch(
      new double[static_cast<size_t>(per_thread * threads)]);
  ParallelFor(threads, problem.batch, [&](int64_t b, int thread) {
    double* weights = scratch.get() + thread * per_thread;
    float* row_out = reinterpret_cast<float*>(weights + max_chunks);
    for (int64_t head = 0; head < problem.num_qo_heads; ++head) {
      MergeHead(problem, plan.rows[b], b, head, states, weights, row_out);
    }
  });
}

}  // namespace raggedattn
