#include "tools/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "nlohmann/json.hpp"

namespace raggedattn {
namespace safetensors {
namespace {

using nlohmann::json;

// A valid header nests three levels deep (header, entry, shape). Anything far
// deeper is rejected before parsing so that no parser or destructor recursion
// depends on the input.
constexpr int kMaxNesting = 16;

// Returns `text` quoted for an error message: printable ASCII as is, other
// bytes as \xNN, cut after 64 characters, because names and dtypes come from
// the hostile file and end up on a terminal.
std::string Quoted(const std::string& text) {
  static const char kHex[] = "0123456789abcdef";
  std::string out = "'";
  for (size_t i = 0; i < text.size(); ++i) {
    if (i == 64) {
      out += "...";
      break;
    }
    const auto byte = static_cast<unsigned char>(text[i]);
    if (byte >= 0x20 && byte < 0x7F && byte != '\\' && byte != '\'') {
      out += static_cast<char>(byte);
    } else {
      out += "\\x";
      out += kHex[byte >> 4];
      out += kHex[byte & 15];
    }
  }
  return out + "'";
}

[[noreturn]] void Fail(const std::string& what) { throw FormatError(what); }

[[noreturn]] void FailTensor(const std::string& name, const std::string& what) {
  Fail("tensor " + Quoted(name) + ": " + what);
}

uint64_t LoadLittleEndian64(const uint8_t* bytes) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | bytes[i];
  return value;
}

void CheckNesting(const char* text, size_t size) {
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (size_t i = 0; i < size; ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxNesting) {
        Fail("header nests JSON deeper than " + std::to_string(kMaxNesting) +
             " levels (a safetensors header needs 3)");
      }
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}

// Returns the header parsed as JSON. Duplicate keys are an error: nlohmann
// keeps the last one silently, which would let two entries claim one name.
json ParseHeader(const char* text, size_t size) {
  CheckNesting(text, size);
  std::vector<std::set<std::string>> keys_per_object;
  std::string duplicate;
  bool has_duplicate = false;
  const json::parser_callback_t on_event =
      [&](int /*depth*/, json::parse_event_t event, json& parsed) {
        if (event == json::parse_event_t::object_start) {
          keys_per_object.emplace_back();
        } else if (event == json::parse_event_t::object_end) {
          if (!keys_per_object.empty()) keys_per_object.pop_back();
        } else if (event == json::parse_event_t::key &&
                   !keys_per_object.empty() && parsed.is_string()) {
          const auto& key = parsed.get_ref<const std::string&>();
          if (!keys_per_object.back().insert(key).second && !has_duplicate) {
            has_duplicate = true;
            duplicate = key;
          }
        }
        return true;
      };
  json header;
  try {
    header = json::parse(text, text + size, on_event);
  } catch (const json::parse_error& e) {
    Fail("header is not valid JSON (error at byte " + std::to_string(e.byte) +
         " of " + std::to_string(size) + ")");
  } catch (const json::exception& e) {
    Fail(std::string("header is not valid JSON (") + e.what() + ")");
  }
  if (has_duplicate) Fail("header has the key " + Quoted(duplicate) + " twice");
  if (!header.is_object()) {
    Fail(std::string("header is a JSON ") + header.type_name() +
         ", expected an object");
  }
  return header;
}

DType ParseDType(const std::string& name, const json& entry) {
  const auto found = entry.find("dtype");
  if (found == entry.end()) FailTensor(name, "no \"dtype\"");
  if (!found->is_string()) {
    FailTensor(name, std::string("\"dtype\" is a JSON ") + found->type_name() +
                         ", expected a string");
  }
  const auto& code = found->get_ref<const std::string&>();
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16, DType::kI32}) {
    if (code == DTypeCode(dtype)) return dtype;
  }
  FailTensor(name, "dtype " + Quoted(code) +
                       " is not supported (expected F32, BF16, F16 or I32)");
}

// Returns a JSON number as a non-negative int64, or fails naming `what`.
int64_t ParseCount(const std::string& name, const json& number,
                   const std::string& what) {
  if (number.is_number_unsigned()) {
    const auto value = number.get<uint64_t>();
    if (value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      FailTensor(name,
                 what + " = " + std::to_string(value) + " exceeds 2^63 - 1");
    }
    return static_cast<int64_t>(value);
  }
  if (number.is_number_integer()) {
    FailTensor(name, what + " = " + std::to_string(number.get<int64_t>()) +
                         " is negative");
  }
  FailTensor(name, what + " is a JSON " + std::string(number.type_name()) +
                       (number.is_number() ? " that is not an integer" : "") +
                       ", expected a non-negative integer");
}

