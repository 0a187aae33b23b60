// `raggedattn run`: one call of ragged_decode_attention on the tensors of a
// safetensors file, written to another safetensors file.

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <new>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "raggedattn/raggedattn.h"
#include "src/plan.h"
#include "tools/commands.h"
#include "tools/safetensors.h"

namespace raggedattn {
namespace cli {
namespace {

constexpr const char* kRunFooter = R"(INPUT holds the tensors
  query           [batch, num_qo_heads, head_dim]             F32, BF16 or F16
  key             [batch, seq_len, num_kv_heads, head_dim]    F32, BF16 or F16
  value           [batch, seq_len, num_kv_heads, head_dim_v]  key's dtype
  sequence_start  [batch]                                     I32
  sequence_end    [batch]                                     I32
  softmax_aux     optional sink logits, [num_qo_heads, num_sinks],
                  [num_kv_heads, num_sinks] or [num_sinks]    F32, BF16 or F16
and no others. OUTPUT gets `output` [batch, num_qo_heads, head_dim_v] in the
query's dtype and `lse` [batch, num_qo_heads] F32 (natural log of the softmax
denominator; -inf for a row that attends to nothing and has no sinks).

Exit status: 0 on success; 2 on bad input: a bad option value, an INPUT that
cannot be opened or is not a well-formed safetensors file, a missing or
unknown tensor, or arguments the operation rejects; 1 on anything else,
including an OUTPUT that cannot be written (missing directory, no
permission, full disk). Every failure prints a line starting with "error:".
OUTPUT is written to a temporary file beside it and renamed into place only
on success; after a failed run no OUTPUT file exists (a stale one from an
earlier run is removed, unless it is INPUT itself).)";

const char* const kInputNames[] = {
    "query", "key", "value", "sequence_start", "sequence_end", "softmax_aux"};

struct RunArguments {
  std::string input;
  std::string output;
  double scale = 0.0;
  std::string window;
  double soft_cap = 0.0;
  int64_t block_size = 0;
  int threads = 0;
  int repeat = 1;
  // Which options were given.
  CLI::Option* scale_option = nullptr;
  CLI::Option* window_option = nullptr;
  CLI::Option* soft_cap_option = nullptr;
  CLI::Option* block_size_option = nullptr;
};

// Returns the --window text "L,R" as a SlidingWindow. The library checks the
// values; this only checks the form.
SlidingWindow ParseWindow(const std::string& text) {
  const auto fail = [&]() -> SlidingWindow {
    throw InvalidArgument("--window " + text +
                          ": expected two integers L,R (-1 for an "
                          "unbounded side), e.g. --window 4095,0");
  };
  const size_t comma = text.find(',');
  if (comma == std::string::npos) return fail();
  SlidingWindow window;
  for (int side = 0; side < 2; ++side) {
    const std::string part =
        side == 0 ? text.substr(0, comma) : text.substr(comma + 1);
    size_t used = 0;
    int64_t value = 0;
    try {
      value = std::stoll(part, &used);
    } catch (const std::exception&) {
      return fail();
    }
    if (part.empty() || used != part.size()) return fail();
    (side == 0 ? window.left : window.right) = value;
  }
  return window;
}

const TensorView& RequireTensor(const safetensors::File& file,
                                const std::string& path,
                                const std::string& name) {
  const auto found = file.tensors.find(name);
  if (found == file.tensors.end()) {
    throw InvalidArgument(path + ": no tensor named '" + name +
                          "' (run needs query, key, value, sequence_start "
                          "and sequence_end; softmax_aux is optional)");
  }
  return found->second;
}

void RejectUnknownTensors(const safetensors::File& file,
                          const std::string& path) {
  const std::set<std::string> known(std::begin(kInputNames),
                                    std::end(kInputNames));
  for (const auto& item : file.tensors) {
    // A misspelt softmax_aux would otherwise be dropped without a word.
    if (known.count(item.first) == 0) {
      throw InvalidArgument(path + ": unexpected tensor '" + item.first +
                            "' (run reads query, key, value, "
                            "sequence_start, sequence_end and softmax_aux)");
    }
  }
}

// Returns the bytes of key and value one call reads: per row, the attended
// positions (range and window) times num_kv_heads * (head_dim + head_dim_v)
// elements of the KV dtype. Arguments must be valid.
uint64_t KvBytesPerCall(const TensorView& key, const TensorView& value,
                        const TensorView& sequence_start,
                        const TensorView& sequence_end,
                        const Options& options) {
  const auto* starts = static_cast<const int32_t*>(sequence_start.data);
  const auto* ends = static_cast<const int32_t*>(sequence_end.data);
  const int64_t left =
      options.sliding_window ? options.sliding_window->left : -1;
  const int64_t right =
      options.sliding_window ? options.sliding_window->right : -1;
  uint64_t tokens = 0;
  for (int64_t b = 0; b < key.shape[0]; ++b) {
    int64_t begin, end;
    AttendedRange(starts[b], ends[b], key.shape[1], left, right, &begin, &end);
    tokens += static_cast<uint64_t>(end - begin);
  }
  return tokens * static_cast<uint64_t>(key.shape[2]) *
         static_cast<uint64_t>(key.shape[3] + value.shape[3]) *
         DTypeSize(key.dtype);
}

// Returns the median of `seconds` (not empty).
double Median(std::vector<double> seconds) {
  std::sort(seconds.begin(), seconds.end());
  const size_t middle = seconds.size() / 2;
  return seconds.size() % 2 == 1
             ? seconds[middle]
             : 0.5 * (seconds[middle - 1] + seconds[middle]);
}

// Returns a row-major view of `shape`. Throws InvalidArgument when its byte
// size would exceed 2^62: then the file's shapes are absurd (an extent of 0
// elsewhere keeps such a file small), and computing strides would overflow.
TensorView OutputView(void* data, DType dtype,
                      std::initializer_list<int64_t> shape) {
  unsigned __int128 span = DTypeSize(dtype);
  for (int64_t extent : shape) {
    span *= static_cast<unsigned __int128>(std::max<int64_t>(extent, 1));
    if (span > (static_cast<unsigned __int128>(1) << 62)) {
      throw InvalidArgument(
          "the shapes of query and value give an output too large to "
          "address");
    }
  }
  return TensorView::Contiguous(data, dtype, shape);
}

// Removes a stale OUTPUT after a failed run, unless it is INPUT or not a
// plain file (never a device node such as /dev/null).
void RemoveStaleOutput(const std::string& output, const std::string& input) {
  struct stat output_info;
  if (output.empty() || ::lstat(output.c_str(), &output_info) != 0 ||
      !S_ISREG(output_info.st_mode)) {
    return;
  }
  struct stat input_info;
  if (::stat(input.c_str(), &input_info) == 0 &&
      input_info.st_dev == output_info.st_dev &&
      input_info.st_ino == output_info.st_ino) {
    return;
  }
  ::unlink(output.c_str());
}

void RunOrThrow(const RunArguments& args) {
  Options options;
  if (args.scale_option->count() > 0) options.softmax_scale = args.scale;
  if (args.window_option->count() > 0) {
    options.sliding_window = ParseWindow(args.window);
  }
  if (args.soft_cap_option->count() > 0)
    options.logits_soft_cap = args.soft_cap;
  if (args.block_size_option->count() > 0) {
    options.block_size = args.block_size;
  }
  options.num_threads = args.threads;

  safetensors::File file;
  try {
    file = safetensors::ReadFile(args.input);
  } catch (const safetensors::IoError& e) {
    // An INPUT that cannot be read is a bad argument, not a failure of ours.
    throw InvalidArgument(e.what());
  }
  RejectUnknownTensors(file, args.input);
  const TensorView& query = RequireTensor(file, args.input, "query");
  const TensorView& key = RequireTensor(file, args.input, "key");
  const TensorView& value = RequireTensor(file, args.input, "value");
  const TensorView& sequence_start =
      RequireTensor(file, args.input, "sequence_start");
  const TensorView& sequence_end =
      RequireTensor(file, args.input, "sequence_end");
  const auto aux = file.tensors.find("softmax_aux");
  const TensorView* softmax_aux =
      aux == file.tensors.end() ? nullptr : &aux->second;

  // Validate against placeholder outputs first, so that shapes which are
  // merely absurd are rejected before anything is allocated for them.
  const int64_t batch = query.shape[0];
  const int64_t num_qo_heads = query.shape[1];
  const int64_t head_dim_v = value.shape[3];
  uint32_t placeholder = 0;
  TensorView output =
      OutputView(&placeholder, query.dtype, {batch, num_qo_heads, head_dim_v});
  TensorView lse = OutputView(&placeholder, DType::kF32, {batch, num_qo_heads});
  validate_arguments(query, key, value, sequence_start, sequence_end, output,
                     options, softmax_aux, &lse);

  // 32-bit words keep both buffers aligned for f32; at least one word so the
  // data pointers are never null, even for batch 0.
  const size_t output_bytes =
      static_cast<size_t>(output.NumElements()) * DTypeSize(query.dtype);
  std::vector<uint32_t> output_storage(output_bytes / 4 + 1);
  std::vector<float> lse_storage(static_cast<size_t>(lse.NumElements()) + 1);
  output.data = output_storage.data();
  lse.data = lse_storage.data();

  std::vector<double> seconds;
  for (int call = 0; call < args.repeat; ++call) {
    const auto begin = std::chrono::steady_clock::now();
    ragged_decode_attention(query, key, value, sequence_start, sequence_end,
                            output, options, softmax_aux, &lse);
    const auto end = std::chrono::steady_clock::now();
    seconds.push_back(std::chrono::duration<double>(end - begin).count());
  }
  if (args.repeat > 1) {
    const double median = Median(seconds);
    const uint64_t kv_bytes =
        KvBytesPerCall(key, value, sequence_start, sequence_end, options);
    std::fprintf(stderr,
                 "run: %d calls, median %.6f ms per call, %llu KV bytes read "
                 "per call, %.3f GB/s\n",
                 args.repeat, median * 1e3,
                 static_cast<unsigned long long>(kv_bytes),
                 median > 0 ? kv_bytes / median * 1e-9 : 0.0);
  }

  safetensors::WriteFile(args.output, {{"output", output}, {"lse", lse}});
}

int Run(const RunArguments& args) {
  int status = kExitOk;
  try {
    RunOrThrow(args);
  } catch (const InvalidArgument& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    status = kExitBadInput;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "error: out of memory\n");
    status = kExitFailure;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    status = kExitFailure;
  }
  if (status != kExitOk) RemoveStaleOutput(args.output, args.input);
  return status;
}

}  // namespace

