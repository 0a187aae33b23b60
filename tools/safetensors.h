// Reading and writing safetensors files: an 8-byte little-endian header
// length, a JSON header mapping each tensor name to its dtype, shape and
// [begin, end) byte range, then the data section those ranges index.
//
// The reader treats its input as hostile: every length, offset, shape and
// JSON type is checked before a byte of tensor data is touched, and any
// failure throws FormatError (never crashes, never reads out of bounds).

#ifndef RAGGEDATTN_TOOLS_SAFETENSORS_H_
#define RAGGEDATTN_TOOLS_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "raggedattn/raggedattn.h"

namespace raggedattn {
namespace safetensors {

// A malformed file. It is bad input, so it derives from InvalidArgument.
class FormatError : public InvalidArgument {
 public:
  explicit FormatError(const std::string& what) : InvalidArgument(what) {}
};

// A file that cannot be opened, mapped, written or renamed; carries errno's
// text.
class IoError : public RuntimeError {
 public:
  explicit IoError(const std::string& what) : RuntimeError(what) {}
};

// The largest JSON header the reader accepts. Real headers are a few KiB;
// the cap stops a forged length from making the parser allocate without
// bound.
inline constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;

// The tensors of a parsed file. Each view is contiguous, row-major, and points
// into the file's bytes (zero copy) unless that tensor's offset was not a
// multiple of its element size: then it points to an aligned copy, so no
// element is ever read through a misaligned pointer. `storage` keeps both
// alive; copying a File shares them.
struct File {
  std::shared_ptr<const void> storage;
  std::map<std::string, TensorView> tensors;
};

// Returns the tensors of the safetensors image [data, data + size). `owner`
// must keep those bytes alive; it is stored in the result. `__metadata__` is
// accepted and ignored. Throws FormatError on any malformed input.
File Parse(std::shared_ptr<const void> owner, const uint8_t* data, size_t size);

// Returns the tensors of the file at `path`, mapped read-only and private.
// Throws IoError when the file cannot be opened or mapped (or is not a
// regular file) and FormatError, its message prefixed with the path, when it
// is malformed. Like any mapping, the views fault (SIGBUS) if another process
// truncates the file while they are in use.
File ReadFile(const std::string& path);

// Returns "F32", "BF16", "F16" or "I32": the safetensors name of a dtype.
const char* DTypeCode(DType dtype);

struct NamedTensor {
  std::string name;
  TensorView view;  // any strides; written row-major
};

// Returns the bytes of a safetensors file holding `tensors` (names unique,
// not "__metadata__") and, when not empty, a `__metadata__` object. The data
// section starts on an 8-byte boundary and tensors are laid out widest dtype
// first with no gaps, so every tensor is aligned for its dtype, as the
// reference implementation lays them out.
std::vector<uint8_t> Serialize(
    const std::vector<NamedTensor>& tensors,
    const std::map<std::string, std::string>& metadata = {});

// Writes Serialize(tensors, metadata) to `path` atomically: into a new
// temporary file in the same directory, renamed over `path` only once fully
// written. On failure the temporary file is removed, `path` is untouched and
// IoError is thrown.
void WriteFile(const std::string& path, const std::vector<NamedTensor>& tensors,
               const std::map<std::string, std::string>& metadata = {});

}  // namespace safetensors
}  // namespace raggedattn

#endif  // RAGGEDATTN_TOOLS_SAFETENSORS_H_
