// The safetensors reader and writer of the CLI: round trips, the writer's
// bytes checked without the reader, every malformed-file rule, and random
// mutations of a valid file that must parse or throw FormatError, never
// crash or read out of bounds (ASan runs this too).

#include "tools/safetensors.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "raggedattn/raggedattn.h"
#include "tests/test_files.h"

namespace raggedattn {
namespace safetensors {
namespace {

using ::raggedattn::test_files::BuildImage;
using ::raggedattn::test_files::ScratchDirectory;

File ParseImage(const std::vector<uint8_t>& image) {
  return Parse(nullptr, image.data(), image.size());
}

// Expects Parse to throw FormatError whose message contains `needle`.
void ExpectFormatError(const std::vector<uint8_t>& image,
                       const std::string& needle) {
  try {
    ParseImage(image);
    ADD_FAILURE() << "parsed, expected an error containing: " << needle;
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
        << "message: " << e.what();
  }
}

std::vector<uint8_t> FloatBytes(const std::vector<float>& values) {
  std::vector<uint8_t> bytes(values.size() * 4);
  std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

// A header with one tensor "t".
std::string OneTensorHeader(const std::string& dtype, const std::string& shape,
                            const std::string& offsets) {
  return R"({"t":{"dtype":)" + dtype + R"(,"shape":)" + shape +
         R"(,"data_offsets":)" + offsets + "}}";
}

TEST(SafetensorsRead, HandBuiltFileWithMetadataAndGap) {
  // An I32 [2] at [0, 8), 2 unused bytes, an F32 [2, 1] at [10, 18), which
  // is misaligned for f32 and must come back as an aligned copy.
  const std::string header =
      R"({"__metadata__":{"format":"pt"},)"
      R"("b":{"dtype":"F32","shape":[2,1],"data_offsets":[10,18]},)"
      R"("a":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})";
  std::vector<uint8_t> data(18, 0xEE);
  const int32_t ints[2] = {-7, 123456};
  const float floats[2] = {1.5f, -0.25f};
  std::memcpy(data.data(), ints, 8);
  std::memcpy(data.data() + 10, floats, 8);
  // The views point into `image` (or into copies owned by `file`).
  const std::vector<uint8_t> image = BuildImage(header, data);
  const File file = ParseImage(image);

  ASSERT_EQ(file.tensors.size(), 2u);
  const TensorView& a = file.tensors.at("a");
  EXPECT_EQ(a.dtype, DType::kI32);
  ASSERT_EQ(a.rank, 1);
  EXPECT_EQ(a.shape[0], 2);
  EXPECT_EQ(static_cast<const int32_t*>(a.data)[0], -7);
  EXPECT_EQ(static_cast<const int32_t*>(a.data)[1], 123456);
  const TensorView& b = file.tensors.at("b");
  EXPECT_EQ(b.dtype, DType::kF32);
  ASSERT_EQ(b.rank, 2);
  EXPECT_EQ(b.shape[0], 2);
  EXPECT_EQ(b.shape[1], 1);
  EXPECT_EQ(b.strides[0], 1);
  EXPECT_EQ(b.strides[1], 1);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data) % alignof(float), 0u);
  EXPECT_EQ(static_cast<const float*>(b.data)[0], 1.5f);
  EXPECT_EQ(static_cast<const float*>(b.data)[1], -0.25f);
}

TEST(SafetensorsRead, AlignedTensorsAreNotCopied) {
  std::vector<uint8_t> data = FloatBytes({1, 2, 3});
  const std::string header = OneTensorHeader(R"("F32")", "[3]", "[0,12]");
  // Pad the header so the data section starts 8-aligned.
  const std::string padded = header + std::string(8 - header.size() % 8, ' ');
  const std::vector<uint8_t> image = BuildImage(padded, data);
  const File file = ParseImage(image);
  EXPECT_EQ(file.tensors.at("t").data, image.data() + 8 + padded.size());
}

TEST(SafetensorsWrite, BytesFollowTheFormat) {
  // Mixed widths given narrowest first: the writer must still align each.
  const uint16_t halves[3] = {0x3C00, 0x4000, 0xC000};
  const float floats[4] = {1, 2, 3, 4};
  const int32_t ints[1] = {42};
  const std::vector<NamedTensor> tensors = {
      {"h", TensorView::Contiguous(halves, DType::kF16, {3})},
      {"f", TensorView::Contiguous(floats, DType::kF32, {2, 2})},
      {"i", TensorView::Contiguous(ints, DType::kI32, {})},
  };
  const std::vector<uint8_t> image = Serialize(tensors, {{"note", "x"}});

  ASSERT_GE(image.size(), 8u);
  uint64_t length = 0;
  for (int i = 7; i >= 0; --i) length = (length << 8) | image[i];
  ASSERT_LE(8 + length, image.size());
  EXPECT_EQ((8 + length) % 8, 0u) << "data section must start 8-aligned";
  const auto header = nlohmann::json::parse(
      std::string(image.begin() + 8, image.begin() + 8 + length));
  EXPECT_EQ(header["__metadata__"]["note"], "x");
  EXPECT_EQ(header["h"]["dtype"], "F16");
  EXPECT_EQ(header["f"]["dtype"], "F32");
  EXPECT_EQ(header["i"]["dtype"], "I32");
  EXPECT_EQ(header["f"]["shape"], nlohmann::json::array({2, 2}));
  EXPECT_EQ(header["i"]["shape"], nlohmann::json::array());

  // No gaps, every tensor aligned, the data section exactly covered.
  const uint8_t* data = image.data() + 8 + length;
  const uint64_t data_size = image.size() - 8 - length;
  uint64_t covered = 0;
  for (const char* name : {"h", "f", "i"}) {
    const uint64_t begin = header[name]["data_offsets"][0];
    const uint64_t end = header[name]["data_offsets"][1];
    EXPECT_EQ(begin % (header[name]["dtype"] == "F16" ? 2 : 4), 0u) << name;
    covered += end - begin;
  }
  EXPECT_EQ(covered, data_size);
  const uint64_t f_begin = header["f"]["data_offsets"][0];
  const uint64_t h_begin = header["h"]["data_offsets"][0];
  const uint64_t i_begin = header["i"]["data_offsets"][0];
  EXPECT_EQ(std::memcmp(data + f_begin, floats, sizeof(floats)), 0);
  EXPECT_EQ(std::memcmp(data + h_begin, halves, sizeof(halves)), 0);
  EXPECT_EQ(std::memcmp(data + i_begin, ints, sizeof(ints)), 0);
}

TEST(SafetensorsWrite, RoundTripsStridedAndEmptyTensors) {
  // A [2, 3] view with a row stride of 5 into a 10-element buffer.
  std::vector<float> buffer(10);
  for (int i = 0; i < 10; ++i) buffer[i] = static_cast<float>(i);
  const TensorView strided =
      TensorView::Strided(buffer.data(), DType::kF32, {2, 3}, {5, 1});
  const uint16_t bf16[4] = {1, 2, 3, 4};
  const std::vector<NamedTensor> tensors = {
      {"strided", strided},
      {"empty", TensorView::Contiguous(buffer.data(), DType::kBF16, {0, 7})},
      {"rank4", TensorView::Contiguous(bf16, DType::kBF16, {1, 2, 1, 2})},
  };
  const std::vector<uint8_t> image = Serialize(tensors);
  const File file = ParseImage(image);

  const TensorView& read = file.tensors.at("strided");
  ASSERT_EQ(read.rank, 2);
  const float expected[6] = {0, 1, 2, 5, 6, 7};
  EXPECT_EQ(std::memcmp(read.data, expected, sizeof(expected)), 0);
  EXPECT_EQ(file.tensors.at("empty").shape[0], 0);
  EXPECT_EQ(file.tensors.at("empty").shape[1], 7);
  EXPECT_EQ(file.tensors.at("empty").NumElements(), 0);
  const TensorView& rank4 = file.tensors.at("rank4");
  ASSERT_EQ(rank4.rank, 4);
  EXPECT_EQ(rank4.strides[0], 4);
  EXPECT_EQ(std::memcmp(rank4.data, bf16, sizeof(bf16)), 0);
}

TEST(SafetensorsWrite, RejectsReservedAndRepeatedNames) {
  const float x = 0;
  const TensorView view = TensorView::Contiguous(&x, DType::kF32, {1});
  EXPECT_THROW(Serialize({{"__metadata__", view}}), InvalidArgument);
  EXPECT_THROW(Serialize({{"a", view}, {"a", view}}), InvalidArgument);
}

TEST(SafetensorsRead, RejectsBadLengths) {
  const std::vector<uint8_t> valid =
      BuildImage(OneTensorHeader(R"("F32")", "[1]", "[0,4]"), FloatBytes({1}));
  ExpectFormatError({}, "too short");
  ExpectFormatError({1, 0, 0}, "too short");
  for (uint64_t length : {uint64_t{0}, uint64_t{1}}) {
    std::vector<uint8_t> image = valid;
    for (int i = 0; i < 8; ++i) image[i] = (length >> (8 * i)) & 0xFF;
    ExpectFormatError(image, "below 2");
  }
  for (uint64_t length :
       {uint64_t{1} << 62, ~uint64_t{0}, uint64_t{valid.size() - 7}}) {
    std::vector<uint8_t> image = valid;
    for (int i = 0; i < 8; ++i) image[i] = (length >> (8 * i)) & 0xFF;
    ExpectFormatError(image, "exceeds the");
  }
  // Truncations anywhere: inside the length, the header, the data.
  for (size_t size : {size_t{7}, size_t{8}, size_t{20}, valid.size() - 1}) {
    ExpectFormatError(std::vector<uint8_t>(valid.begin(), valid.begin() + size),
                      "");
  }
}

TEST(SafetensorsRead, RejectsHeadersOverTheCap) {
  // A header of kMaxHeaderBytes + 1 spaces: the length check must refuse it
  // before any parsing.
  std::vector<uint8_t> image(8 + kMaxHeaderBytes + 1, ' ');
  const uint64_t length = kMaxHeaderBytes + 1;
  for (int i = 0; i < 8; ++i) image[i] = (length >> (8 * i)) & 0xFF;
  ExpectFormatError(image, "-byte limit");
}

TEST(SafetensorsRead, RejectsBadJson) {
  ExpectFormatError(BuildImage("this is not json", {}), "not valid JSON");
  ExpectFormatError(BuildImage("{\"t\":", {}), "not valid JSON");
  ExpectFormatError(BuildImage(std::string("{\"\xff\xfe\":1}"), {}),
                    "not valid JSON");
  ExpectFormatError(BuildImage("[1,2]", {}), "is a JSON array");
  ExpectFormatError(BuildImage("\"text\"", {}), "is a JSON string");
  ExpectFormatError(BuildImage(std::string(1000, '[') + "]", {}),
                    "deeper than");
  ExpectFormatError(BuildImage(R"({"t":1})", {}), "entry is a JSON number");
  const std::string entry =
      R"({"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
  ExpectFormatError(
      BuildImage("{\"t\":" + entry + ",\"t\":" + entry + "}", FloatBytes({1})),
      "'t' twice");
  ExpectFormatError(
      BuildImage(R"({"t":{"dtype":"F32","dtype":"F32","shape":[1],)"
                 R"("data_offsets":[0,4]}})",
                 FloatBytes({1})),
      "'dtype' twice");
}

TEST(SafetensorsRead, RejectsBadEntries) {
  const std::vector<uint8_t> four = FloatBytes({1});
  struct Case {
    std::string header;
    std::string needle;
  };
  const Case cases[] = {
      {OneTensorHeader(R"("F64")", "[1]", "[0,4]"), "dtype 'F64' is not"},
      {OneTensorHeader(R"("f32")", "[1]", "[0,4]"), "dtype 'f32' is not"},
      {OneTensorHeader("32", "[1]", "[0,4]"), "\"dtype\" is a JSON number"},
      {R"({"t":{"shape":[1],"data_offsets":[0,4]}})", "no \"dtype\""},
      {R"({"t":{"dtype":"F32","data_offsets":[0,4]}})", "no \"shape\""},
      {R"({"t":{"dtype":"F32","shape":[1]}})", "no \"data_offsets\""},
      {OneTensorHeader(R"("F32")", "1", "[0,4]"), "\"shape\" is a JSON"},
      {OneTensorHeader(R"("F32")", "[-1]", "[0,4]"), "shape[0] = -1 is neg"},
      {OneTensorHeader(R"("F32")", "[1.5]", "[0,4]"), "not an integer"},
      {OneTensorHeader(R"("F32")", R"(["1"])", "[0,4]"), "JSON string"},
      {OneTensorHeader(R"("F32")", "[1,1,1,1,1]", "[0,4]"), "rank 5"},
      {OneTensorHeader(R"("F32")", "[18446744073709551615]", "[0,4]"),
       "exceeds 2^63 - 1"},
      {OneTensorHeader(R"("F32")", "[1e30]", "[0,4]"), "not an integer"},
      {OneTensorHeader(R"("F32")", "[4294967296,4294967296]", "[0,4]"),
       "too large"},
      {OneTensorHeader(R"("BF16")", "[3037000500,3037000500,0]", "[0,0]"),
       "too large"},
      {OneTensorHeader(R"("F32")", "[1]", "[0]"), "[begin, end]"},
      {OneTensorHeader(R"("F32")", "[1]", "[0,4,8]"), "[begin, end]"},
      {OneTensorHeader(R"("F32")", "[1]", R"({"a":1})"), "[begin, end]"},
      {OneTensorHeader(R"("F32")", "[1]", "[4,0]"), "begin exceeds end"},
      {OneTensorHeader(R"("F32")", "[1]", "[-4,0]"), "is negative"},
      {OneTensorHeader(R"("F32")", "[1]", "[0,8]"), "runs past the data"},
      {OneTensorHeader(R"("F32")", "[1]", "[4,8]"), "runs past the data"},
      {OneTensorHeader(R"("F32")", "[1]", "[0,18446744073709551615]"),
       "exceeds 2^63 - 1"},
      {OneTensorHeader(R"("F32")", "[2]", "[0,4]"), "need 8"},
      {OneTensorHeader(R"("BF16")", "[1]", "[0,4]"), "need 2"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.header);
    ExpectFormatError(BuildImage(c.header, four), c.needle);
  }
}

TEST(SafetensorsRead, RejectsOverlapsButNotNeighbours) {
  const std::vector<uint8_t> data = FloatBytes({1, 2, 3, 4});
  ExpectFormatError(
      BuildImage(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                 R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                 data),
      "overlap");
  ExpectFormatError(
      BuildImage(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                 R"("b":{"dtype":"F16","shape":[1],"data_offsets":[6,8]}})",
                 data),
      "overlap");
  // Adjacent ranges and an empty tensor inside another's range are fine.
  const std::vector<uint8_t> image =
      BuildImage(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                 R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)"
                 R"("c":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
                 data);
  const File file = ParseImage(image);
  EXPECT_EQ(file.tensors.size(), 3u);
  EXPECT_EQ(static_cast<const float*>(file.tensors.at("b").data)[1], 4.0f);
}

TEST(SafetensorsRead, QuotesHostileNamesInMessages) {
  try {
    ParseImage(BuildImage("{\"\\u001b[31m\":{\"dtype\":\"F32\"}}", {}));
    FAIL() << "expected FormatError";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("'\\x1b[31m'"), std::string::npos)
        << e.what();
  }
}

