// `raggedattn bench`: the main job. Runs real models' attention shapes on
// random bf16 KV caches with ragged lengths and prints, per case, the time
// per call, the KV bytes read per second, that rate as a fraction of this
// machine's read bandwidth measured in the same run on the same bytes, the
// fraction of the f32 FMA peak for large query groups, and the error against
// the float64 reference.

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "hwy/targets.h"
#include "raggedattn/raggedattn.h"
#include "src/decode_kernel.h"
#include "src/reference/reference.h"
#include "tools/commands.h"
#include "tools/presets.h"
#include "tools/probes.h"
#include "tools/workload.h"

namespace raggedattn {
namespace cli {
namespace {

using Clock = std::chrono::steady_clock;

// The last-level cache of this class of machine holds up to 480 MiB (some
// have 32 MiB), and reads slow down past about 100 MiB, so a gibibyte per
// case keeps every call reading memory.
// --working-set changes it, e.g. to check that a larger one reads the same.
constexpr int64_t kDefaultWorkingSetMiB = 1024;

// Query groups at least this large do enough arithmetic per KV byte that
// the FMA units, not memory, may limit the kernel.
constexpr int64_t kLargeGroup = 16;

// Rows compared with the float64 reference per case. The reference is plain
// scalar code; two rows keep it to a fraction of the case's time.
constexpr int kCheckedRows = 2;

constexpr const char* kBenchFooter =
    R"(Each case draws sequence lengths uniformly from [context/2, context]
(batch 1: exactly context) and fills query, key and value with random normal
values rounded to --dtype. By default the cases of a run rotate through
copies of their KV cache totalling at least --working-set MiB (1 GiB), more
than the last-level cache, so every call reads from memory; --small uses one
copy of smaller caches that stay in cache. Without --context and --batch
the Llama-3-8B preset adds a serving mix (batch 64, lengths 1..4096) and a
single-token call.

Columns: ms/call is the median over the case's calls; GB/s counts key and
value bytes of attended tokens only; "read bw" is that rate over the rate of a
vectorized sum over the same bytes on the same threads, run between the
kernel's calls; "FMA peak" (query groups >= 16) is the kernel's flops,
2 * (head_dim + head_dim_v) per query head and attended token, over the best
rate of an f32 FMA loop on the same threads, also run between the calls; "max
err" and "lse err" compare two sampled rows (of long rows, a random run of KV
heads) with the float64 reference (bounds: 8e-3 for bf16, 2e-3 for f16, 3e-5
for f32, and 1e-4). Exit status 1 when an error exceeds its bound.)";

struct BenchArguments {
  std::vector<std::string> presets;
  std::vector<int> threads;
  std::vector<int64_t> contexts;
  std::vector<int64_t> batches;
  bool small = false;
  double seconds_per_case = 0.4;
  std::string dtype = "bf16";  // of query, key and value
  int64_t working_set_mib = kDefaultWorkingSetMiB;
  std::string simd;  // a SIMD target to run instead of the best; "" = best
};

// The dtypes --dtype takes, by the library's names for them (DTypeName).
constexpr DType kBenchDTypes[] = {DType::kBF16, DType::kF16, DType::kF32};

std::vector<std::string> BenchDTypeNames() {
  std::vector<std::string> names;
  for (const DType dtype : kBenchDTypes) names.push_back(DTypeName(dtype));
  return names;
}

// Returns the dtype of --dtype (CLI11 has checked the name).
DType DTypeNamed(const std::string& name) {
  for (const DType dtype : kBenchDTypes) {
    if (name == DTypeName(dtype)) return dtype;
  }
  return DType::kBF16;
}

// One row of the table.
struct BenchCase {
  bench::CaseSpec spec;
  std::string lengths;  // how the lengths were drawn, for the table
};

// Returns the cores this process may run on, as the library counts them.
int AvailableCores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    return std::max(1, CPU_COUNT(&set));
  }
  return std::max(1L, sysconf(_SC_NPROCESSORS_ONLN));
}

std::string ShapeOptions(const bench::Preset& preset) {
  std::string text;
  const auto add = [&](const std::string& part) {
    text += (text.empty() ? "" : " ") + part;
  };
  if (preset.window_left >= 0) {
    add("win " + std::to_string(preset.window_left + 1));
  }
  if (preset.soft_cap > 0.0) {
    add("cap " + std::to_string(static_cast<int>(preset.soft_cap)));
  }
  if (preset.softmax_scale) {
    char scale[32];
    std::snprintf(scale, sizeof(scale), "scale %.4g", *preset.softmax_scale);
    add(scale);
  }
  if (preset.num_sinks > 0) add("sinks");
  return text.empty() ? "-" : text;
}