struct Entry {
  std::string name;
  DType dtype = DType::kF32;
  int rank = 0;
  int64_t shape[kMaxRank] = {0, 0, 0, 0};
  uint64_t begin = 0;
  uint64_t end = 0;
};

Entry ParseEntry(const std::string& name, const json& entry,
                 uint64_t data_size) {
  if (!entry.is_object()) {
    FailTensor(name, std::string("entry is a JSON ") + entry.type_name() +
                         ", expected an object with dtype, shape and "
                         "data_offsets");
  }
  Entry parsed;
  parsed.name = name;
  parsed.dtype = ParseDType(name, entry);

  const auto shape = entry.find("shape");
  if (shape == entry.end()) FailTensor(name, "no \"shape\"");
  if (!shape->is_array()) {
    FailTensor(name, std::string("\"shape\" is a JSON ") + shape->type_name() +
                         ", expected an array");
  }
  if (shape->size() > static_cast<size_t>(kMaxRank)) {
    FailTensor(name, "rank " + std::to_string(shape->size()) + " exceeds " +
                         std::to_string(kMaxRank));
  }
  parsed.rank = static_cast<int>(shape->size());
  // Both the element count and the row-major strides (which treat a zero
  // extent as 1) must keep byte offsets within int64.
  const uint64_t element_size = DTypeSize(parsed.dtype);
  const uint64_t limit =
      static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / element_size;
  uint64_t span = 1;
  uint64_t count = 1;
  for (int d = 0; d < parsed.rank; ++d) {
    const int64_t extent =
        ParseCount(name, (*shape)[d], "shape[" + std::to_string(d) + "]");
    parsed.shape[d] = extent;
    const uint64_t factor = extent > 0 ? static_cast<uint64_t>(extent) : 1;
    if (span > limit / factor) {
      FailTensor(name, "shape is too large: its byte size exceeds 2^63");
    }
    span *= factor;
    count *= static_cast<uint64_t>(extent);
  }

  const auto offsets = entry.find("data_offsets");
  if (offsets == entry.end()) FailTensor(name, "no \"data_offsets\"");
  if (!offsets->is_array() || offsets->size() != 2) {
    FailTensor(name, "\"data_offsets\" must be an array [begin, end]");
  }
  parsed.begin = ParseCount(name, (*offsets)[0], "data_offsets[0]");
  parsed.end = ParseCount(name, (*offsets)[1], "data_offsets[1]");
  const std::string range = "data_offsets [" + std::to_string(parsed.begin) +
                            ", " + std::to_string(parsed.end) + "]";
  if (parsed.begin > parsed.end) {
    FailTensor(name, range + ": begin exceeds end");
  }
  if (parsed.end > data_size) {
    FailTensor(name, range + " runs past the data section of " +
                         std::to_string(data_size) +
                         " bytes (truncated file?)");
  }
  if (parsed.end - parsed.begin != count * element_size) {
    FailTensor(
        name, range + " holds " + std::to_string(parsed.end - parsed.begin) +
                  " bytes, but its shape and dtype " + DTypeCode(parsed.dtype) +
                  " need " + std::to_string(count * element_size));
  }
  return parsed;
}

void CheckNoOverlap(const std::vector<Entry>& entries) {
  std::vector<const Entry*> by_begin;
  for (const Entry& entry : entries) {
    // An empty range holds no byte, so it overlaps nothing.
    if (entry.begin < entry.end) by_begin.push_back(&entry);
  }
  std::sort(by_begin.begin(), by_begin.end(),
            [](const Entry* a, const Entry* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_begin.size(); ++i) {
    const Entry& previous = *by_begin[i - 1];
    const Entry& current = *by_begin[i];
    if (current.begin < previous.end) {
      Fail("tensors " + Quoted(previous.name) + " [" +
           std::to_string(previous.begin) + ", " +
           std::to_string(previous.end) + ") and " + Quoted(current.name) +
           " [" + std::to_string(current.begin) + ", " +
           std::to_string(current.end) + ") overlap");
    }
  }
}

// The file's bytes plus aligned copies of the tensors that needed one.
struct Storage {
  std::shared_ptr<const void> owner;
  std::vector<std::unique_ptr<uint32_t[]>> aligned_copies;
};

TensorView MakeView(const Entry& entry, const uint8_t* bytes,
                    Storage& storage) {
  TensorView view;
  view.dtype = entry.dtype;
  view.rank = entry.rank;
  int64_t stride = 1;
  for (int d = entry.rank - 1; d >= 0; --d) {
    view.shape[d] = entry.shape[d];
    view.strides[d] = stride;
    stride *= std::max<int64_t>(entry.shape[d], 1);
  }
  const size_t alignment = DTypeSize(entry.dtype);
  if (reinterpret_cast<uintptr_t>(bytes) % alignment == 0) {
    view.data = const_cast<uint8_t*>(bytes);
    return view;
  }
  // safetensors does not promise alignment; reading an f32 through a
  // misaligned pointer is undefined behaviour, so this tensor gets a copy.
  const size_t byte_size = entry.end - entry.begin;
  const size_t words = std::max<size_t>((byte_size + 3) / 4, 1);
  storage.aligned_copies.emplace_back(new uint32_t[words]);
  std::memcpy(storage.aligned_copies.back().get(), bytes, byte_size);
  view.data = storage.aligned_copies.back().get();
  return view;
}

std::string ErrnoText() { return std::strerror(errno); }

}  // namespace