TEST(SafetensorsFile, WritesAtomicallyAndReadsBack) {
  ScratchDirectory scratch;
  ASSERT_FALSE(scratch.path().empty());
  const float values[3] = {1, 2, 3};
  const std::string path = scratch.path() + "/x.safetensors";
  WriteFile(path, {{"v", TensorView::Contiguous(values, DType::kF32, {3})}});
  EXPECT_EQ(scratch.Entries(), std::vector<std::string>{"x.safetensors"});
  struct stat info;
  ASSERT_EQ(::stat(path.c_str(), &info), 0);
  const mode_t mask = ::umask(0);
  ::umask(mask);
  EXPECT_EQ(info.st_mode & 0777, 0666 & ~mask);

  const File file = ReadFile(path);
  ASSERT_EQ(file.tensors.count("v"), 1u);
  EXPECT_EQ(std::memcmp(file.tensors.at("v").data, values, sizeof(values)), 0);
}

TEST(SafetensorsFile, ReportsIoErrorsAndLeavesNoTemporaryFile) {
  ScratchDirectory scratch;
  ASSERT_FALSE(scratch.path().empty());
  const float value = 1;
  const std::vector<NamedTensor> tensors = {
      {"v", TensorView::Contiguous(&value, DType::kF32, {1})}};
  EXPECT_THROW(WriteFile(scratch.path() + "/missing/x.safetensors", tensors),
               IoError);
  const std::string directory = scratch.path() + "/sub";
  ASSERT_EQ(::mkdir(directory.c_str(), 0755), 0);
  EXPECT_THROW(WriteFile(directory, tensors), IoError);
  ASSERT_EQ(::rmdir(directory.c_str()), 0);
  EXPECT_TRUE(scratch.Entries().empty());

  EXPECT_THROW(ReadFile(scratch.path() + "/absent.safetensors"), IoError);
  EXPECT_THROW(ReadFile(scratch.path()), IoError);
  // A FIFO is refused at once instead of blocking until a writer appears.
  const std::string fifo = scratch.path() + "/fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_THROW(ReadFile(fifo), IoError);
  const std::string empty = scratch.path() + "/empty.safetensors";
  std::fclose(std::fopen(empty.c_str(), "w"));
  try {
    ReadFile(empty);
    FAIL() << "expected FormatError";
  } catch (const FormatError& e) {
    EXPECT_EQ(std::string(e.what()).rfind(empty + ": ", 0), 0u) << e.what();
  }
}