// Returns an FNV-1a hash of the case's name and sizes.
uint64_t CaseSeed(const std::string& name, int64_t batch, int64_t min_length,
                  int64_t max_length) {
  uint64_t hash = 0xCBF29CE484222325ull;
  const auto mix = [&](uint64_t byte) {
    hash = (hash ^ byte) * 0x100000001B3ull;
  };
  for (const char ch : name) mix(static_cast<unsigned char>(ch));
  for (const int64_t value : {batch, min_length, max_length}) {
    for (int shift = 0; shift < 64; shift += 8) mix((value >> shift) & 0xFF);
  }
  return hash;
}

// Returns the cases of the run in table order: per thread count and preset,
// every context and batch, plus Llama-3-8B's serving mix and single token
// when the grid is the default one.
std::vector<BenchCase> MakeSuite(const BenchArguments& args, DType dtype,
                                 const std::vector<bench::Preset>& presets,
                                 const std::vector<int>& threads) {
  const bool default_grid = args.contexts.empty() && args.batches.empty();
  std::vector<int64_t> contexts = args.contexts;
  if (contexts.empty()) {
    contexts = args.small ? std::vector<int64_t>{1024, 4096}
                          : std::vector<int64_t>{8192, 32768};
  }
  std::vector<int64_t> batches = args.batches;
  if (batches.empty()) batches = {1, 8};

  std::vector<BenchCase> suite;
  const auto add = [&](const bench::Preset& preset, int num_threads,
                       int64_t batch, int64_t min_length, int64_t max_length) {
    BenchCase c;
    c.spec.preset = preset;
    c.spec.batch = batch;
    c.spec.min_length = min_length;
    c.spec.max_length = max_length;
    c.spec.num_threads = num_threads;
    c.spec.dtype = dtype;
    // The same case gets the same lengths and data whatever else runs.
    c.spec.seed = CaseSeed(preset.name, batch, min_length, max_length);
    c.lengths = min_length == max_length ? std::to_string(max_length)
                                         : std::to_string(min_length) + ".." +
                                               std::to_string(max_length);
    suite.push_back(c);
  };
  for (const int num_threads : threads) {
    for (const bench::Preset& preset : presets) {
      for (const int64_t context : contexts) {
        for (const int64_t batch : batches) {
          const int64_t min_length =
              batch == 1 ? context : std::max<int64_t>(1, context / 2);
          add(preset, num_threads, batch, min_length, context);
        }
      }
      if (default_grid && preset.name == "Llama-3-8B") {
        // A serving engine's mix of short and long rows, and the smallest
        // call, where fixed costs dominate.
        add(preset, num_threads, 64, 1, args.small ? 1024 : 4096);
        add(preset, num_threads, 1, 1, 1);
      }
    }
  }
  return suite;
}

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

template <typename F>
double SecondsOf(const F& f) {
  const Clock::time_point begin = Clock::now();
  f();
  return std::chrono::duration<double>(Clock::now() - begin).count();
}

// Returns FMA probe iterations that keep one thread busy for about
// `seconds`. Every thread of a probe runs that many, so one thread measures
// it, free of the cost of waking the others; the fastest of a few tries
// discards preempted ones.
int64_t CalibrateFmaProbe(double seconds) {
  constexpr int kTries = 5;
  int64_t iterations = 1 << 14;
  for (;;) {
    double fastest = 1e30;
    for (int i = 0; i < kTries; ++i) {
      fastest =
          std::min(fastest, SecondsOf([&] { bench::FmaProbe(1, iterations); }));
    }
    if (fastest >= 0.2 * seconds || iterations > (int64_t{1} << 40)) {
      return std::max<int64_t>(
          1, static_cast<int64_t>(iterations * seconds / fastest));
    }
    iterations *= 4;
  }
}

struct Measurement {
  double kernel_seconds = 0.0;  // median per call
  // Median over adjacent (kernel, probe) pairs of probe time over kernel
  // time: the kernel's rate as a fraction of the read probe's. Pairs share
  // the machine's state more closely than two separate medians would when
  // other processes come and go.
  double read_fraction = 0.0;
  double fma_flops_per_second = 0.0;  // best sample; 0 when not measured
  reference::Error error;
};