const char* DTypeCode(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "BF16";
    case DType::kF16:
      return "F16";
    case DType::kI32:
      return "I32";
  }
  return "unknown";
}

File Parse(std::shared_ptr<const void> owner, const uint8_t* data,
           size_t size) {
  if (size < 8) {
    Fail("file is " + std::to_string(size) +
         " bytes, too short for the 8-byte header length");
  }
  const uint64_t header_size = LoadLittleEndian64(data);
  const uint64_t after_length = size - 8;
  if (header_size < 2) {
    Fail("header length " + std::to_string(header_size) +
         " is below 2, the size of an empty JSON object");
  }
  if (header_size > after_length) {
    Fail("header length " + std::to_string(header_size) + " exceeds the " +
         std::to_string(after_length) +
         " bytes that follow it (truncated file?)");
  }
  if (header_size > kMaxHeaderBytes) {
    Fail("header length " + std::to_string(header_size) + " exceeds the " +
         std::to_string(kMaxHeaderBytes) + "-byte limit");
  }
  const json header =
      ParseHeader(reinterpret_cast<const char*>(data + 8), header_size);

  const uint64_t data_size = after_length - header_size;
  std::vector<Entry> entries;
  for (const auto& item : header.items()) {
    if (item.key() == "__metadata__") continue;
    entries.push_back(ParseEntry(item.key(), item.value(), data_size));
  }
  CheckNoOverlap(entries);

  auto storage = std::make_shared<Storage>();
  storage->owner = std::move(owner);
  File file;
  const uint8_t* data_section = data + 8 + header_size;
  for (const Entry& entry : entries) {
    file.tensors[entry.name] =
        MakeView(entry, data_section + entry.begin, *storage);
  }
  file.storage = std::move(storage);
  return file;
}

File ReadFile(const std::string& path) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer; it then fails the
  // regular-file check below. Regular files ignore the flag.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw IoError("cannot open " + path + ": " + ErrnoText());
  struct stat info;
  if (::fstat(fd, &info) != 0) {
    const std::string reason = ErrnoText();
    ::close(fd);
    throw IoError("cannot stat " + path + ": " + reason);
  }
  if (!S_ISREG(info.st_mode)) {
    ::close(fd);
    throw IoError(path + " is not a regular file");
  }
  const size_t size = static_cast<size_t>(info.st_size);
  std::shared_ptr<const void> mapping;
  const uint8_t* bytes = nullptr;
  // mmap rejects a length of 0; an empty file is simply too short.
  if (size > 0) {
    void* address = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (address == MAP_FAILED) {
      const std::string reason = ErrnoText();
      ::close(fd);
      throw IoError("cannot map " + path + ": " + reason);
    }
    mapping = std::shared_ptr<const void>(address, [size](const void* p) {
      ::munmap(const_cast<void*>(p), size);
    });
    bytes = static_cast<const uint8_t*>(address);
  }
  // The mapping stays valid after the descriptor is closed.
  ::close(fd);
  try {
    return Parse(std::move(mapping), bytes, size);
  } catch (const FormatError& e) {
    throw FormatError(path + ": " + e.what());
  }
}

