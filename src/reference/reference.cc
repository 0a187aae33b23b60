#include "src/reference/reference.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "src/dtype.h"

namespace raggedattn {
namespace reference {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

double At(const TensorView& view, std::initializer_list<int64_t> index) {
  int64_t offset = 0;
  int d = 0;
  for (int64_t i : index) offset += i * view.strides[d++];
  if (view.dtype == DType::kI32) {
    return static_cast<const int32_t*>(view.data)[offset];
  }
  return LoadAsF32(view.data, view.dtype, offset);
}

std::vector<int64_t> AllRowsIfEmpty(const std::vector<int64_t>& rows,
                                    int64_t batch) {
  if (!rows.empty()) return rows;
  std::vector<int64_t> all(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b) all[b] = b;
  return all;
}

}  // namespace

Result Compute(const TensorView& query, const TensorView& key,
               const TensorView& value, const TensorView& sequence_start,
               const TensorView& sequence_end, const Options& options,
               const TensorView* softmax_aux,
               const std::vector<int64_t>& rows) {
  const int64_t batch = query.shape[0];
  const int64_t heads = query.shape[1];
  const int64_t dim = query.shape[2];
  const int64_t kv_heads = key.shape[2];
  const int64_t dim_v = value.shape[3];
  const int64_t group = heads / kv_heads;
  const double scale = options.softmax_scale.value_or(1.0 / std::sqrt(dim));
  const double cap = options.logits_soft_cap.value_or(0.0);

  Result result;
  result.batch = batch;
  result.num_qo_heads = heads;
  result.head_dim_v = dim_v;
  result.output.assign(static_cast<size_t>(batch * heads * dim_v), 0.0);
  result.lse.assign(static_cast<size_t>(batch * heads), 0.0);
  result.value_scale.assign(static_cast<size_t>(batch), 0.0);

  for (int64_t b : AllRowsIfEmpty(rows, batch)) {
    const int64_t start = static_cast<int64_t>(At(sequence_start, {b}));
    const int64_t end = static_cast<int64_t>(At(sequence_end, {b}));
    const int64_t position = end - 1;
    std::vector<int64_t> attended;
    for (int64_t j = start; j < end; ++j) {
      if (options.sliding_window) {
        const SlidingWindow& w = *options.sliding_window;
        // j - position is within [-S, S]: no overflow for any side.
        if (w.left >= 0 && position - j > w.left) continue;
        if (w.right >= 0 && j - position > w.right) continue;
      }
      attended.push_back(j);
    }
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t k = h / group;
      std::vector<double> logits;
      for (int64_t j : attended) {
        double dot = 0.0;
        for (int64_t d = 0; d < dim; ++d) {
          dot += At(query, {b, h, d}) * At(key, {b, j, k, d});
        }
        double x = scale * dot;
        if (cap > 0.0) x = cap * std::tanh(x / cap);
        logits.push_back(x);
      }
      std::vector<double> sinks;
      if (softmax_aux != nullptr) {
        const TensorView& aux = *softmax_aux;
        const int64_t num_sinks = aux.shape[aux.rank - 1];
        for (int64_t n = 0; n < num_sinks; ++n) {
          if (aux.rank == 1) {
            sinks.push_back(At(aux, {n}));
          } else if (aux.shape[0] == heads) {
            sinks.push_back(At(aux, {h, n}));
          } else {
            sinks.push_back(At(aux, {k, n}));
          }
        }
      }

      // exp(x - max) keeps float64 in range for logits of any size.
      double max = -kInf;
      for (double x : logits) max = std::max(max, x);
      for (double a : sinks) max = std::max(max, a);
      double* out = &result.output[(b * heads + h) * dim_v];
      double& lse = result.lse[b * heads + h];
      if (max == -kInf) {
        lse = -kInf;
        continue;
      }
      double z = 0.0;
      for (double x : logits) z += std::exp(x - max);
      for (double a : sinks) z += std::exp(a - max);
      for (size_t i = 0; i < attended.size(); ++i) {
        const double weight = std::exp(logits[i] - max) / z;
        for (int64_t d = 0; d < dim_v; ++d) {
          out[d] += weight * At(value, {b, attended[i], k, d});
        }
      }
      lse = max + std::log(z);
    }
    double value_scale = 0.0;
    for (int64_t j : attended) {
      for (int64_t k = 0; k < kv_heads; ++k) {
        for (int64_t d = 0; d < dim_v; ++d) {
          value_scale =
              std::max(value_scale, std::abs(At(value, {b, j, k, d})));
        }
      }
    }
    result.value_scale[b] = value_scale;
  }
  return result;
}

Error Compare(const Result& expected, const TensorView& output,
              const TensorView* lse, const std::vector<int64_t>& rows) {
  Error error;
  const int64_t heads = expected.num_qo_heads;
  const int64_t dim_v = expected.head_dim_v;
  for (int64_t b : AllRowsIfEmpty(rows, expected.batch)) {
    // An empty row must be exactly 0; any nonzero output counts in full.
    const double scale =
        expected.value_scale[b] > 0.0 ? expected.value_scale[b] : 1.0;
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t d = 0; d < dim_v; ++d) {
        const double got = At(output, {b, h, d});
        const double want = expected.output[(b * heads + h) * dim_v + d];
        const double e = std::abs(got - want) / scale;
        if (std::isnan(e)) return Error{NAN, NAN};
        error.output = std::max(error.output, e);
      }
      if (lse != nullptr) {
        const double got = At(*lse, {b, h});
        const double want = expected.lse[b * heads + h];
        double e;
        if (std::isnan(got)) return Error{NAN, NAN};
        if (std::isinf(want) || std::isinf(got)) {
          e = got == want ? 0.0 : kInf;
        } else {
          e = std::abs(got - want);
        }
        error.lse = std::max(error.lse, e);
      }
    }
  }
  return error;
}

double OutputTolerance(DType output_dtype) {
  switch (output_dtype) {
    case DType::kBF16:
      return 8e-3;
    case DType::kF16:
      return 2e-3;
    default:
      return 3e-5;
  }
}

}  // namespace reference
}  // namespace raggedattn