// Times the kernel and the probes alternately, so that both see the same
// machine state (frequency, other load, cache contents), until the case has
// used its time and made at least a few calls.
Measurement Measure(bench::Workload& workload, bool probe_fma,
                    int64_t fma_iterations, double seconds_per_case) {
  constexpr int kMinCalls = 5;
  constexpr int kMaxCalls = 2000;
  const int threads = workload.spec().num_threads;
  const int copies = workload.num_copies();

  // Warm-up: first touches of the outputs, thread start.
  workload.Run(0);
  bench::ReadProbe(workload.KvSpans(copies > 1 ? 1 : 0), threads);

  // The kernel and the read probe take turns through the copies, so each
  // reads bytes neither has read since the whole working set went by.
  std::vector<double> kernel, read, fma;
  int next_copy = 2 % copies;
  const Clock::time_point begin = Clock::now();
  while (static_cast<int>(kernel.size()) < kMaxCalls) {
    const int kernel_copy = next_copy;
    const int probe_copy = (next_copy + 1) % copies;
    next_copy = (next_copy + 2) % copies;
    kernel.push_back(SecondsOf([&] { workload.Run(kernel_copy); }));
    read.push_back(SecondsOf(
        [&] { bench::ReadProbe(workload.KvSpans(probe_copy), threads); }));
    if (probe_fma) {
      double flops = 0.0;
      const double t =
          SecondsOf([&] { flops = bench::FmaProbe(threads, fma_iterations); });
      fma.push_back(flops / t);
    }
    const double elapsed =
        std::chrono::duration<double>(Clock::now() - begin).count();
    if (static_cast<int>(kernel.size()) >= kMinCalls &&
        elapsed >= seconds_per_case) {
      break;
    }
  }
  Measurement m;
  m.kernel_seconds = Median(kernel);
  std::vector<double> ratios(kernel.size());
  for (size_t i = 0; i < kernel.size(); ++i) ratios[i] = read[i] / kernel[i];
  m.read_fraction = Median(ratios);
  // A peak is the best the cores did; a preempted sample only runs slow.
  if (probe_fma)
    m.fma_flops_per_second = *std::max_element(fma.begin(), fma.end());
  m.error = workload.Check(kCheckedRows);
  return m;
}

// Returns milliseconds with three to five significant digits, never in
// exponent form.
std::string FormatMilliseconds(double ms) {
  const int decimals = ms >= 100 ? 1 : ms >= 10 ? 2 : ms >= 1 ? 3 : 4;
  char text[32];
  std::snprintf(text, sizeof(text), "%.*f", decimals, ms);
  return text;
}

std::string FormatBytes(double bytes) {
  char text[32];
  if (bytes >= 1024.0 * 1024.0) {
    std::snprintf(text, sizeof(text), "%.1f MiB", bytes / (1024.0 * 1024.0));
  } else {
    std::snprintf(text, sizeof(text), "%.0f KiB", bytes / 1024.0);
  }
  return text;
}

// The widths of the table's columns, shared by the header and the rows.
constexpr char kTableColumns[] =
    "%-12s %3s %3s %-9s %-19s %-12s %10s %9s %6s %7s %7s %8s %8s %8s\n";

void PrintTableHeader() {
  std::printf(kTableColumns, "preset", "thr", "B", "Hq/Hkv/D", "options",
              "lengths", "KV/call", "ms/call", "GB/s", "read bw", "GFLOP/s",
              "FMA peak", "max err", "lse err");
}

void PrintRow(const BenchCase& c, const bench::Workload& workload,
              const Measurement& m) {
  const bench::Preset& p = c.spec.preset;
  char heads[32];
  std::snprintf(heads, sizeof(heads), "%lld/%lld/%lld",
                static_cast<long long>(p.num_qo_heads),
                static_cast<long long>(p.num_kv_heads),
                static_cast<long long>(p.head_dim));
  const double bytes = static_cast<double>(workload.kv_bytes());
  const double gbps = bytes / m.kernel_seconds * 1e-9;
  const double gflops = workload.flops() / m.kernel_seconds * 1e-9;
  char fma[16] = "-";
  if (m.fma_flops_per_second > 0.0) {
    std::snprintf(
        fma, sizeof(fma), "%.0f%%",
        100.0 * workload.flops() / m.kernel_seconds / m.fma_flops_per_second);
  }
  char read[16];
  std::snprintf(read, sizeof(read), "%.0f%%", 100.0 * m.read_fraction);
  char rates[2][16];
  std::snprintf(rates[0], sizeof(rates[0]), "%.2f", gbps);
  std::snprintf(rates[1], sizeof(rates[1]), "%.1f", gflops);
  char errors[2][16];
  std::snprintf(errors[0], sizeof(errors[0]), "%.1e", m.error.output);
  std::snprintf(errors[1], sizeof(errors[1]), "%.1e", m.error.lse);
  std::printf(
      kTableColumns, p.name.c_str(), std::to_string(c.spec.num_threads).c_str(),
      std::to_string(c.spec.batch).c_str(), heads, ShapeOptions(p).c_str(),
      c.lengths.c_str(), FormatBytes(bytes).c_str(),
      FormatMilliseconds(m.kernel_seconds * 1e3).c_str(), rates[0], read,
      rates[1], fma, errors[0], errors[1]);
  std::fflush(stdout);
}

