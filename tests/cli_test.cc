// `raggedattn run` end to end: the built binary on files written here, its
// output compared bitwise with the library called in process and within
// tolerance of the float64 reference; bad files, bad tensors and bad options
// give exit 2, an "error:" line and no output file.

#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <ostream>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "raggedattn/raggedattn.h"
#include "src/dtype.h"
#include "src/reference/reference.h"
#include "tests/test_files.h"
#include "tools/safetensors.h"

extern char** environ;

namespace raggedattn {
namespace {

using test_files::BuildImage;
using test_files::LittleEndian64;
using test_files::ScratchDirectory;

constexpr int64_t kBatch = 5;
constexpr int64_t kSeqLen = 37;
constexpr int64_t kNumKvHeads = 2;
constexpr int64_t kNumQoHeads = 6;
constexpr int64_t kHeadDim = 16;
constexpr int64_t kHeadDimV = 8;
constexpr int64_t kNumSinks = 2;

// Ranges with a full row, a start past 0, an empty row and a single token.
const int32_t kStarts[kBatch] = {0, 3, 10, 0, 5};
const int32_t kEnds[kBatch] = {37, 20, 10, 1, 36};

struct CliResult {
  int status = -1;  // exit status, or 128 + signal
  std::string out;
  std::string err;
  int64_t max_rss_bytes = 0;  // the process's peak resident set
};

std::string ReadText(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

void WriteBytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream file(path, std::ios::binary);
  file.write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(file.good()) << path;
}

bool Exists(const std::string& path) {
  struct stat info;
  return ::lstat(path.c_str(), &info) == 0;
}

// Owning storage for one tensor and a contiguous view of it.
struct Buffer {
  std::vector<uint32_t> words;
  TensorView view;
};

Buffer MakeBuffer(DType dtype, std::initializer_list<int64_t> shape) {
  Buffer buffer;
  int64_t count = 1;
  for (int64_t extent : shape) count *= extent;
  buffer.words.resize(static_cast<size_t>(count * DTypeSize(dtype) / 4 + 1));
  buffer.view = TensorView::Contiguous(buffer.words.data(), dtype, shape);
  return buffer;
}

Buffer RandomBuffer(DType dtype, std::initializer_list<int64_t> shape,
                    std::mt19937& rng) {
  Buffer buffer = MakeBuffer(dtype, shape);
  std::normal_distribution<float> normal;
  for (int64_t i = 0; i < buffer.view.NumElements(); ++i) {
    StoreFromF32(buffer.words.data(), dtype, i, normal(rng));
  }
  return buffer;
}

Buffer Int32Buffer(const int32_t* values, int64_t count) {
  Buffer buffer = MakeBuffer(DType::kI32, {count});
  std::memcpy(buffer.words.data(), values, count * sizeof(int32_t));
  return buffer;
}

enum class Sinks { kNone, kPerQoHead, kPerKvHead, kShared };

// The tensors of one input file.
struct Inputs {
  Buffer query, key, value, sequence_start, sequence_end;
  std::optional<Buffer> softmax_aux;

