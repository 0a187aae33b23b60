// Benchmark workloads: random KV caches of a preset's shape with ragged
// sequence lengths, laid out in copies that together exceed the last-level
// cache so every call reads from memory, as decode does in serving.

#ifndef RAGGEDATTN_TOOLS_WORKLOAD_H_
#define RAGGEDATTN_TOOLS_WORKLOAD_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "raggedattn/raggedattn.h"
#include "src/reference/reference.h"
#include "tools/presets.h"
#include "tools/probes.h"

namespace raggedattn {
namespace bench {

// Fills `count` elements of `dtype` at `data` with approximately standard
// normal values (a sum of four uniforms), rounded to the dtype. The values
// depend only on seed and count, not on num_threads.
void FillRandomNormal(DType dtype, void* data, size_t count, uint64_t seed,
                      int num_threads);

// A large buffer of random normal values of one dtype, allocated once and
// shared by every workload of a run: generating gigabytes per case would cost
// more than measuring it.
class RandomPool {
 public:
  RandomPool(DType dtype, size_t bytes, uint64_t seed, int num_threads);
  ~RandomPool();
  RandomPool(const RandomPool&) = delete;
  RandomPool& operator=(const RandomPool&) = delete;

  DType dtype() const { return dtype_; }
  size_t bytes() const { return bytes_; }
  const uint8_t* data() const { return data_; }

 private:
  DType dtype_;
  size_t bytes_;
  uint8_t* data_;
};

// One benchmark case: a preset at a batch size with sequence lengths drawn
// uniformly from [min_length, max_length].
struct CaseSpec {
  Preset preset;
  int64_t batch = 1;
  int64_t min_length = 1;
  int64_t max_length = 1;
  DType dtype = DType::kBF16;  // query, key and value
  int num_threads = 1;
  uint64_t seed = 1;
};

// Returns the pool bytes a case needs for a working set of at least
// min_working_set bytes (several copies when one is smaller).
size_t PoolBytesFor(const CaseSpec& spec, size_t min_working_set);

// A case laid out in a pool. Rows are packed one after another in a single
// cache buffer (batch stride 0, ragged ranges given by sequence_start and
// sequence_end), and only attended positions are stored, so a copy holds
// exactly the bytes one call reads. Calls rotate through the copies.
class Workload {
 public:
  // Uses as many copies as it takes to reach min_working_set bytes (at least
  // one), within the pool. Throws RuntimeError when one copy does not fit.
  Workload(const CaseSpec& spec, const RandomPool& pool,
           size_t min_working_set);

  const CaseSpec& spec() const { return spec_; }
  int num_copies() const { return num_copies_; }
  // Key and value bytes one call reads: attended tokens only.
  size_t kv_bytes() const { return kv_bytes_; }
  size_t working_set_bytes() const { return kv_bytes_ * num_copies_; }
  int64_t attended_tokens() const { return attended_tokens_; }
  // Kernel flops of one call: 2 * (head_dim + head_dim_v) per query head and
  // attended token (the two dot products; softmax is not counted).
  double flops() const;

  // Runs ragged_decode_attention on copy `copy`.
  void Run(int copy);

  // Returns the key and value bytes of copy `copy`, for the read probe.
  std::vector<ByteSpan> KvSpans(int copy) const;

  // Runs copy 0 and returns its error against the float64 reference on
  // `num_rows` rows drawn at random (all rows when the batch is smaller) and,
  // when checking all heads of those rows would take long, on a random run
  // of KV heads with their query groups.
  reference::Error Check(int num_rows);

 private:
  // The views of one call other than key and value.
  struct CallViews {
    TensorView query, sequence_start, sequence_end, output, lse, sinks;
  };

  CallViews Views();
  TensorView KeyView(int copy) const;
  TensorView ValueView(int copy) const;

  CaseSpec spec_;
  Options options_;
  const uint8_t* pool_ = nullptr;
  size_t copy_bytes_ = 0;
  size_t key_bytes_ = 0;
  int num_copies_ = 1;
  int64_t stored_tokens_ = 0;  // positions of one copy's packed buffer
  int64_t attended_tokens_ = 0;
  size_t kv_bytes_ = 0;
  std::vector<int32_t> sequence_start_;
  std::vector<int32_t> sequence_end_;
  std::vector<uint8_t> query_;
  std::vector<float> sinks_;
  std::vector<uint8_t> output_;
  std::vector<float> lse_;
};

}  // namespace bench
}  // namespace raggedattn

#endif  // RAGGEDATTN_TOOLS_WORKLOAD_H_
