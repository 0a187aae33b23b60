// The validated, normalised description of one ragged_decode_attention call.
//
// validate.cc builds it from the public arguments; everything below the public
// boundary (plan, kernels, merge) reads only this, never a TensorView.

#ifndef RAGGEDATTN_SRC_PROBLEM_H_
#define RAGGEDATTN_SRC_PROBLEM_H_

#include <cstdint>

#include "raggedattn/raggedattn.h"

namespace raggedattn {

// Which row of softmax_aux a query head reads.
enum class SinkLayout { kNone, kPerQoHead, kPerKvHead, kShared };

struct Problem {
  int64_t batch = 0;
  int64_t num_qo_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t group_size = 0;  // num_qo_heads / num_kv_heads
  int64_t head_dim = 0;
  int64_t head_dim_v = 0;
  int64_t seq_len = 0;

  // [batch, num_qo_heads, head_dim], strides in elements.
  const void* query = nullptr;
  DType query_dtype = DType::kF32;
  int64_t query_stride_b = 0;
  int64_t query_stride_h = 0;

  // [batch, seq_len, num_kv_heads, head_dim] and [..., head_dim_v].
  const void* key = nullptr;
  const void* value = nullptr;
  DType kv_dtype = DType::kF32;
  int64_t key_stride_b = 0;
  int64_t key_stride_n = 0;
  int64_t key_stride_h = 0;
  int64_t value_stride_b = 0;
  int64_t value_stride_n = 0;
  int64_t value_stride_h = 0;

  // [batch] each.
  const int32_t* sequence_start = nullptr;
  const int32_t* sequence_end = nullptr;
  int64_t sequence_start_stride = 0;
  int64_t sequence_end_stride = 0;

  // [batch, num_qo_heads, head_dim_v] in query_dtype.
  void* output = nullptr;
  int64_t output_stride_b = 0;
  int64_t output_stride_h = 0;

  // Optional [batch, num_qo_heads] f32.
  float* lse = nullptr;
  int64_t lse_stride_b = 0;
  int64_t lse_stride_h = 0;

  // Optional sink logits: row r has num_sinks entries.
  SinkLayout sink_layout = SinkLayout::kNone;
  const void* sinks = nullptr;
  DType sinks_dtype = DType::kF32;
  int64_t num_sinks = 0;
  int64_t sinks_stride_row = 0;

  float softmax_scale = 1.0f;
  float soft_cap = 0.0f;      // 0: no cap
  int64_t window_left = -1;   // -1: unbounded
  int64_t window_right = -1;  // -1: unbounded
  int64_t block_size = 0;     // tokens per tile, >= 1 after validation
  int num_threads = 1;        // >= 1 after validation

  int64_t Start(int64_t b) const {
    return sequence_start[b * sequence_start_stride];
  }
  int64_t End(int64_t b) const { return sequence_end[b * sequence_end_stride]; }
};

// Checks every argument (docs/semantics.md "Bad input") and returns the
// normalised problem. Throws InvalidArgument naming argument, index, value and
// rule. Reads sequence_start/end and softmax_aux, writes nothing.
Problem Validate(const TensorView& query, const TensorView& key,
                 const TensorView& value, const TensorView& sequence_start,
                 const TensorView& sequence_end, const TensorView& output,
                 const Options& options, const TensorView* softmax_aux,
                 const TensorView* maybe_lse);

}  // namespace raggedattn

#endif  // RAGGEDATTN_SRC_PROBLEM_H_