// Random mutations of a valid image: each must parse or throw FormatError.
// A parse that succeeds must give views whose bytes can all be read (ASan
// checks that), whatever the mutation did to lengths and offsets.
TEST(SafetensorsFuzz, MutatedFilesParseOrThrowFormatError) {
  std::vector<float> floats(6, 0.5f);
  std::vector<uint16_t> halves(5, 0x3C00);
  std::vector<int32_t> ints = {0, 3};
  const std::vector<uint8_t> valid = Serialize(
      {{"query", TensorView::Contiguous(floats.data(), DType::kF32, {1, 2, 3})},
       {"key", TensorView::Contiguous(halves.data(), DType::kBF16, {5})},
       {"value", TensorView::Contiguous(halves.data(), DType::kF16, {1, 5})},
       {"sequence_end", TensorView::Contiguous(ints.data(), DType::kI32, {2})}},
      {{"source", "fuzz"}});
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | valid[i];
  std::vector<size_t> digits;
  for (size_t i = 8; i < 8 + header_size; ++i) {
    if (valid[i] >= '0' && valid[i] <= '9') digits.push_back(i);
  }
  ASSERT_FALSE(digits.empty());

  std::mt19937_64 rng(20240611);
  const char kTokens[] = "0123456789[]{}\",:-.eE \\u";
  int parsed = 0;
  int rejected = 0;
  for (int iteration = 0; iteration < 4000; ++iteration) {
    std::vector<uint8_t> image = valid;
    const int mutations = 1 + static_cast<int>(rng() % 3);
    for (int m = 0; m < mutations && !image.empty(); ++m) {
      const size_t at = rng() % image.size();
      switch (rng() % 7) {
        case 0:  // any byte anywhere
          image[at] = static_cast<uint8_t>(rng());
          break;
        case 1:  // a digit of the header becomes another digit
          image[digits[rng() % digits.size()]] =
              static_cast<uint8_t>('0' + rng() % 10);
          break;
        case 2:  // a JSON token character inside the header
          image[8 + rng() % header_size] =
              kTokens[rng() % (sizeof(kTokens) - 1)];
          break;
        case 3:  // truncation
          image.resize(at);
          break;
        case 4:  // insertion, shifting the data section out of alignment
          image.insert(image.begin() + at, static_cast<uint8_t>(rng()));
          break;
        case 5:  // deletion
          image.erase(image.begin() + at);
          break;
        default:  // the length field, nudged
          if (image.size() >= 8) {
            image[rng() % 2] += static_cast<uint8_t>(1 + rng() % 3);
          }
      }
    }
    try {
      const File file = ParseImage(image);
      uint64_t checksum = 0;
      for (const auto& item : file.tensors) {
        const TensorView& view = item.second;
        const auto* bytes = static_cast<const uint8_t*>(view.data);
        const size_t size = view.NumElements() * DTypeSize(view.dtype);
        for (size_t i = 0; i < size; ++i) checksum += bytes[i];
        EXPECT_EQ(
            reinterpret_cast<uintptr_t>(view.data) % DTypeSize(view.dtype), 0u);
      }
      // Keeps the reads above from being optimized away.
      static volatile uint64_t sink;
      sink = checksum;
      ++parsed;
    } catch (const FormatError&) {
      ++rejected;
    }
  }
  // Both outcomes must occur, or the mutations explored nothing.
  EXPECT_GT(parsed, 100);
  EXPECT_GT(rejected, 100);
}

}  // namespace
}  // namespace safetensors
}  // namespace raggedattn
