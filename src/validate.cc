// Argument checks at the public boundary: every rule of docs/semantics.md
// "Bad input", each failure naming the argument, the index, the value and the
// rule, before anything is written.

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

#include "src/decode_kernel.h"
#include "src/dtype.h"
#include "src/plan.h"
#include "src/problem.h"
#include "src/threading.h"

namespace raggedattn {
namespace {

// Formats a double the way error messages show it: shortest round trip,
// "nan", "inf", "-inf".
std::string FormatDouble(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.17g", value);
  // Prefer the shortest representation that round-trips.
  for (int precision = 1; precision <= 17; ++precision) {
    char shorter[32];
    std::snprintf(shorter, sizeof(shorter), "%.*g", precision, value);
    if (std::stod(shorter) == value) return shorter;
  }
  return buffer;
}

[[noreturn]] void Fail(const std::string& message) {
  throw InvalidArgument(message);
}

const char* ShapeNames(const char* name) {
  const std::string n = name;
  if (n == "query") return "[batch, num_qo_heads, head_dim]";
  if (n == "key") return "[batch, seq_len, num_kv_heads, head_dim]";
  if (n == "value") return "[batch, seq_len, num_kv_heads, head_dim_v]";
  if (n == "output") return "[batch, num_qo_heads, head_dim_v]";
  if (n == "lse") return "[batch, num_qo_heads]";
  if (n == "softmax_aux") return "[num_sinks] or [num_heads, num_sinks]";
  return "[batch]";
}

// Checks null data, rank, non-negative extents, strides and that the largest
// byte offset fits in 64 bits.
void CheckView(const TensorView& view, const char* name, int min_rank,
               int max_rank) {
  if (view.rank < min_rank || view.rank > max_rank) {
    Fail(std::string(name) + ": rank " + std::to_string(view.rank) +
         ", expected " + ShapeNames(name));
  }
  if (view.data == nullptr) Fail(std::string(name) + ": data is null");
  unsigned __int128 max_offset = 0;
  for (int i = 0; i < view.rank; ++i) {
    if (view.shape[i] < 0) {
      Fail(std::string(name) + ": shape[" + std::to_string(i) +
           "] = " + std::to_string(view.shape[i]) + " must be >= 0");
    }
    if (view.strides[i] < 0) {
      Fail(std::string(name) + ": strides[" + std::to_string(i) +
           "] = " + std::to_string(view.strides[i]) + " must be >= 0");
    }
    if (view.shape[i] > 0) {
      max_offset += static_cast<unsigned __int128>(view.shape[i] - 1) *
                    static_cast<unsigned __int128>(view.strides[i]);
    }
  }
  if (view.strides[view.rank - 1] != 1) {
    Fail(std::string(name) + ": strides[" + std::to_string(view.rank - 1) +
         "] = " + std::to_string(view.strides[view.rank - 1]) +
         ", the innermost stride must be 1");
  }
  // Below 2^128 (at most four terms under 2^126 each); multiplying by the
  // element size could wrap, so divide the limit instead.
  const unsigned __int128 limit =
      static_cast<unsigned __int128>(std::numeric_limits<int64_t>::max()) /
      DTypeSize(view.dtype);
  if (max_offset > limit) {
    Fail(std::string(name) +
         ": the largest byte offset of its shape and strides exceeds 2^63");
  }
}

void CheckFloatDType(const TensorView& view, const char* name) {
  if (view.dtype != DType::kF32 && view.dtype != DType::kBF16 &&
      view.dtype != DType::kF16) {
    Fail(std::string(name) + ": dtype " + DTypeName(view.dtype) +
         ", expected f32, bf16 or f16");
  }
}

void CheckDType(const TensorView& view, const char* name, DType expected,
                const char* because) {
  if (view.dtype != expected) {
    Fail(std::string(name) + ": dtype " + DTypeName(view.dtype) +
         ", expected " + DTypeName(expected) + because);
  }
}

// Checks view.shape[dim] == expected, naming both sides.
void CheckExtent(const TensorView& view, const char* name, int dim,
                 const char* meaning, int64_t expected, const char* source) {
  if (view.shape[dim] != expected) {
    Fail(std::string(name) + ": shape[" + std::to_string(dim) +
         "] = " + std::to_string(view.shape[dim]) + " (" + meaning +
         ") differs from " + source + " = " + std::to_string(expected));
  }
}

void CheckPositive(int64_t extent, const char* name, int dim,
                   const char* meaning) {
  if (extent < 1) {
    Fail(std::string(name) + ": shape[" + std::to_string(dim) +
         "] = " + std::to_string(extent) + " (" + meaning + ") must be >= 1");
  }
}

void CheckShapes(const TensorView& query, const TensorView& key,
                 const TensorView& value, const TensorView& sequence_start,
                 const TensorView& sequence_end, const TensorView& output,
                 const TensorView* softmax_aux, const TensorView* maybe_lse) {
  CheckView(query, "query", 3, 3);
  CheckView(key, "key", 4, 4);
  CheckView(value, "value", 4, 4);
  CheckView(sequence_start, "sequence_start", 1, 1);
  CheckView(sequence_end, "sequence_end", 1, 1);
  CheckView(output, "output", 3, 3);
  if (softmax_aux != nullptr) CheckView(*softmax_aux, "softmax_aux", 1, 2);
  if (maybe_lse != nullptr) CheckView(*maybe_lse, "lse", 2, 2);

  CheckFloatDType(query, "query");
  CheckFloatDType(key, "key");
  CheckDType(value, "value", key.dtype, " (value must match key's dtype)");
  CheckDType(sequence_start, "sequence_start", DType::kI32, "");
  CheckDType(sequence_end, "sequence_end", DType::kI32, "");
  CheckDType(output, "output", query.dtype,
             " (output must match query's dtype)");
  if (softmax_aux != nullptr) CheckFloatDType(*softmax_aux, "softmax_aux");
  if (maybe_lse != nullptr) CheckDType(*maybe_lse, "lse", DType::kF32, "");

  const int64_t batch = query.shape[0];
  const int64_t num_qo_heads = query.shape[1];
  const int64_t head_dim = query.shape[2];
  CheckPositive(num_qo_heads, "query", 1, "num_qo_heads");
  CheckPositive(head_dim, "query", 2, "head_dim");
  CheckExtent(key, "key", 0, "batch", batch, "query shape[0]");
  CheckPositive(key.shape[2], "key", 2, "num_kv_heads");
  CheckExtent(key, "key", 3, "head_dim", head_dim, "query shape[2]");
  CheckExtent(value, "value", 0, "batch", batch, "query shape[0]");
  CheckExtent(value, "value", 1, "seq_len", key.shape[1], "key shape[1]");
  CheckExtent(value, "value", 2, "num_kv_heads", key.shape[2], "key shape[2]");
  CheckPositive(value.shape[3], "value", 3, "head_dim_v");
  const int64_t num_kv_heads = key.shape[2];
  if (num_qo_heads % num_kv_heads != 0) {
    Fail("query: shape[1] = " + std::to_string(num_qo_heads) +
         " (num_qo_heads) is not a multiple of key shape[2] = " +
         std::to_string(num_kv_heads) + " (num_kv_heads)");
  }
  CheckExtent(sequence_start, "sequence_start", 0, "batch", batch,
              "query shape[0]");
  CheckExtent(sequence_end, "sequence_end", 0, "batch", batch,
              "query shape[0]");
  CheckExtent(output, "output", 0, "batch", batch, "query shape[0]");
  CheckExtent(output, "output", 1, "num_qo_heads", num_qo_heads,
              "query shape[1]");
  CheckExtent(output, "output", 2, "head_dim_v", value.shape[3],
              "value shape[3]");
  if (maybe_lse != nullptr) {
    CheckExtent(*maybe_lse, "lse", 0, "batch", batch, "query shape[0]");
    CheckExtent(*maybe_lse, "lse", 1, "num_qo_heads", num_qo_heads,
                "query shape[1]");
  }
  if (softmax_aux != nullptr) {
    const TensorView& aux = *softmax_aux;
    CheckPositive(aux.shape[aux.rank - 1], "softmax_aux", aux.rank - 1,
                  "num_sinks");
    if (aux.rank == 2 && aux.shape[0] != num_qo_heads &&
        aux.shape[0] != num_kv_heads) {
      Fail("softmax_aux: shape[0] = " + std::to_string(aux.shape[0]) +
           " matches neither num_qo_heads = " + std::to_string(num_qo_heads) +
           " nor num_kv_heads = " + std::to_string(num_kv_heads));
    }
  }
}

void CheckOptions(const Options& options) {
  if (options.softmax_scale && !std::isfinite(*options.softmax_scale)) {
    Fail("softmax_scale = " + FormatDouble(*options.softmax_scale) +
         " must be finite");
  }
  if (options.logits_soft_cap && (!std::isfinite(*options.logits_soft_cap) ||
                                  *options.logits_soft_cap < 0)) {
    Fail("logits_soft_cap = " + FormatDouble(*options.logits_soft_cap) +
         " must be finite and >= 0 (0 means no cap)");
  }
  if (options.sliding_window) {
    if (options.sliding_window->left < -1) {
      Fail("sliding_window.left = " +
           std::to_string(options.sliding_window->left) +
           " must be >= -1 (-1 means unbounded)");
    }
    if (options.sliding_window->right < -1) {
      Fail("sliding_window.right = " +
           std::to_string(options.sliding_window->right) +
           " must be >= -1 (-1 means unbounded)");
    }
  }
  if (options.block_size && *options.block_size < 1) {
    Fail("block_size = " + std::to_string(*options.block_size) +
         " must be >= 1");
  }
  if (options.num_threads < 0) {
    Fail("num_threads = " + std::to_string(options.num_threads) +
         " must be >= 0 (0 means all cores)");
  }
}

void CheckSequences(const Problem& problem) {
  for (int64_t b = 0; b < problem.batch; ++b) {
    const int64_t start = problem.Start(b);
    const int64_t end = problem.End(b);
    if (start >= 0 && end <= problem.seq_len && start <= end) continue;
    const std::string index = "[" + std::to_string(b) + "] = ";
    if (start < 0) {
      Fail("sequence_start" + index + std::to_string(start) + " is negative");
    }
    if (end > problem.seq_len) {
      Fail("sequence_end" + index + std::to_string(end) + " exceeds seq_len " +
           std::to_string(problem.seq_len));
    }
    if (start > end) {
      Fail("sequence_start" + index + std::to_string(start) +
           " exceeds sequence_end" + index + std::to_string(end));
    }
  }
}

void CheckSinks(const TensorView& aux) {
  const int64_t rows = aux.rank == 2 ? aux.shape[0] : 1;
  const int64_t num_sinks = aux.shape[aux.rank - 1];
  const int64_t row_stride = aux.rank == 2 ? aux.strides[0] : 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t n = 0; n < num_sinks; ++n) {
      const float sink = LoadAsF32(aux.data, aux.dtype, r * row_stride + n);
      if (std::isnan(sink) || sink == std::numeric_limits<float>::infinity()) {
        const std::string index =
            aux.rank == 2
                ? "[" + std::to_string(r) + ", " + std::to_string(n) + "]"
                : "[" + std::to_string(n) + "]";
        Fail("softmax_aux" + index + " = " + FormatDouble(sink) +
             ": a sink logit must not be NaN or +inf");
      }
    }
  }
}

}  // namespace