// Returns the presets named in args (all when none), or reports the first
// unknown name and returns an empty list.
std::vector<bench::Preset> SelectPresets(const BenchArguments& args) {
  if (args.presets.empty()) return bench::Presets();
  std::vector<bench::Preset> selected;
  for (const std::string& name : args.presets) {
    const bench::Preset* preset = bench::FindPreset(name);
    if (preset == nullptr) {
      std::fprintf(stderr, "error: --preset %s: unknown preset; known: %s\n",
                   name.c_str(), bench::PresetNames().c_str());
      return {};
    }
    selected.push_back(*preset);
  }
  return selected;
}

// Makes the kernel and the probes run `name`'s code (Highway's target name,
// e.g. AVX2), which this build must have and this CPU must run. Returns
// false, with a message, otherwise.
bool ForceSimdTarget(const std::string& name) {
  hwy::SetSupportedTargetsForTest(0);
  std::string names;
  for (const int64_t target : hwy::SupportedAndGeneratedTargets()) {
    if (name == hwy::TargetName(target)) {
      hwy::SetSupportedTargetsForTest(target);
      return true;
    }
    names += (names.empty() ? "" : ", ") + std::string(hwy::TargetName(target));
  }
  std::fprintf(stderr,
               "error: --simd %s: this build and CPU run only %s\n",
               name.c_str(), names.c_str());
  return false;
}

int RunBench(const BenchArguments& args) {
  const Clock::time_point start = Clock::now();
  if (!args.simd.empty() && !ForceSimdTarget(args.simd)) return kExitBadInput;
  const std::vector<bench::Preset> presets = SelectPresets(args);
  if (presets.empty()) return kExitBadInput;
  const int cores = AvailableCores();
  std::vector<int> threads = args.threads;
  if (threads.empty()) threads = {cores};
  const DType dtype = DTypeNamed(args.dtype);
  const std::vector<BenchCase> suite =
      MakeSuite(args, dtype, presets, threads);
  const size_t min_working_set =
      args.small ? 0 : static_cast<size_t>(args.working_set_mib) << 20;

  // One pool of random values serves every case: the largest case's needs.
  size_t pool_bytes = 0;
  for (const BenchCase& c : suite) {
    pool_bytes =
        std::max(pool_bytes, bench::PoolBytesFor(c.spec, min_working_set));
  }
  const double memory = static_cast<double>(sysconf(_SC_PHYS_PAGES)) *
                        static_cast<double>(sysconf(_SC_PAGE_SIZE));
  if (static_cast<double>(pool_bytes) > 0.75 * memory) {
    std::fprintf(stderr,
                 "error: the cases need %.1f GiB of KV cache, more than 3/4 "
                 "of this machine's %.1f GiB; use smaller --context or "
                 "--batch\n",
                 static_cast<double>(pool_bytes) / (1 << 30),
                 memory / (1 << 30));
    return kExitBadInput;
  }
  std::fprintf(stderr, "generating %.2f GiB of random %s ...\n",
               static_cast<double>(pool_bytes) / (1 << 30), DTypeName(dtype));
  const Clock::time_point generate = Clock::now();
  const bench::RandomPool pool(dtype, pool_bytes, 42, cores);
  std::fprintf(stderr, "generated in %.1f s\n",
               std::chrono::duration<double>(Clock::now() - generate).count());

  char working_set[64] = "one copy per case (in-cache working sets)";
  if (!args.small) {
    std::snprintf(working_set, sizeof(working_set),
                  "working set >= %lld MiB per case (from memory)",
                  static_cast<long long>(args.working_set_mib));
  }
  std::string thread_list;
  for (const int t : threads) {
    thread_list += (thread_list.empty() ? "" : ",") + std::to_string(t);
  }
  // Whether bf16 logits use vdpbf16ps, where the CPU has it (see
  // CpuPrefersBf16DotProducts).
  std::string bf16_dots;
  if (dtype == DType::kBF16 && CpuHasBf16DotProducts() &&
      std::string(active_simd_target()).rfind("AVX3", 0) == 0) {
    bf16_dots = Bf16DotProductsAllowed() ? " with AVX512-BF16 dot products"
                                         : " without AVX512-BF16 dot products";
  }
  std::printf(
      "raggedattn bench: SIMD target %s%s (probes %s), threads %s of %d "
      "cores, query/KV %s, %s\n",
      active_simd_target(), bf16_dots.c_str(), bench::ProbeTargetName(),
      thread_list.c_str(), cores, DTypeName(dtype), working_set);
  PrintTableHeader();

  bool any_error = false;
  int64_t fma_iterations = 0;  // calibrated at the first large group
  for (size_t i = 0; i < suite.size(); ++i) {
    const BenchCase& c = suite[i];
    std::fprintf(stderr, "[%zu/%zu] %s b %lld lengths %s threads %d ...\n",
                 i + 1, suite.size(), c.spec.preset.name.c_str(),
                 static_cast<long long>(c.spec.batch), c.lengths.c_str(),
                 c.spec.num_threads);
    bench::Workload workload(c.spec, pool, min_working_set);
    const bool probe_fma = c.spec.preset.GroupSize() >= kLargeGroup;
    if (probe_fma && fma_iterations == 0) {
      // About as long as a short kernel call, so the probe stays a sample
      // between calls rather than the bulk of the case.
      fma_iterations = CalibrateFmaProbe(0.003);
    }
    const Measurement m =
        Measure(workload, probe_fma, fma_iterations, args.seconds_per_case);
    PrintRow(c, workload, m);
    const bool bad =
        !(m.error.output <= reference::OutputTolerance(dtype)) ||
        !(m.error.lse <= reference::kLseTolerance);
    if (bad) {
      std::fprintf(stderr,
                   "error: %s b %lld lengths %s: error %.3g / lse "
                   "%.3g exceeds the bound\n",
                   c.spec.preset.name.c_str(),
                   static_cast<long long>(c.spec.batch), c.lengths.c_str(),
                   m.error.output, m.error.lse);
      any_error = true;
    }
  }
  std::fprintf(stderr, "done: %zu cases in %.1f s\n", suite.size(),
               std::chrono::duration<double>(Clock::now() - start).count());
  return any_error ? kExitFailure : kExitOk;
}

}  // namespace

