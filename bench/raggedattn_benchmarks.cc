// Google Benchmark suite of ragged_decode_attention: the model presets, and
// one sweep per parameter that moves the speed (context, batch, group size,
// head size, dtype, threads, window, sinks), plus the smallest call.
//
// Every kernel benchmark rotates through copies of its KV cache totalling at
// least 1 GiB, more than the last-level cache, and reports bytes/s of KV
// read (attended tokens only), FLOP/s, and read_bw_fraction: its rate over
// the rate of a vectorized sum over the same bytes on the same threads,
// measured right after the timed loop. BM_ReadBandwidth and BM_FmaPeak
// report the probes themselves.
//
//   raggedattn_benchmarks --benchmark_filter=Preset
//   raggedattn_benchmarks --benchmark_filter='SmallCall|Threads'

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "raggedattn/raggedattn.h"
#include "tools/presets.h"
#include "tools/probes.h"
#include "tools/workload.h"

namespace raggedattn {
namespace bench {
namespace {

using Clock = std::chrono::steady_clock;

// More than the 480 MiB L3 of this class of machine, where reads already
// slow down past about 100 MiB.
constexpr size_t kWorkingSet = size_t{1} << 30;

int AvailableCores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    return std::max(1, CPU_COUNT(&set));
  }
  return 1;
}

// Returns a pool of `dtype` holding at least `bytes`. One pool lives at a
// time and is reused while it fits: drawing a gigabyte of random values per
// benchmark would take longer than the benchmark.
const RandomPool& PoolFor(DType dtype, size_t bytes) {
  static std::unique_ptr<RandomPool> pool;
  if (!pool || pool->dtype() != dtype || pool->bytes() < bytes) {
    pool.reset();  // free the old one before drawing the new one
    pool = std::make_unique<RandomPool>(dtype, bytes, 42, AvailableCores());
  }
  return *pool;
}

double MedianSeconds(std::vector<double> seconds) {
  std::sort(seconds.begin(), seconds.end());
  return seconds[seconds.size() / 2];
}

// Returns the read probe's bytes per second over the workload's copies.
double ProbeReadRate(const Workload& workload) {
  constexpr int kSamples = 5;
  std::vector<double> seconds;
  for (int i = 0; i < kSamples; ++i) {
    const std::vector<ByteSpan> spans =
        workload.KvSpans(i % workload.num_copies());
    const Clock::time_point begin = Clock::now();
    benchmark::DoNotOptimize(ReadProbe(spans, workload.spec().num_threads));
    seconds.push_back(
        std::chrono::duration<double>(Clock::now() - begin).count());
  }
  return static_cast<double>(workload.kv_bytes()) / MedianSeconds(seconds);
}

// Times ragged_decode_attention on `spec`, one copy of the KV per call.
void RunKernel(benchmark::State& state, const CaseSpec& spec,
               size_t working_set) {
  const RandomPool& pool = PoolFor(spec.dtype, PoolBytesFor(spec, working_set));
  Workload workload(spec, pool, working_set);
  const int copies = workload.num_copies();
  workload.Run(0);

  int copy = 0;
  const Clock::time_point begin = Clock::now();
  for (auto _ : state) {
    workload.Run(copy);
    copy = copy + 1 == copies ? 0 : copy + 1;
  }
  const double seconds =
      std::chrono::duration<double>(Clock::now() - begin).count();

  const double bytes = static_cast<double>(workload.kv_bytes());
  const double calls = static_cast<double>(state.iterations());
  state.SetBytesProcessed(static_cast<int64_t>(bytes * calls));
  state.counters["FLOP/s"] =
      benchmark::Counter(workload.flops() * calls, benchmark::Counter::kIsRate);
  state.counters["read_bw_fraction"] =
      bytes * calls / seconds / ProbeReadRate(workload);
  state.counters["working_set_MiB"] =
      static_cast<double>(workload.working_set_bytes()) / (1 << 20);
}

Preset LlamaShape() { return *FindPreset("Llama-3-8B"); }

// Returns a case with lengths uniform in [context / 2, context] (exactly
// context for batch 1), bf16 query and KV, on every core.
CaseSpec MakeCase(const Preset& preset, int64_t context, int64_t batch) {
  CaseSpec spec;
  spec.preset = preset;
  spec.batch = batch;
  spec.max_length = context;
  spec.min_length = batch == 1 ? context : std::max<int64_t>(1, context / 2);
  spec.num_threads = AvailableCores();
  return spec;
}

void Register(const std::string& name, const CaseSpec& spec,
              size_t working_set = kWorkingSet,
              benchmark::TimeUnit unit = benchmark::kMillisecond) {
  benchmark::RegisterBenchmark(name.c_str(),
                               [spec, working_set](benchmark::State& state) {
                                 RunKernel(state, spec, working_set);
                               })
      ->UseRealTime()
      ->Unit(unit);
}

void RegisterAll() {
  const int cores = AvailableCores();

  for (const Preset& preset : Presets()) {
    for (const int64_t context : {8192, 32768}) {
      for (const int64_t batch : {1, 8}) {
        Register("BM_Preset/" + preset.name +
                     "/context:" + std::to_string(context) +
                     "/batch:" + std::to_string(batch),
                 MakeCase(preset, context, batch));
      }
    }
  }

  for (const int64_t context : {512, 2048, 8192, 32768, 131072}) {
    Register("BM_Context/Llama-3-8B/batch:1/context:" + std::to_string(context),
             MakeCase(LlamaShape(), context, 1));
  }

  // The serving mix: many rows of very different lengths.
  for (const int64_t batch : {1, 4, 16, 64}) {
    CaseSpec spec = MakeCase(LlamaShape(), 4096, batch);
    spec.min_length = 1;
    Register(
        "BM_Batch/Llama-3-8B/lengths:1..4096/batch:" + std::to_string(batch),
        spec);
  }

  // One KV head and a growing query group: arithmetic per KV byte grows
  // with the group, up to Falcon's 71.
  for (const int64_t group : {1, 4, 8, 16, 32, 71}) {
    Preset preset = LlamaShape();
    preset.name = "G" + std::to_string(group);
    preset.num_kv_heads = 1;
    preset.num_qo_heads = group;
    preset.head_dim = preset.head_dim_v = 64;
    Register("BM_GroupSize/Hkv:1/D:64/context:8192/batch:8/G:" +
                 std::to_string(group),
             MakeCase(preset, 8192, 8));
  }

  for (const int64_t head_dim : {64, 80, 96, 128, 192, 256}) {
    Preset preset = LlamaShape();
    preset.head_dim = preset.head_dim_v = head_dim;
    Register(
        "BM_HeadDim/32/8/context:8192/batch:4/D:" + std::to_string(head_dim),
        MakeCase(preset, 8192, 4));
  }

  for (const DType dtype : {DType::kBF16, DType::kF16, DType::kF32}) {
    CaseSpec spec = MakeCase(LlamaShape(), 8192, 4);
    spec.dtype = dtype;
    Register(std::string("BM_DType/Llama-3-8B/context:8192/batch:4/") +
                 DTypeName(dtype),
             spec);
  }

  std::vector<int> thread_counts = {1, 2};
  if (cores > 2) thread_counts.push_back(cores);
  for (const int threads : thread_counts) {
    CaseSpec spec = MakeCase(LlamaShape(), 8192, 8);
    spec.num_threads = threads;
    Register("BM_Threads/Llama-3-8B/context:8192/batch:8/threads:" +
                 std::to_string(threads),
             spec);
  }

  for (const int64_t window : {-1, 4096, 1024, 128}) {
    Preset preset = LlamaShape();
    preset.window_left = window < 0 ? -1 : window - 1;
    Register("BM_Window/Llama-3-8B/context:32768/batch:4/window:" +
                 (window < 0 ? std::string("none") : std::to_string(window)),
             MakeCase(preset, 32768, 4));
  }

  for (const int64_t sinks : {0, 1, 4}) {
    Preset preset = *FindPreset("gpt-oss-20b");
    preset.window_left = -1;
    preset.num_sinks = sinks;
    Register("BM_Sinks/gpt-oss-20b/no-window/context:8192/batch:4/sinks:" +
                 std::to_string(sinks),
             MakeCase(preset, 8192, 4));
  }

  // The smallest call, batch 1 and one token: fixed costs (validation,
  // planning, thread wake-up, merge). Warm: one copy stays in cache. Cold:
  // every call reads a copy last touched a gigabyte ago.
  Register("BM_SmallCall/Llama-3-8B/tokens:1/cache:warm",
           MakeCase(LlamaShape(), 1, 1), /*working_set=*/0,
           benchmark::kMicrosecond);
  Register("BM_SmallCall/Llama-3-8B/tokens:1/cache:cold",
           MakeCase(LlamaShape(), 1, 1), kWorkingSet, benchmark::kMicrosecond);

  // The machine's limits the kernel is measured against.
  for (const int threads : thread_counts) {
    benchmark::RegisterBenchmark(
        ("BM_ReadBandwidth/threads:" + std::to_string(threads)).c_str(),
        [threads](benchmark::State& state) {
          const size_t bytes = size_t{256} << 20;
          const RandomPool& pool = PoolFor(DType::kBF16, kWorkingSet);
          const size_t copies = pool.bytes() / bytes;
          size_t copy = 0;
          for (auto _ : state) {
            benchmark::DoNotOptimize(ReadProbe(
                {ByteSpan{pool.data() + copy * bytes, bytes}}, threads));
            copy = (copy + 1) % copies;
          }
          state.SetBytesProcessed(
              static_cast<int64_t>(bytes * state.iterations()));
        })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(
        ("BM_FmaPeak/threads:" + std::to_string(threads)).c_str(),
        [threads](benchmark::State& state) {
          double flops = 0.0;
          for (auto _ : state) flops += FmaProbe(threads, 1 << 20);
          state.counters["FLOP/s"] =
              benchmark::Counter(flops, benchmark::Counter::kIsRate);
        })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
}

}  // namespace
}  // namespace bench
}  // namespace raggedattn

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  raggedattn::bench::RegisterAll();
  benchmark::AddCustomContext("simd_target", raggedattn::active_simd_target());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