  std::vector<safetensors::NamedTensor> Named() const {
    std::vector<safetensors::NamedTensor> named = {
        {"query", query.view},
        {"key", key.view},
        {"value", value.view},
        {"sequence_start", sequence_start.view},
        {"sequence_end", sequence_end.view}};
    if (softmax_aux) named.push_back({"softmax_aux", softmax_aux->view});
    return named;
  }
  const TensorView* Aux() const {
    return softmax_aux ? &softmax_aux->view : nullptr;
  }
};

Inputs MakeInputs(DType query_dtype, DType kv_dtype, Sinks sinks,
                  DType aux_dtype = DType::kF32, uint32_t seed = 7) {
  std::mt19937 rng(seed);
  Inputs inputs;
  inputs.query =
      RandomBuffer(query_dtype, {kBatch, kNumQoHeads, kHeadDim}, rng);
  inputs.key =
      RandomBuffer(kv_dtype, {kBatch, kSeqLen, kNumKvHeads, kHeadDim}, rng);
  inputs.value =
      RandomBuffer(kv_dtype, {kBatch, kSeqLen, kNumKvHeads, kHeadDimV}, rng);
  inputs.sequence_start = Int32Buffer(kStarts, kBatch);
  inputs.sequence_end = Int32Buffer(kEnds, kBatch);
  switch (sinks) {
    case Sinks::kNone:
      break;
    case Sinks::kPerQoHead:
      inputs.softmax_aux =
          RandomBuffer(aux_dtype, {kNumQoHeads, kNumSinks}, rng);
      break;
    case Sinks::kPerKvHead:
      inputs.softmax_aux =
          RandomBuffer(aux_dtype, {kNumKvHeads, kNumSinks}, rng);
      // -inf is a valid sink that adds nothing.
      StoreFromF32(inputs.softmax_aux->words.data(), aux_dtype, 1,
                   -std::numeric_limits<float>::infinity());
      break;
    case Sinks::kShared:
      inputs.softmax_aux = RandomBuffer(aux_dtype, {kNumSinks}, rng);
      break;
  }
  return inputs;
}

// The library's answer, computed in this process.
struct Expected {
  Buffer output;
  Buffer lse;
};

Expected Compute(const Inputs& inputs, const Options& options) {
  const TensorView& query = inputs.query.view;
  Expected expected;
  expected.output = MakeBuffer(query.dtype, {query.shape[0], query.shape[1],
                                             inputs.value.view.shape[3]});
  expected.lse = MakeBuffer(DType::kF32, {query.shape[0], query.shape[1]});
  ragged_decode_attention(query, inputs.key.view, inputs.value.view,
                          inputs.sequence_start.view, inputs.sequence_end.view,
                          expected.output.view, options, inputs.Aux(),
                          &expected.lse.view);
  return expected;
}

// Expects the file at `path` to hold exactly `output` and `lse`, bitwise
// equal to the library's result and within the accuracy bound of the
// float64 reference.
void ExpectOutputFile(const std::string& path, const Inputs& inputs,
                      const Options& options) {
  const safetensors::File file = safetensors::ReadFile(path);
  ASSERT_EQ(file.tensors.size(), 2u);
  ASSERT_EQ(file.tensors.count("output"), 1u);
  ASSERT_EQ(file.tensors.count("lse"), 1u);
  const TensorView& output = file.tensors.at("output");
  const TensorView& lse = file.tensors.at("lse");
  const int64_t batch = inputs.query.view.shape[0];
  EXPECT_EQ(output.dtype, inputs.query.view.dtype);
  ASSERT_EQ(output.rank, 3);
  EXPECT_EQ(output.shape[0], batch);
  EXPECT_EQ(output.shape[1], kNumQoHeads);
  EXPECT_EQ(output.shape[2], kHeadDimV);
  EXPECT_EQ(lse.dtype, DType::kF32);
  ASSERT_EQ(lse.rank, 2);
  EXPECT_EQ(lse.shape[0], batch);
  EXPECT_EQ(lse.shape[1], kNumQoHeads);

  const Expected expected = Compute(inputs, options);
  EXPECT_EQ(std::memcmp(output.data, expected.output.view.data,
                        output.NumElements() * DTypeSize(output.dtype)),
            0)
      << "output differs from the library's";
  EXPECT_EQ(std::memcmp(lse.data, expected.lse.view.data,
                        lse.NumElements() * sizeof(float)),
            0)
      << "lse differs from the library's";

  const reference::Result oracle =
      reference::Compute(inputs.query.view, inputs.key.view, inputs.value.view,
                         inputs.sequence_start.view, inputs.sequence_end.view,
                         options, inputs.Aux());
  const reference::Error error = reference::Compare(oracle, output, &lse);
  EXPECT_LE(error.output, reference::OutputTolerance(output.dtype));
  EXPECT_LE(error.lse, reference::kLseTolerance);
}

// Runs the CLI with `args`; stdout and stderr go to files in `log_dir`.
CliResult RunCli(const std::vector<std::string>& args,
                 const std::string& log_dir) {
  const std::string out_path = log_dir + "/stdout";
  const std::string err_path = log_dir + "/stderr";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, out_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<std::string> strings = {RAGGEDATTN_CLI_PATH};
  strings.insert(strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& s : strings) argv.push_back(&s[0]);
  argv.push_back(nullptr);

  CliResult result;
  pid_t pid = 0;
  const int spawned = posix_spawn(&pid, RAGGEDATTN_CLI_PATH, &actions, nullptr,
                                  argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (spawned != 0) {
    ADD_FAILURE() << "cannot start " << RAGGEDATTN_CLI_PATH << ": "
                  << std::strerror(spawned);
    return result;
  }
  int status = 0;
  struct rusage usage = {};
  while (::wait4(pid, &status, 0, &usage) < 0 && errno == EINTR) {
  }
  result.max_rss_bytes = static_cast<int64_t>(usage.ru_maxrss) * 1024;
  result.status =
      WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  result.out = ReadText(out_path);
  result.err = ReadText(err_path);
  return result;
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(work_.path().empty());
    ASSERT_FALSE(logs_.path().empty());
    input_ = work_.path() + "/in.safetensors";
    output_ = work_.path() + "/out.safetensors";
  }

  CliResult Run(const std::vector<std::string>& args) {
    return RunCli(args, logs_.path());
  }

  // Runs `run input -o output extra...`.
  CliResult RunOn(const std::vector<std::string>& extra) {
    std::vector<std::string> args = {"run", input_, "-o", output_};
    args.insert(args.end(), extra.begin(), extra.end());
    return Run(args);
  }

  // Expects a bad-input failure: exit 2, stderr's first line starting with
  // "error:" and containing `needle`, and nothing left in the work directory
  // but the input.
  void ExpectBadInput(const CliResult& result, const std::string& needle) {
    EXPECT_EQ(result.status, 2) << result.err;
    ExpectErrorLine(result, needle);
    EXPECT_FALSE(Exists(output_));
    EXPECT_EQ(work_.Entries(), std::vector<std::string>{"in.safetensors"});
  }

  static void ExpectErrorLine(const CliResult& result,
                              const std::string& needle) {
    const std::string first_line = result.err.substr(0, result.err.find('\n'));
    EXPECT_EQ(first_line.rfind("error: ", 0), 0u) << result.err;
    EXPECT_NE(first_line.find(needle), std::string::npos)
        << "expected \"" << needle << "\" in: " << result.err;
    EXPECT_EQ(result.err.find("Sanitizer"), std::string::npos) << result.err;
  }

  ScratchDirectory work_;
  ScratchDirectory logs_;
  std::string input_;
  std::string output_;
};

// One valid run: dtypes, sinks and options; the CLI flags are derived from
// the same Options the in-process call uses.
struct RunCase {
  const char* name;
  DType query_dtype;
  DType kv_dtype;
  Sinks sinks;
  DType aux_dtype;
  Options options;
};

// Names the case in failure messages instead of dumping its bytes.
void PrintTo(const RunCase& c, std::ostream* os) { *os << c.name; }

std::string FormatFlag(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.17g", value);
  return text;
}

std::vector<std::string> FlagsFor(const Options& options) {
  std::vector<std::string> flags;
  if (options.softmax_scale) {
    flags.insert(flags.end(), {"--scale", FormatFlag(*options.softmax_scale)});
  }
  if (options.sliding_window) {
    flags.insert(
        flags.end(),
        {"--window", std::to_string(options.sliding_window->left) + "," +
                         std::to_string(options.sliding_window->right)});
  }
  if (options.logits_soft_cap) {
    flags.insert(flags.end(),
                 {"--soft-cap", FormatFlag(*options.logits_soft_cap)});
  }
  if (options.block_size) {
    flags.insert(flags.end(),
                 {"--block-size", std::to_string(*options.block_size)});
  }
  if (options.num_threads != 0) {
    flags.insert(flags.end(),
                 {"--threads", std::to_string(options.num_threads)});
  }
  return flags;
}

Options MakeOptions(std::optional<double> scale,
                    std::optional<SlidingWindow> window,
                    std::optional<double> soft_cap,
                    std::optional<int64_t> block_size, int threads) {
  Options options;
  options.softmax_scale = scale;
  options.sliding_window = window;
  options.logits_soft_cap = soft_cap;
  options.block_size = block_size;
  options.num_threads = threads;
  return options;
}

class CliRunTest : public CliTest,
                   public ::testing::WithParamInterface<RunCase> {};

TEST_P(CliRunTest, OutputMatchesLibraryAndReference) {
  const RunCase& c = GetParam();
  const Inputs inputs =
      MakeInputs(c.query_dtype, c.kv_dtype, c.sinks, c.aux_dtype);
  safetensors::WriteFile(input_, inputs.Named());

  const CliResult result = RunOn(FlagsFor(c.options));
  ASSERT_EQ(result.status, 0) << result.err;
  EXPECT_EQ(result.err, "");
  ExpectOutputFile(output_, inputs, c.options);
  EXPECT_EQ(work_.Entries(),
            (std::vector<std::string>{"in.safetensors", "out.safetensors"}));
}

constexpr DType kF32 = DType::kF32;
constexpr DType kBF16 = DType::kBF16;
constexpr DType kF16 = DType::kF16;
const SlidingWindow kLastFive = {4, 0};
const SlidingWindow kLeftThree = {3, -1};
const SlidingWindow kOwnPosition = {0, 0};

INSTANTIATE_TEST_SUITE_P(
    Cases, CliRunTest,
    ::testing::Values(
        RunCase{"F32", kF32, kF32, Sinks::kNone, kF32, {}},
        RunCase{"BF16", kBF16, kBF16, Sinks::kNone, kF32, {}},
        RunCase{"F16", kF16, kF16, Sinks::kNone, kF32, {}},
        RunCase{"Scale", kBF16, kBF16, Sinks::kNone, kF32,
                MakeOptions(0.37, {}, {}, {}, 0)},
        RunCase{"WindowLastFive", kF16, kF16, Sinks::kNone, kF32,
                MakeOptions({}, kLastFive, {}, {}, 0)},
        RunCase{"WindowLeftOnly", kF32, kBF16, Sinks::kNone, kF32,
                MakeOptions({}, kLeftThree, {}, {}, 0)},
        // A scale of 2 makes logits exceed the cap, so the cap matters.
        RunCase{"SoftCapAndBlockSize", kF32, kBF16, Sinks::kNone, kF32,
                MakeOptions(2.0, {}, 1.5, 3, 0)},
        RunCase{"ThreadsAndBlockSizeOne", kBF16, kF16, Sinks::kNone, kF32,
                MakeOptions({}, {}, {}, 1, 3)},
        RunCase{"SinksPerQoHead", kF32, kF32, Sinks::kPerQoHead, kF32, {}},
        RunCase{"SinksPerKvHead", kF16, kBF16, Sinks::kPerKvHead, kF16, {}},
        RunCase{"SinksSharedWithWindow", kBF16, kF32, Sinks::kShared, kBF16,
                MakeOptions({}, kOwnPosition, {}, {}, 0)},
        RunCase{"Everything", kF32, kF32, Sinks::kPerQoHead, kF32,
                MakeOptions(0.8, kLastFive, 3.0, 5, 2)}),
    [](const ::testing::TestParamInfo<RunCase>& info) {
      return std::string(info.param.name);
    });

TEST_F(CliTest, EmptyBatchIsValid) {
  std::mt19937 rng(3);
  Inputs inputs;
  inputs.query = RandomBuffer(kF32, {0, kNumQoHeads, kHeadDim}, rng);
  inputs.key = RandomBuffer(kF32, {0, kSeqLen, kNumKvHeads, kHeadDim}, rng);
  inputs.value = RandomBuffer(kF32, {0, kSeqLen, kNumKvHeads, kHeadDimV}, rng);
  inputs.sequence_start = Int32Buffer(kStarts, 0);
  inputs.sequence_end = Int32Buffer(kEnds, 0);
  safetensors::WriteFile(input_, inputs.Named());

  const CliResult result = RunOn({});
  ASSERT_EQ(result.status, 0) << result.err;
  ExpectOutputFile(output_, inputs, {});
}

// The issue's bound on `run`: peak memory within the input file, the output
// and 64 MiB. The input is mapped, so its pages count once they are read.
TEST_F(CliTest, PeakMemoryIsInputPlusOutputPlus64MiB) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer's shadow memory and quarantine add to it";
#else
  // 256 MiB of bf16 KV: 4 rows of 16384 tokens, 8 KV heads of 128. A child
  // process writes it: the CLI's peak as the kernel reports it includes the
  // peak of the process it was spawned from, which must stay small.
  const pid_t writer = ::fork();
  ASSERT_GE(writer, 0);
  if (writer == 0) {
    constexpr int64_t kB = 4, kS = 16384, kHkv = 8, kHq = 32, kD = 128;
    Inputs inputs;
    inputs.query = MakeBuffer(DType::kBF16, {kB, kHq, kD});
    inputs.key = MakeBuffer(DType::kBF16, {kB, kS, kHkv, kD});
    inputs.value = MakeBuffer(DType::kBF16, {kB, kS, kHkv, kD});
    // Values of many signs and exponents, cheaply: the bits of an LCG with
    // each bf16's exponent kept below 2.
    for (Buffer* buffer : {&inputs.query, &inputs.key, &inputs.value}) {
      uint32_t x = 12345;
      for (uint32_t& word : buffer->words) {
        x = x * 1664525u + 1013904223u;
        word = x & ~0x40004000u;
      }
    }
    const int32_t starts[kB] = {0, 0, 100, 16000};
    const int32_t ends[kB] = {16384, 8000, 16384, 16384};
    inputs.sequence_start = Int32Buffer(starts, kB);
    inputs.sequence_end = Int32Buffer(ends, kB);
    safetensors::WriteFile(input_, inputs.Named());
    ::_exit(0);
  }
  int written = -1;
  while (::waitpid(writer, &written, 0) < 0 && errno == EINTR) {
  }
  ASSERT_TRUE(WIFEXITED(written) && WEXITSTATUS(written) == 0);