std::function<int()> AddRunCommand(CLI::App& app) {
  auto args = std::make_shared<RunArguments>();
  CLI::App* run = app.add_subcommand(
      "run", "Compute one call on the tensors of a safetensors file");
  run->add_option("input", args->input, "INPUT.safetensors")->required();
  run->add_option("-o,--output", args->output, "OUTPUT.safetensors")
      ->required();
  args->scale_option = run->add_option(
      "--scale", args->scale, "softmax_scale (default 1/sqrt(head_dim))");
  args->window_option =
      run->add_option("--window", args->window,
                      "sliding window around the query position; -1 "
                      "leaves a side unbounded")
          ->type_name("L,R");
  args->soft_cap_option = run->add_option("--soft-cap", args->soft_cap,
                                          "logits soft cap C > 0 (0: none)");
  args->block_size_option =
      run->add_option("--block-size", args->block_size,
                      "tokens per tile, >= 1 (default: chosen by the kernel)");
  run->add_option("--threads", args->threads,
                  "worker threads; 0 uses all cores");
  run->add_option("--repeat", args->repeat,
                  "run N times; print the median time per call, the KV "
                  "bytes read per call and GB/s on stderr")
      ->check(CLI::Range(1, 1 << 30))
      ->type_name("N");
  run->footer(kRunFooter);
  return [args] { return Run(*args); };
}

void RemoveOutputOfFailedRun(const CLI::App& app) {
  try {
    const CLI::App* run = app.get_subcommand("run");
    if (!run->parsed()) return;
    const CLI::Option* output = run->get_option("--output");
    const CLI::Option* input = run->get_option("input");
    if (output->results().size() != 1) return;
    const std::string input_path =
        input->results().size() == 1 ? input->results()[0] : std::string();
    RemoveStaleOutput(output->results()[0], input_path);
  } catch (const CLI::Error&) {
    // No run subcommand or no such option: nothing to remove.
  }
}

}  // namespace cli
}  // namespace raggedattn