Problem Validate(const TensorView& query, const TensorView& key,
                 const TensorView& value, const TensorView& sequence_start,
                 const TensorView& sequence_end, const TensorView& output,
                 const Options& options, const TensorView* softmax_aux,
                 const TensorView* maybe_lse) {
  CheckShapes(query, key, value, sequence_start, sequence_end, output,
              softmax_aux, maybe_lse);
  CheckOptions(options);

  Problem p;
  p.batch = query.shape[0];
  p.num_qo_heads = query.shape[1];
  p.head_dim = query.shape[2];
  p.seq_len = key.shape[1];
  p.num_kv_heads = key.shape[2];
  p.head_dim_v = value.shape[3];
  p.group_size = p.num_qo_heads / p.num_kv_heads;

  p.query = query.data;
  p.query_dtype = query.dtype;
  p.query_stride_b = query.strides[0];
  p.query_stride_h = query.strides[1];
  p.key = key.data;
  p.value = value.data;
  p.kv_dtype = key.dtype;
  p.key_stride_b = key.strides[0];
  p.key_stride_n = key.strides[1];
  p.key_stride_h = key.strides[2];
  p.value_stride_b = value.strides[0];
  p.value_stride_n = value.strides[1];
  p.value_stride_h = value.strides[2];
  p.sequence_start = static_cast<const int32_t*>(sequence_start.data);
  p.sequence_end = static_cast<const int32_t*>(sequence_end.data);
  p.sequence_start_stride = sequence_start.strides[0];
  p.sequence_end_stride = sequence_end.strides[0];
  p.output = output.data;
  p.output_stride_b = output.strides[0];
  p.output_stride_h = output.strides[1];
  if (maybe_lse != nullptr) {
    p.lse = static_cast<float*>(maybe_lse->data);
    p.lse_stride_b = maybe_lse->strides[0];
    p.lse_stride_h = maybe_lse->strides[1];
  }
  if (softmax_aux != nullptr) {
    const TensorView& aux = *softmax_aux;
    p.sinks = aux.data;
    p.sinks_dtype = aux.dtype;
    p.num_sinks = aux.shape[aux.rank - 1];
    if (aux.rank == 1) {
      p.sink_layout = SinkLayout::kShared;
    } else {
      // With MHA both layouts coincide; per-query-head reads the same rows.
      p.sink_layout = aux.shape[0] == p.num_qo_heads ? SinkLayout::kPerQoHead
                                                     : SinkLayout::kPerKvHead;
      p.sinks_stride_row = aux.strides[0];
    }
  }

  p.softmax_scale = static_cast<float>(
      options.softmax_scale.value_or(1.0 / std::sqrt(double(p.head_dim))));
  p.soft_cap = static_cast<float>(options.logits_soft_cap.value_or(0.0));
  if (options.sliding_window) {
    p.window_left = options.sliding_window->left;
    p.window_right = options.sliding_window->right;
  }
  // A token's key and value rows of every KV head, in bytes. A view with an
  // empty extent may name any other extents, so the product is formed in
  // double and capped; only its comparison with a tile's budget matters.
  const double row_bytes =
      static_cast<double>(p.num_kv_heads) *
      (static_cast<double>(p.head_dim) + static_cast<double>(p.head_dim_v)) *
      static_cast<double>(DTypeSize(p.kv_dtype));
  const int64_t token_bytes =
      row_bytes < 0x1p62 ? static_cast<int64_t>(row_bytes) : int64_t{1} << 62;
  p.block_size = options.block_size.value_or(DefaultBlockSize(
      p.group_size, p.window_left, token_bytes, DispatchedLanes(), CpuIsAmd()));
  p.num_threads =
      options.num_threads == 0 ? DefaultThreadCount() : options.num_threads;

  CheckSequences(p);
  if (softmax_aux != nullptr) CheckSinks(*softmax_aux);
  return p;
}

}  // namespace raggedattn