std::function<int()> AddBenchCommand(CLI::App& app) {
  auto args = std::make_shared<BenchArguments>();
  CLI::App* bench = app.add_subcommand(
      "bench",
      "Benchmark real models' attention shapes against this machine's "
      "memory bandwidth");
  bench->footer(kBenchFooter);
  bench
      ->add_option("--preset", args->presets,
                   "Preset(s) to run, repeatable or comma-separated: " +
                       bench::PresetNames() + " (default: all)")
      ->delimiter(',');
  bench
      ->add_option("--threads", args->threads,
                   "Thread count(s), comma-separated (default: all cores)")
      ->delimiter(',')
      ->check(CLI::Range(1, 1 << 16));
  bench
      ->add_option("--context", args->contexts,
                   "Context length(s), comma-separated; lengths are drawn "
                   "from [context/2, context] (default: 8192,32768; "
                   "--small: 1024,4096)")
      ->delimiter(',')
      ->check(CLI::Range(int64_t{1}, int64_t{INT32_MAX}));
  bench
      ->add_option("--batch", args->batches,
                   "Batch size(s), comma-separated (default: 1,8)")
      ->delimiter(',')
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  bench->add_flag("--small", args->small,
                  "One copy of each case's KV and smaller default contexts: "
                  "in-cache working sets instead of memory-bound ones");
  bench
      ->add_option("--working-set", args->working_set_mib,
                   "MiB of KV copies each case rotates through (without "
                   "--small)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
  bench
      ->add_option("--dtype", args->dtype,
                   "Type of query, key and value: bf16, f16 or f32")
      ->capture_default_str()
      ->check(CLI::IsMember(BenchDTypeNames()));
  bench->add_option("--simd", args->simd,
                    "SIMD target to run instead of the best this CPU has, "
                    "by Highway's name (e.g. AVX2, SSE4, AVX3)");
  bench
      ->add_option("--seconds", args->seconds_per_case,
                   "Time spent timing each case (at least 5 calls)")
      ->capture_default_str()
      ->check(CLI::Range(1e-3, 3600.0));
  return [args] { return RunBench(*args); };
}

}  // namespace cli
}  // namespace raggedattn