  const CliResult result = RunOn({"--threads", "2"});
  ASSERT_EQ(result.status, 0) << result.err;
  struct stat input_info, output_info;
  ASSERT_EQ(::stat(input_.c_str(), &input_info), 0);
  ASSERT_EQ(::stat(output_.c_str(), &output_info), 0);
  const int64_t bound = static_cast<int64_t>(input_info.st_size) +
                        static_cast<int64_t>(output_info.st_size) +
                        (int64_t{64} << 20);
  EXPECT_LE(result.max_rss_bytes, bound)
      << "peak " << (result.max_rss_bytes >> 20) << " MiB, input "
      << (input_info.st_size >> 20) << " MiB";
  // The attended rows were read (and only they: 41052 of 65536 tokens): a
  // bound met by not reading would prove nothing.
  const int64_t attended_bytes = int64_t{41052} * 8 * 128 * 2 * 2;
  EXPECT_GE(result.max_rss_bytes, attended_bytes);
#endif
}

TEST_F(CliTest, RowsThatAttendToNothing) {
  Inputs inputs = MakeInputs(kF32, kF32, Sinks::kNone);
  const int32_t starts[kBatch] = {4, 0, 37, 9, 0};
  const int32_t ends[kBatch] = {4, 0, 37, 9, 0};
  inputs.sequence_start = Int32Buffer(starts, kBatch);
  inputs.sequence_end = Int32Buffer(ends, kBatch);
  safetensors::WriteFile(input_, inputs.Named());

  const CliResult result = RunOn({});
  ASSERT_EQ(result.status, 0) << result.err;
  ExpectOutputFile(output_, inputs, {});
  const safetensors::File file = safetensors::ReadFile(output_);
  const auto* lse = static_cast<const float*>(file.tensors.at("lse").data);
  const auto* output =
      static_cast<const float*>(file.tensors.at("output").data);
  for (int64_t i = 0; i < kBatch * kNumQoHeads; ++i) {
    EXPECT_EQ(lse[i], -std::numeric_limits<float>::infinity());
  }
  for (int64_t i = 0; i < kBatch * kNumQoHeads * kHeadDimV; ++i) {
    EXPECT_EQ(output[i], 0.0f);
  }
}

// Returns the KV bytes one call reads, counted position by position.
uint64_t CountKvBytes(const Options& options, size_t kv_dtype_size) {
  uint64_t tokens = 0;
  for (int64_t b = 0; b < kBatch; ++b) {
    const int64_t position = kEnds[b] - 1;
    for (int64_t j = kStarts[b]; j < kEnds[b]; ++j) {
      const SlidingWindow window =
          options.sliding_window.value_or(SlidingWindow{-1, -1});
      if (window.left >= 0 && j < position - window.left) continue;
      if (window.right >= 0 && j > position + window.right) continue;
      ++tokens;
    }
  }
  return tokens * kNumKvHeads * (kHeadDim + kHeadDimV) * kv_dtype_size;
}

TEST_F(CliTest, RepeatReportsTimeBytesAndBandwidth) {
  const Inputs inputs = MakeInputs(kF32, kBF16, Sinks::kNone);
  safetensors::WriteFile(input_, inputs.Named());
  const Options options = MakeOptions({}, kLastFive, {}, {}, 0);

  std::vector<std::string> flags = FlagsFor(options);
  flags.insert(flags.end(), {"--repeat", "3"});
  const CliResult result = RunOn(flags);
  ASSERT_EQ(result.status, 0) << result.err;
  const std::regex pattern(
      R"(3 calls, median ([0-9.]+) ms per call, ([0-9]+) KV bytes read per )"
      R"(call, ([0-9.]+) GB/s)");
  std::smatch match;
  ASSERT_TRUE(std::regex_search(result.err, match, pattern)) << result.err;
  const double milliseconds = std::stod(match[1]);
  const uint64_t bytes = std::stoull(match[2]);
  const double gigabytes_per_second = std::stod(match[3]);
  EXPECT_EQ(bytes, CountKvBytes(options, 2));
  EXPECT_GE(milliseconds, 0.0);
  // The three figures must agree with each other (to print precision).
  if (milliseconds > 0.01) {
    EXPECT_NEAR(gigabytes_per_second, bytes / (milliseconds * 1e-3) * 1e-9,
                0.01 * gigabytes_per_second + 0.002);
  }
  ExpectOutputFile(output_, inputs, options);
}

TEST_F(CliTest, HandBuiltFileWithMisalignedTensors) {
  // Written byte by byte, not by the writer: tensors in an unusual order,
  // a __metadata__ entry, a 2-byte gap, and f32 query and key at offsets
  // that are not multiples of 4.
  const Inputs inputs = MakeInputs(kF32, kF32, Sinks::kShared, kF16);
  struct Part {
    const char* name;
    const TensorView* view;
    const char* dtype;
    std::string shape;
  };
  const Part parts[] = {
      {"softmax_aux", inputs.Aux(), "F16", "[2]"},
      {"query", &inputs.query.view, "F32", "[5,6,16]"},
      {"sequence_end", &inputs.sequence_end.view, "I32", "[5]"},
      {"key", &inputs.key.view, "F32", "[5,37,2,16]"},
      {"value", &inputs.value.view, "F32", "[5,37,2,8]"},
      {"sequence_start", &inputs.sequence_start.view, "I32", "[5]"},
  };
  std::string header = R"({"__metadata__":{"format":"hand"})";
  std::vector<uint8_t> data = {0xAB, 0xCD};  // the gap
  for (const Part& part : parts) {
    const auto* bytes = static_cast<const uint8_t*>(part.view->data);
    const size_t size = part.view->NumElements() * DTypeSize(part.view->dtype);
    header += std::string(",\"") + part.name + "\":{\"dtype\":\"" + part.dtype +
              "\",\"shape\":" + part.shape + ",\"data_offsets\":[" +
              std::to_string(data.size()) + "," +
              std::to_string(data.size() + size) + "]}";
    data.insert(data.end(), bytes, bytes + size);
  }
  header += "}";
  // 8 + header length is a multiple of 4 here; with the 2-byte aux and the
  // gap every f32 and i32 tensor then starts 2 bytes off alignment.
  header.append((4 - header.size() % 4) % 4, ' ');
  WriteBytes(input_, BuildImage(header, data));

  const CliResult result = RunOn({"--window", "9,0"});
  ASSERT_EQ(result.status, 0) << result.err;
  ExpectOutputFile(output_, inputs,
                   MakeOptions({}, SlidingWindow{9, 0}, {}, {}, 0));
}

TEST_F(CliTest, HelpExitsZeroAndDocumentsExitStatus) {
  const CliResult result = Run({"run", "--help"});
  EXPECT_EQ(result.status, 0);
  EXPECT_NE(result.out.find("--repeat"), std::string::npos) << result.out;
  EXPECT_NE(result.out.find("Exit status"), std::string::npos) << result.out;
}

TEST_F(CliTest, MissingSubcommandIsBadInput) {
  const CliResult result = Run({});
  EXPECT_EQ(result.status, 2);
  ExpectErrorLine(result, "subcommand");
}

// A valid input file's image, to corrupt.
std::vector<uint8_t> ValidImage() {
  return safetensors::Serialize(MakeInputs(kF32, kF32, Sinks::kNone).Named());
}

TEST_F(CliTest, TruncatedFiles) {
  const std::vector<uint8_t> valid = ValidImage();
  for (size_t size : {size_t{0}, size_t{5}, size_t{60}, valid.size() - 1}) {
    SCOPED_TRACE(size);
    WriteBytes(input_,
               std::vector<uint8_t>(valid.begin(), valid.begin() + size));
    ExpectBadInput(RunOn({}), input_ + ": ");
  }
}

TEST_F(CliTest, GarbageHeader) {
  std::vector<uint8_t> image = ValidImage();
  const char garbage[] = "\x01garbage, not JSON";
  std::memcpy(image.data() + 8, garbage, sizeof(garbage) - 1);
  WriteBytes(input_, image);
  ExpectBadInput(RunOn({}), "not valid JSON");
}

TEST_F(CliTest, HugeHeaderLength) {
  for (uint64_t length : {uint64_t{1} << 62, ~uint64_t{0}}) {
    std::vector<uint8_t> image = ValidImage();
    const std::vector<uint8_t> field = LittleEndian64(length);
    std::copy(field.begin(), field.end(), image.begin());
    WriteBytes(input_, image);
    ExpectBadInput(RunOn({}), "header length");
  }
}

// Returns a header with the five required tensors of a 1-row problem
// (Hq = Hkv = 1, S = 2, D = Dv = 1, all F32/I32), where `key_entry`
// replaces key's entry. The data section is 28 bytes.
std::string SmallHeader(const std::string& key_entry) {
  return R"({"query":{"dtype":"F32","shape":[1,1,1],"data_offsets":[0,4]},)"
         R"("key":)" +
         key_entry + "," +
         R"("value":{"dtype":"F32","shape":[1,2,1,1],)"
         R"("data_offsets":[12,20]},)"
         R"("sequence_start":{"dtype":"I32","shape":[1],)"
         R"("data_offsets":[20,24]},)"
         R"("sequence_end":{"dtype":"I32","shape":[1],)"
         R"("data_offsets":[24,28]}})";
}

TEST_F(CliTest, SmallHandBuiltFileRuns) {
  // The fixture of the malformed-file tests below, valid: checks that each
  // of them fails for the reason it names and not for another.
  std::vector<uint8_t> data(28, 0);
  const float query = 1, keys[2] = {0, 1}, values[2] = {2, 4};
  const int32_t start = 0, end = 2;
  std::memcpy(&data[0], &query, 4);
  std::memcpy(&data[4], keys, 8);
  std::memcpy(&data[12], values, 8);
  std::memcpy(&data[20], &start, 4);
  std::memcpy(&data[24], &end, 4);
  WriteBytes(input_, BuildImage(SmallHeader(R"({"dtype":"F32","shape":)"
                                            R"([1,2,1,1],"data_offsets":)"
                                            R"([4,12]})"),
                                data));
  const CliResult result = RunOn({"--scale", "1"});
  ASSERT_EQ(result.status, 0) << result.err;
  const safetensors::File file = safetensors::ReadFile(output_);
  // Weights e^0 and e^1 on values 2 and 4.
  const double e = std::exp(1.0);
  EXPECT_NEAR(static_cast<const float*>(file.tensors.at("output").data)[0],
              (2 + 4 * e) / (1 + e), 1e-6);
  EXPECT_NEAR(static_cast<const float*>(file.tensors.at("lse").data)[0],
              std::log(1 + e), 1e-6);
}

TEST_F(CliTest, MalformedEntries) {
  struct Case {
    std::string key_entry;
    std::string needle;
  };
  const Case cases[] = {
      {R"({"dtype":"F32","shape":[1,2,1,1],"data_offsets":[0,8]})", "overlap"},
      {R"({"dtype":"F32","shape":[1,2,1,1],"data_offsets":[24,32]})",
       "runs past the data section"},
      {R"({"dtype":"F32","shape":[1,2,1,1],"data_offsets":[400000,400008]})",
       "runs past the data section"},
      {R"({"dtype":"F64","shape":[1,1,1,1],"data_offsets":[4,12]})",
       "dtype 'F64' is not supported"},
      {R"({"dtype":"F32","shape":[1,3,1,1],"data_offsets":[4,12]})", "need 12"},
      {R"({"dtype":"F32","shape":[1,-2,1,1],"data_offsets":[4,12]})",
       "negative"},
      {R"({"dtype":"F32","shape":"1,2,1,1","data_offsets":[4,12]})",
       "\"shape\" is a JSON string"},
      {R"([1,2])", "entry is a JSON array"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.key_entry);
    WriteBytes(input_,
               BuildImage(SmallHeader(c.key_entry), std::vector<uint8_t>(28)));
    ExpectBadInput(RunOn({}), c.needle);
  }
}

TEST_F(CliTest, MissingAndUnknownTensors) {
  Inputs inputs = MakeInputs(kF32, kF32, Sinks::kNone);
  std::vector<safetensors::NamedTensor> named = inputs.Named();
  named.erase(named.begin() + 2);  // value
  safetensors::WriteFile(input_, named);
  ExpectBadInput(RunOn({}), "no tensor named 'value'");

  named = inputs.Named();
  named[0].name = "queries";
  safetensors::WriteFile(input_, named);
  ExpectBadInput(RunOn({}), "unexpected tensor 'queries'");

  named = inputs.Named();
  named.push_back({"softmax_sinks", inputs.query.view});
  safetensors::WriteFile(input_, named);
  ExpectBadInput(RunOn({}), "unexpected tensor 'softmax_sinks'");
}

TEST_F(CliTest, LibraryRulesAreBadInput) {
  Inputs inputs = MakeInputs(kF32, kF32, Sinks::kNone);
  const int32_t ends[kBatch] = {37, 38, 10, 1, 36};
  inputs.sequence_end = Int32Buffer(ends, kBatch);
  safetensors::WriteFile(input_, inputs.Named());
  ExpectBadInput(RunOn({}), "sequence_end[1] = 38 exceeds seq_len 37");

  inputs = MakeInputs(kF32, kF32, Sinks::kNone);
  std::mt19937 rng(1);
  inputs.value =
      RandomBuffer(kBF16, {kBatch, kSeqLen, kNumKvHeads, kHeadDimV}, rng);
  safetensors::WriteFile(input_, inputs.Named());
  ExpectBadInput(RunOn({}), "value: dtype bf16");

  inputs = MakeInputs(kF32, kF32, Sinks::kPerQoHead);
  StoreFromF32(inputs.softmax_aux->words.data(), kF32, 3, std::nanf(""));
  safetensors::WriteFile(input_, inputs.Named());
  ExpectBadInput(RunOn({}), "softmax_aux[1, 1] = nan");
}

TEST_F(CliTest, BadOptionValues) {
  safetensors::WriteFile(input_, MakeInputs(kF32, kF32, Sinks::kNone).Named());
  struct Case {
    std::vector<std::string> flags;
    std::string needle;
  };
  const Case cases[] = {
      {{"--window", "1"}, "--window 1"},
      {{"--window", "1,x"}, "--window 1,x"},
      {{"--window", "1,2,3"}, "--window 1,2,3"},
      {{"--window", "-2,0"}, "sliding_window.left = -2"},
      {{"--block-size", "0"}, "block_size = 0"},
      {{"--block-size", "abc"}, "--block-size"},
      {{"--threads", "-1"}, "num_threads = -1"},
      {{"--scale", "nan"}, "softmax_scale = nan"},
      {{"--scale", "inf"}, "softmax_scale = inf"},
      {{"--soft-cap", "-1"}, "logits_soft_cap = -1"},
      {{"--repeat", "0"}, "--repeat"},
      {{"--no-such-option"}, "no-such-option"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.flags[0] + " " + (c.flags.size() > 1 ? c.flags[1] : ""));
    ExpectBadInput(RunOn(c.flags), c.needle);
  }
  ExpectBadInput(Run({"run", input_}), "--output is required");
}

TEST_F(CliTest, MissingInputIsBadInput) {
  const CliResult result =
      Run({"run", work_.path() + "/absent.safetensors", "-o", output_});
  EXPECT_EQ(result.status, 2);
  ExpectErrorLine(result, "cannot open");
  EXPECT_TRUE(work_.Entries().empty());
}

TEST_F(CliTest, FailedRunRemovesStaleOutputButNeverTheInput) {
  safetensors::WriteFile(input_, MakeInputs(kF32, kF32, Sinks::kNone).Named());
  WriteBytes(output_, {1, 2, 3});
  ExpectBadInput(RunOn({"--block-size", "0"}), "block_size");
  WriteBytes(output_, {1, 2, 3});
  ExpectBadInput(RunOn({"--window", "1"}), "--window");
  WriteBytes(output_, {1, 2, 3});
  ExpectBadInput(RunOn({"--repeat", "0"}), "--repeat");

  // Failing with OUTPUT = INPUT must not delete the input.
  const CliResult result = Run({"run", input_, "-o", input_, "--scale", "nan"});
  EXPECT_EQ(result.status, 2);
  EXPECT_TRUE(Exists(input_));
}

TEST_F(CliTest, UnwritableOutputIsFailure) {
  safetensors::WriteFile(input_, MakeInputs(kF32, kF32, Sinks::kNone).Named());
  CliResult result =
      Run({"run", input_, "-o", work_.path() + "/no/such/dir/out"});
  EXPECT_EQ(result.status, 1);
  ExpectErrorLine(result, "cannot create a temporary file");

  const std::string directory = work_.path() + "/directory";
  ASSERT_EQ(::mkdir(directory.c_str(), 0755), 0);
  result = Run({"run", input_, "-o", directory});
  EXPECT_EQ(result.status, 1);
  ExpectErrorLine(result, "not a regular file");
  EXPECT_EQ(work_.Entries(),
            (std::vector<std::string>{"directory", "in.safetensors"}));
}

}  // namespace
}  // namespace raggedattn
