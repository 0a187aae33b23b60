// docs/semantics.md "Determinism": bitwise identical results for every
// num_threads, from run to run, and for a row whatever the rest of its batch
// holds. Checked on every SIMD target.

#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "raggedattn/raggedattn.h"
#include "tests/test_util.h"

namespace raggedattn {
namespace test {
namespace {

// Returns true when row `row_a` of `a` and row `row_b` of `b` hold bitwise
// the same elements (the tensors' dimension 0 is the batch).
bool SameRow(const Tensor& a, int64_t row_a, const Tensor& b, int64_t row_b) {
  std::vector<int64_t> inner(a.shape().begin() + 1, a.shape().end());
  bool same = true;
  ForEachIndex(inner, [&](const std::vector<int64_t>& index) {
    std::vector<int64_t> at_a = {row_a};
    std::vector<int64_t> at_b = {row_b};
    at_a.insert(at_a.end(), index.begin(), index.end());
    at_b.insert(at_b.end(), index.begin(), index.end());
    // Widening to double is exact and keeps the sign of zero.
    const double x = a.Get(at_a);
    const double y = b.Get(at_b);
    same = same && std::memcmp(&x, &y, sizeof(x)) == 0;
  });
  return same;
}

// Copies batch row `from_b` of `from` (query, the first `positions` key and
// value positions, range and nothing else) into row `to_b` of `to`.
void CopyRow(const Inputs& from, int64_t from_b, int64_t positions, Inputs* to,
             int64_t to_b) {
  const std::vector<int64_t>& q = from.query.shape();
  ForEachIndex({q[1], q[2]}, [&](const std::vector<int64_t>& i) {
    to->query.Set({to_b, i[0], i[1]}, from.query.Get({from_b, i[0], i[1]}));
  });
  const std::vector<int64_t>& k = from.key.shape();
  ForEachIndex({positions, k[2], k[3]}, [&](const std::vector<int64_t>& i) {
    to->key.Set({to_b, i[0], i[1], i[2]},
                from.key.Get({from_b, i[0], i[1], i[2]}));
  });
  const std::vector<int64_t>& v = from.value.shape();
  ForEachIndex({positions, v[2], v[3]}, [&](const std::vector<int64_t>& i) {
    to->value.Set({to_b, i[0], i[1], i[2]},
                  from.value.Get({from_b, i[0], i[1], i[2]}));
  });
  to->sequence_start.Set({to_b}, from.sequence_start.Get({from_b}));
  to->sequence_end.Set({to_b}, from.sequence_end.Get({from_b}));
}

// Rows long enough to be cut into several chunks, next to short and empty
// ones, so threads really do split rows and finish in varying order.
Case ThreadingCase(uint64_t seed) {
  Case c;
  c.Batch(6).Heads(8, 2).Dims(64, 64).SeqLen(3000).Seed(seed);
  c.DTypes(DType::kBF16, DType::kBF16).Sinks(SinkShape::kPerQoHead, 1);
  c.Ranges({0, 100, 5, 2000, 7, 0}, {3000, 2900, 6, 2000, 1800, 1});
  return c;
}

TEST(Determinism, EveryThreadCountGivesTheSameBits) {
  for (bool window : {false, true}) {
    Case c = ThreadingCase(window ? 2 : 1);
    if (window) c.Window(1500, 0).SoftCap(30.0);
    const Inputs in = MakeInputs(c);
    ForEachTarget([&] {
      Options options = c.options;
      options.num_threads = 1;
      const Outputs single = RunLibrary(c, in, options);
      for (int threads : {2, 3, 8, 0}) {
        options.num_threads = threads;
        const Outputs got = RunLibrary(c, in, options);
        EXPECT_TRUE(got.output.SameBytes(single.output))
            << "num_threads " << threads << "; " << c.Describe();
        EXPECT_TRUE(got.lse.SameBytes(single.lse))
            << "num_threads " << threads << "; " << c.Describe();
      }
    });
  }
}

TEST(Determinism, RepeatedRunsGiveTheSameBits) {
  const Case c = ThreadingCase(3).Threads(8);
  const Inputs in = MakeInputs(c);
  ForEachTarget([&] {
    const Outputs first = RunLibrary(c, in);
    for (int repeat = 0; repeat < 4; ++repeat) {
      const Outputs again = RunLibrary(c, in);
      EXPECT_TRUE(again.output.SameBytes(first.output)) << "repeat " << repeat;
      EXPECT_TRUE(again.lse.SameBytes(first.lse)) << "repeat " << repeat;
    }
  });
}

// A row computed alone equals the same row at several positions of larger
// batches whose other rows differ (lengths, data, a larger seq_len), with a
// different thread count.
TEST(Determinism, BatchInvariance) {
  struct Row {
    int32_t start;
    int32_t end;
  };
  // A long row cut into several chunks, one starting mid-chunk, a short one.
  const Row rows[] = {{0, 2600}, {37, 2211}, {900, 913}};
  uint64_t seed = 10;
  for (const Row& row : rows) {
    Case alone;
    alone.Batch(1).Heads(6, 3).Dims(40, 24).SeqLen(2600).Seed(seed++);
    alone.DTypes(DType::kF16, DType::kBF16).Sinks(SinkShape::kPerKvHead, 2);
    alone.Window(2000, -1).SoftCap(40.0).Threads(1);
    alone.Ranges({row.start}, {row.end});
    const Inputs alone_in = MakeInputs(alone);

    for (int64_t batch : {2, 7}) {
      for (int64_t position : {int64_t{0}, batch / 2, batch - 1}) {
        Case many = alone;
        many.Batch(batch).SeqLen(3100).Seed(seed++).Threads(3);
        many.starts.clear();
        many.ends.clear();
        Inputs many_in = MakeInputs(many);
        CopyRow(alone_in, 0, alone.seq_len, &many_in, position);
        many_in.aux = alone_in.aux;  // sinks are shared by the whole batch
        ForEachTarget([&] {
          const Outputs single = RunLibrary(alone, alone_in);
          const Outputs within = RunLibrary(many, many_in);
          EXPECT_TRUE(SameRow(single.output, 0, within.output, position))
              << "row at " << position << " of " << batch << "; "
              << many.Describe();
          EXPECT_TRUE(SameRow(single.lse, 0, within.lse, position))
              << "row at " << position << " of " << batch << "; "
              << many.Describe();
        });
      }
    }
  }
}

// Several caller threads at once, each with its own inputs and two worker
// threads per call, get bitwise the results of serial calls.
TEST(Determinism, ConcurrentCallersGetTheirOwnResults) {
  constexpr int kCallers = 4;
  std::vector<Case> cases;
  std::vector<Inputs> inputs;
  std::vector<Outputs> serial;
  for (int i = 0; i < kCallers; ++i) {
    cases.push_back(ThreadingCase(20 + i).Threads(2));
    inputs.push_back(MakeInputs(cases.back()));
    serial.push_back(RunLibrary(cases.back(), inputs.back()));
  }
  std::vector<int> mismatches(kCallers, 0);
  std::vector<std::thread> callers;
  for (int i = 0; i < kCallers; ++i) {
    callers.emplace_back([&, i] {
      for (int repeat = 0; repeat < 5; ++repeat) {
        const Outputs got = RunLibrary(cases[i], inputs[i]);
        if (!got.output.SameBytes(serial[i].output) ||
            !got.lse.SameBytes(serial[i].lse)) {
          ++mismatches[i];
        }
      }
    });
  }
  for (std::thread& caller : callers) caller.join();
  for (int i = 0; i < kCallers; ++i) {
    EXPECT_EQ(mismatches[i], 0)
        << "caller " << i << "; " << cases[i].Describe();
  }
}

}  // namespace
}  // namespace test
}  // namespace raggedattn