std::vector<uint8_t> Serialize(
    const std::vector<NamedTensor>& tensors,
    const std::map<std::string, std::string>& metadata) {
  std::set<std::string> names;
  for (const NamedTensor& tensor : tensors) {
    if (tensor.name == "__metadata__" || !names.insert(tensor.name).second) {
      throw InvalidArgument("safetensors: tensor name " + Quoted(tensor.name) +
                            " is reserved or repeated");
    }
    const TensorView& view = tensor.view;
    if (view.rank < 0 || view.rank > kMaxRank) {
      throw InvalidArgument("safetensors: tensor " + Quoted(tensor.name) +
                            " has rank " + std::to_string(view.rank));
    }
    for (int d = 0; d < view.rank; ++d) {
      if (view.shape[d] < 0 || view.strides[d] < 0) {
        throw InvalidArgument("safetensors: tensor " + Quoted(tensor.name) +
                              " has a negative extent or stride");
      }
    }
  }

  // Widest dtype first keeps every tensor aligned without padding between
  // tensors (which the reference reader rejects).
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return DTypeSize(tensors[a].view.dtype) > DTypeSize(tensors[b].view.dtype);
  });
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  std::vector<uint64_t> begins(tensors.size());
  for (size_t i : order) {
    const TensorView& view = tensors[i].view;
    const uint64_t bytes =
        static_cast<uint64_t>(view.NumElements()) * DTypeSize(view.dtype);
    std::vector<int64_t> shape(view.shape, view.shape + view.rank);
    header[tensors[i].name] = {{"dtype", DTypeCode(view.dtype)},
                               {"shape", shape},
                               {"data_offsets", {offset, offset + bytes}}};
    begins[i] = offset;
    offset += bytes;
  }
  std::string header_text = header.dump();
  // Pad with spaces (still valid JSON) so the data section is 8-aligned.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  std::vector<uint8_t> file(8 + header_text.size() + offset);
  uint64_t header_size = header_text.size();
  for (int i = 0; i < 8; ++i)
    file[i] = static_cast<uint8_t>(header_size >> (8 * i));
  std::memcpy(file.data() + 8, header_text.data(), header_text.size());
  uint8_t* data_section = file.data() + 8 + header_text.size();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorView& view = tensors[i].view;
    const size_t element_size = DTypeSize(view.dtype);
    const int64_t count = view.NumElements();
    // Walks the elements in row-major order, whatever the strides.
    int64_t index[kMaxRank] = {0, 0, 0, 0};
    uint8_t* out = data_section + begins[i];
    for (int64_t n = 0; n < count; ++n) {
      int64_t element = 0;
      for (int d = 0; d < view.rank; ++d) element += index[d] * view.strides[d];
      std::memcpy(out,
                  static_cast<const uint8_t*>(view.data) +
                      element * static_cast<int64_t>(element_size),
                  element_size);
      out += element_size;
      for (int d = view.rank - 1; d >= 0; --d) {
        if (++index[d] < view.shape[d]) break;
        index[d] = 0;
      }
    }
  }
  return file;
}

void WriteFile(const std::string& path, const std::vector<NamedTensor>& tensors,
               const std::map<std::string, std::string>& metadata) {
  const std::vector<uint8_t> bytes = Serialize(tensors, metadata);
  // rename() would replace a device node such as /dev/null or an empty
  // directory with the file; refuse instead.
  struct stat existing;
  if (::stat(path.c_str(), &existing) == 0 && !S_ISREG(existing.st_mode)) {
    throw IoError("cannot write " + path + ": it is not a regular file");
  }

  // The temporary file lives in the target's directory so that rename() is
  // atomic (same file system) and a reader never sees half a file.
  const size_t slash = path.rfind('/');
  const std::string directory =
      slash == std::string::npos ? "." : path.substr(0, slash + 1);
  const std::string base =
      slash == std::string::npos ? path : path.substr(slash + 1);
  std::string temporary = directory + (slash == std::string::npos ? "/" : "") +
                          "." + base + ".tmp-XXXXXX";
  const int fd = ::mkstemp(&temporary[0]);
  if (fd < 0) {
    throw IoError("cannot create a temporary file next to " + path + ": " +
                  ErrnoText());
  }
  auto fail = [&](const std::string& action) {
    const std::string reason = ErrnoText();
    ::close(fd);
    ::unlink(temporary.c_str());
    throw IoError("cannot " + action + " " + path + ": " + reason);
  };
  // mkstemp creates the file 0600; give it the permissions a plain create
  // would have.
  const mode_t mask = ::umask(0);
  ::umask(mask);
  if (::fchmod(fd, 0666 & ~mask) != 0) fail("set permissions of");
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n =
        ::write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("write");
    written += static_cast<size_t>(n);
  }
  if (::close(fd) != 0) {
    const std::string reason = ErrnoText();
    ::unlink(temporary.c_str());
    throw IoError("cannot write " + path + ": " + reason);
  }
  if (::rename(temporary.c_str(), path.c_str()) != 0) {
    const std::string reason = ErrnoText();
    ::unlink(temporary.c_str());
    throw IoError("cannot rename the temporary file to " + path + ": " +
                  reason);
  }
}

}  // namespace safetensors
}  // namespace raggedattn
