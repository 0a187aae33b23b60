// docs/semantics.md "Bad input": every rule raises raggedattn::InvalidArgument
// (a std::invalid_argument) whose message names the argument, the index and
// the value, before anything is written to output or lse.

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "gtest/gtest.h"
#include "raggedattn/raggedattn.h"
#include "tests/test_util.h"

namespace raggedattn {
namespace test {
namespace {

static_assert(std::is_base_of_v<std::invalid_argument, InvalidArgument>,
              "bad input must reach callers as std::invalid_argument");

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();

// The arguments of one call: valid as built, then broken by one edit.
struct Call {
  Tensor query_data, key_data, value_data, start_data, end_data;
  Tensor output_data, lse_data, aux_data;
  TensorView query, key, value, sequence_start, sequence_end, output, lse, aux;
  Options options;
  bool with_aux = true;

  void Invoke() const {
    ragged_decode_attention(query, key, value, sequence_start, sequence_end,
                            output, options, with_aux ? &aux : nullptr, &lse);
  }
  void Validate() const {
    validate_arguments(query, key, value, sequence_start, sequence_end, output,
                       options, with_aux ? &aux : nullptr, &lse);
  }
};

// batch 4, num_qo_heads 8, num_kv_heads 2, head_dim 16, head_dim_v 8,
// seq_len 32, f32, sinks [8, 2]; output and lse hold kSentinel.
Call ValidCall() {
  std::mt19937_64 rng(7);
  Call c;
  c.query_data = Tensor(DType::kF32, {4, 8, 16});
  c.key_data = Tensor(DType::kF32, {4, 32, 2, 16});
  c.value_data = Tensor(DType::kF32, {4, 32, 2, 8});
  c.query_data.FillNormal(rng, 0.0, 1.0);
  c.key_data.FillNormal(rng, 0.0, 1.0);
  c.value_data.FillNormal(rng, 0.0, 1.0);
  c.start_data = Tensor(DType::kI32, {4});
  c.end_data = Tensor(DType::kI32, {4});
  const int starts[] = {0, 3, 5, 0};
  const int ends[] = {32, 10, 5, 32};
  for (int64_t b = 0; b < 4; ++b) {
    c.start_data.Set({b}, starts[b]);
    c.end_data.Set({b}, ends[b]);
  }
  c.output_data = Tensor(DType::kF32, {4, 8, 8});
  c.output_data.FillAll(kSentinel);
  c.lse_data = Tensor(DType::kF32, {4, 8});
  c.lse_data.FillAll(kSentinel);
  c.aux_data = Tensor(DType::kF32, {8, 2});
  c.aux_data.FillNormal(rng, 0.0, 1.0);
  c.query = c.query_data.view();
  c.key = c.key_data.view();
  c.value = c.value_data.view();
  c.sequence_start = c.start_data.view();
  c.sequence_end = c.end_data.view();
  c.output = c.output_data.view();
  c.lse = c.lse_data.view();
  c.aux = c.aux_data.view();
  return c;
}

struct BadCase {
  const char* rule;
  std::function<void(Call&)> edit;
  std::string message;
};

// Returns the message `call` throws, and checks the type, that
// validate_arguments agrees, and that nothing was written.
std::string ExpectRejected(const Call& call) {
  const Call untouched = ValidCall();
  std::string message;
  try {
    call.Invoke();
    ADD_FAILURE() << "accepted";
  } catch (const InvalidArgument& e) {
    message = e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-InvalidArgument: " << e.what();
  }
  EXPECT_THROW(call.Validate(), std::invalid_argument);
  try {
    call.Validate();
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(e.what(), message) << "validate_arguments disagrees";
  }
  EXPECT_TRUE(call.output_data.SameBytes(untouched.output_data))
      << "output written before the error";
  EXPECT_TRUE(call.lse_data.SameBytes(untouched.lse_data))
      << "lse written before the error";
  return message;
}

TEST(BadInput, ValidCallIsAccepted) {
  // Every rejection below comes from its one edit.
  const Call call = ValidCall();
  EXPECT_NO_THROW(call.Invoke());
  EXPECT_FALSE(call.output_data.SameBytes(ValidCall().output_data));
}

void ExpectAll(const std::vector<BadCase>& cases) {
  for (const BadCase& bad : cases) {
    SCOPED_TRACE(bad.rule);
    Call call = ValidCall();
    bad.edit(call);
    EXPECT_EQ(ExpectRejected(call), bad.message);
  }
}

TEST(BadInput, Ranks) {
  ExpectAll({
      {"query rank", [](Call& c) { c.query.rank = 2; },
       "query: rank 2, expected [batch, num_qo_heads, head_dim]"},
      {"key rank", [](Call& c) { c.key.rank = 3; },
       "key: rank 3, expected [batch, seq_len, num_kv_heads, head_dim]"},
      {"value rank", [](Call& c) { c.value.rank = 3; },
       "value: rank 3, expected [batch, seq_len, num_kv_heads, head_dim_v]"},
      {"sequence_start rank", [](Call& c) { c.sequence_start.rank = 2; },
       "sequence_start: rank 2, expected [batch]"},
      {"sequence_end rank", [](Call& c) { c.sequence_end.rank = 0; },
       "sequence_end: rank 0, expected [batch]"},
      {"output rank", [](Call& c) { c.output.rank = 4; },
       "output: rank 4, expected [batch, num_qo_heads, head_dim_v]"},
      {"lse rank", [](Call& c) { c.lse.rank = 1; },
       "lse: rank 1, expected [batch, num_qo_heads]"},
      {"softmax_aux rank", [](Call& c) { c.aux.rank = 3; },
       "softmax_aux: rank 3, expected [num_sinks] or [num_heads, num_sinks]"},
  });
}

TEST(BadInput, NullData) {
  ExpectAll({
      {"query", [](Call& c) { c.query.data = nullptr; }, "query: data is null"},
      {"key", [](Call& c) { c.key.data = nullptr; }, "key: data is null"},
      {"value", [](Call& c) { c.value.data = nullptr; }, "value: data is null"},
      {"sequence_start", [](Call& c) { c.sequence_start.data = nullptr; },
       "sequence_start: data is null"},
      {"sequence_end", [](Call& c) { c.sequence_end.data = nullptr; },
       "sequence_end: data is null"},
      {"output", [](Call& c) { c.output.data = nullptr; },
       "output: data is null"},
      {"lse", [](Call& c) { c.lse.data = nullptr; }, "lse: data is null"},
      {"softmax_aux", [](Call& c) { c.aux.data = nullptr; },
       "softmax_aux: data is null"},
  });
}

TEST(BadInput, ExtentsAndStrides) {
  ExpectAll({
      {"negative extent", [](Call& c) { c.key.shape[1] = -1; },
       "key: shape[1] = -1 must be >= 0"},
      {"negative stride", [](Call& c) { c.value.strides[1] = -5; },
       "value: strides[1] = -5 must be >= 0"},
      {"key innermost stride", [](Call& c) { c.key.strides[3] = 2; },
       "key: strides[3] = 2, the innermost stride must be 1"},
      {"query innermost stride", [](Call& c) { c.query.strides[2] = 0; },
       "query: strides[2] = 0, the innermost stride must be 1"},
      {"output innermost stride", [](Call& c) { c.output.strides[2] = 3; },
       "output: strides[2] = 3, the innermost stride must be 1"},
      {"lse innermost stride", [](Call& c) { c.lse.strides[1] = 2; },
       "lse: strides[1] = 2, the innermost stride must be 1"},
      {"sequence_start stride",
       [](Call& c) { c.sequence_start.strides[0] = 2; },
       "sequence_start: strides[0] = 2, the innermost stride must be 1"},
      {"softmax_aux innermost stride", [](Call& c) { c.aux.strides[1] = 4; },
       "softmax_aux: strides[1] = 4, the innermost stride must be 1"},
      {"byte offsets past 2^63",
       [](Call& c) { c.key.strides[0] = int64_t{1} << 62; },
       "key: the largest byte offset of its shape and strides exceeds 2^63"},
      // (2^63 - 2)^2 + 4 * (2^63 - 1) = 2^126: times 4 bytes, exactly 2^128,
      // which a 128-bit product would wrap to 0.
      {"byte offsets wrapping 2^128",
       [](Call& c) {
         c.key.shape[0] = kInt64Max;
         c.key.strides[0] = kInt64Max - 1;
         c.key.shape[1] = 5;
         c.key.strides[1] = kInt64Max;
         c.key.shape[2] = 1;
         c.key.shape[3] = 1;
       },
       "key: the largest byte offset of its shape and strides exceeds 2^63"},
  });
}

TEST(BadInput, DTypes) {
  ExpectAll({
      {"query i32", [](Call& c) { c.query.dtype = DType::kI32; },
       "query: dtype i32, expected f32, bf16 or f16"},
      {"key i32", [](Call& c) { c.key.dtype = DType::kI32; },
       "key: dtype i32, expected f32, bf16 or f16"},
      {"value differs from key", [](Call& c) { c.value.dtype = DType::kBF16; },
       "value: dtype bf16, expected f32 (value must match key's dtype)"},
      {"sequence_start f32",
       [](Call& c) { c.sequence_start.dtype = DType::kF32; },
       "sequence_start: dtype f32, expected i32"},
      {"sequence_end f16", [](Call& c) { c.sequence_end.dtype = DType::kF16; },
       "sequence_end: dtype f16, expected i32"},
      {"output differs from query",
       [](Call& c) { c.output.dtype = DType::kF16; },
       "output: dtype f16, expected f32 (output must match query's dtype)"},
      {"lse bf16", [](Call& c) { c.lse.dtype = DType::kBF16; },
       "lse: dtype bf16, expected f32"},
      {"softmax_aux i32", [](Call& c) { c.aux.dtype = DType::kI32; },
       "softmax_aux: dtype i32, expected f32, bf16 or f16"},
  });
}

TEST(BadInput, ShapesThatDoNotFit) {
  ExpectAll({
      {"no query heads", [](Call& c) { c.query.shape[1] = 0; },
       "query: shape[1] = 0 (num_qo_heads) must be >= 1"},
      {"empty head_dim", [](Call& c) { c.query.shape[2] = 0; },
       "query: shape[2] = 0 (head_dim) must be >= 1"},
      {"key batch", [](Call& c) { c.key.shape[0] = 3; },
       "key: shape[0] = 3 (batch) differs from query shape[0] = 4"},
      {"no kv heads", [](Call& c) { c.key.shape[2] = 0; },
       "key: shape[2] = 0 (num_kv_heads) must be >= 1"},
      {"key head_dim", [](Call& c) { c.key.shape[3] = 15; },
       "key: shape[3] = 15 (head_dim) differs from query shape[2] = 16"},
      {"value batch", [](Call& c) { c.value.shape[0] = 5; },
       "value: shape[0] = 5 (batch) differs from query shape[0] = 4"},
      {"value seq_len", [](Call& c) { c.value.shape[1] = 31; },
       "value: shape[1] = 31 (seq_len) differs from key shape[1] = 32"},
      {"value kv heads", [](Call& c) { c.value.shape[2] = 1; },
       "value: shape[2] = 1 (num_kv_heads) differs from key shape[2] = 2"},
      {"empty head_dim_v", [](Call& c) { c.value.shape[3] = 0; },
       "value: shape[3] = 0 (head_dim_v) must be >= 1"},
      {"heads not a multiple",
       [](Call& c) {
         c.key.shape[2] = 3;
         c.value.shape[2] = 3;
       },
       "query: shape[1] = 8 (num_qo_heads) is not a multiple of key "
       "shape[2] = 3 (num_kv_heads)"},
      {"sequence_start batch", [](Call& c) { c.sequence_start.shape[0] = 3; },
       "sequence_start: shape[0] = 3 (batch) differs from query shape[0] = 4"},
      {"sequence_end batch", [](Call& c) { c.sequence_end.shape[0] = 2; },
       "sequence_end: shape[0] = 2 (batch) differs from query shape[0] = 4"},
      {"output batch", [](Call& c) { c.output.shape[0] = 3; },
       "output: shape[0] = 3 (batch) differs from query shape[0] = 4"},
      {"output heads", [](Call& c) { c.output.shape[1] = 4; },
       "output: shape[1] = 4 (num_qo_heads) differs from query shape[1] = 8"},
      {"output head_dim_v", [](Call& c) { c.output.shape[2] = 16; },
       "output: shape[2] = 16 (head_dim_v) differs from value shape[3] = 8"},
      {"lse batch", [](Call& c) { c.lse.shape[0] = 2; },
       "lse: shape[0] = 2 (batch) differs from query shape[0] = 4"},
      {"lse heads", [](Call& c) { c.lse.shape[1] = 7; },
       "lse: shape[1] = 7 (num_qo_heads) differs from query shape[1] = 8"},
      {"no sinks", [](Call& c) { c.aux.shape[1] = 0; },
       "softmax_aux: shape[1] = 0 (num_sinks) must be >= 1"},
      {"no sinks, shared layout",
       [](Call& c) {
         c.aux.rank = 1;
         c.aux.shape[0] = 0;
         c.aux.strides[0] = 1;
       },
       "softmax_aux: shape[0] = 0 (num_sinks) must be >= 1"},
      {"sink rows neither Hq nor Hkv", [](Call& c) { c.aux.shape[0] = 3; },
       "softmax_aux: shape[0] = 3 matches neither num_qo_heads = 8 nor "
       "num_kv_heads = 2"},
  });
}

TEST(BadInput, SequenceRanges) {
  ExpectAll({
      {"negative start", [](Call& c) { c.start_data.Set({2}, -1); },
       "sequence_start[2] = -1 is negative"},
      {"end past seq_len", [](Call& c) { c.end_data.Set({3}, 9000); },
       "sequence_end[3] = 9000 exceeds seq_len 32"},
      {"end one past seq_len", [](Call& c) { c.end_data.Set({0}, 33); },
       "sequence_end[0] = 33 exceeds seq_len 32"},
      {"start after end", [](Call& c) { c.start_data.Set({1}, 11); },
       "sequence_start[1] = 11 exceeds sequence_end[1] = 10"},
      {"negative end", [](Call& c) { c.end_data.Set({0}, -4); },
       "sequence_start[0] = 0 exceeds sequence_end[0] = -4"},
  });
}

TEST(BadInput, Options) {
  ExpectAll({
      {"NaN scale", [](Call& c) { c.options.softmax_scale = kNaN; },
       "softmax_scale = nan must be finite"},
      {"infinite scale", [](Call& c) { c.options.softmax_scale = kInf; },
       "softmax_scale = inf must be finite"},
      {"-inf scale", [](Call& c) { c.options.softmax_scale = -kInf; },
       "softmax_scale = -inf must be finite"},
      {"negative cap", [](Call& c) { c.options.logits_soft_cap = -1.5; },
       "logits_soft_cap = -1.5 must be finite and >= 0 (0 means no cap)"},
      {"infinite cap", [](Call& c) { c.options.logits_soft_cap = kInf; },
       "logits_soft_cap = inf must be finite and >= 0 (0 means no cap)"},
      {"NaN cap", [](Call& c) { c.options.logits_soft_cap = kNaN; },
       "logits_soft_cap = nan must be finite and >= 0 (0 means no cap)"},
      {"window left",
       [](Call& c) {
         c.options.sliding_window = {-2, 0};
       },
       "sliding_window.left = -2 must be >= -1 (-1 means unbounded)"},
      {"window right",
       [](Call& c) {
         c.options.sliding_window = {4, -7};
       },
       "sliding_window.right = -7 must be >= -1 (-1 means unbounded)"},
      {"block_size 0", [](Call& c) { c.options.block_size = 0; },
       "block_size = 0 must be >= 1"},
      {"negative block_size", [](Call& c) { c.options.block_size = -3; },
       "block_size = -3 must be >= 1"},
      {"negative num_threads", [](Call& c) { c.options.num_threads = -1; },
       "num_threads = -1 must be >= 0 (0 means all cores)"},
  });
}

TEST(BadInput, SinkLogits) {
  ExpectAll({
      {"NaN sink",
       [](Call& c) {
         c.aux_data.Set({3, 1}, kNaN);
       },
       "softmax_aux[3, 1] = nan: a sink logit must not be NaN or +inf"},
      {"+inf sink",
       [](Call& c) {
         c.aux_data.Set({7, 0}, kInf);
       },
       "softmax_aux[7, 0] = inf: a sink logit must not be NaN or +inf"},
      {"+inf sink, shared layout",
       [](Call& c) {
         c.aux_data = Tensor(DType::kF32, {3});
         c.aux_data.FillAll(0.5);
         c.aux_data.Set({2}, kInf);
         c.aux = c.aux_data.view();
       },
       "softmax_aux[2] = inf: a sink logit must not be NaN or +inf"},
      {"NaN sink in bf16, per-KV-head layout",
       [](Call& c) {
         c.aux_data = Tensor(DType::kBF16, {2, 3});
         c.aux_data.FillAll(-1.0);
         c.aux_data.Set({1, 2}, kNaN);
         c.aux = c.aux_data.view();
       },
       "softmax_aux[1, 2] = nan: a sink logit must not be NaN or +inf"},
      {"+inf sink in f16",
       [](Call& c) {
         c.aux_data = Tensor(DType::kF16, {8, 1});
         c.aux_data.FillAll(2.0);
         c.aux_data.Set({5, 0}, kInf);
         c.aux = c.aux_data.view();
       },
       "softmax_aux[5, 0] = inf: a sink logit must not be NaN or +inf"},
  });
}

// Values at the edge of each rule that the contract accepts.
TEST(BadInput, EdgesThatAreValid) {
  const std::vector<std::function<void(Call&)>> edits = {
      [](Call& c) { c.options.softmax_scale = 0.0; },
      [](Call& c) { c.options.softmax_scale = -2.0; },
      [](Call& c) { c.options.logits_soft_cap = 0.0; },
      [](Call& c) {
        c.options.sliding_window = {-1, -1};
      },
      [](Call& c) {
        c.options.sliding_window = {0, 0};
      },
      [](Call& c) {
        c.options.sliding_window = {kInt64Max, kInt64Max};
      },
      [](Call& c) { c.options.block_size = 1; },
      [](Call& c) { c.options.num_threads = 0; },
      [](Call& c) {
        c.aux_data.Set({0, 0}, -kInf);
      },
      [](Call& c) { c.with_aux = false; },
      [](Call& c) {  // every row empty at the end of the cache
        for (int64_t b = 0; b < 4; ++b) {
          c.start_data.Set({b}, 32);
          c.end_data.Set({b}, 32);
        }
      },
      [](Call& c) {  // stride 0: every row reads the same query
        c.query.strides[0] = 0;
      },
  };
  for (size_t i = 0; i < edits.size(); ++i) {
    Call call = ValidCall();
    edits[i](call);
    EXPECT_NO_THROW(call.Invoke()) << "edit " << i;
  }
}

// An empty batch and an empty cache are valid and write nothing.
TEST(BadInput, EmptyBatchAndCacheAreValid) {
  Case empty_batch;
  empty_batch.Batch(0).Heads(4, 2).SeqLen(10);
  const Inputs batch_inputs = MakeInputs(empty_batch);
  EXPECT_NO_THROW(RunLibrary(empty_batch, batch_inputs));

  Case empty_cache;
  empty_cache.Batch(3).Heads(4, 2).SeqLen(0).Ranges({0, 0, 0}, {0, 0, 0});
  const Inputs cache_inputs = MakeInputs(empty_cache);
  const Outputs got = RunLibrary(empty_cache, cache_inputs);
  for (int64_t b = 0; b < 3; ++b) {
    EXPECT_EQ(got.lse.Get({b, 0}), -kInf);
    EXPECT_EQ(got.output.Get({b, 3, 5}), 0.0);
  }
}

}  // namespace
}  // namespace test
}  // namespace raggedattn
