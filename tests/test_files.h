// Helpers for tests that write files: a scratch directory that cleans up
// after itself, and safetensors images built byte by byte (without the
// writer under test).

#ifndef RAGGEDATTN_TESTS_TEST_FILES_H_
#define RAGGEDATTN_TESTS_TEST_FILES_H_

#include <dirent.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace raggedattn {
namespace test_files {

// A fresh directory under the test temp dir, removed with its files (one
// level deep) when destroyed.
class ScratchDirectory {
 public:
  ScratchDirectory() {
    std::string pattern = ::testing::TempDir() + "raggedattn_test_XXXXXX";
    if (::mkdtemp(&pattern[0]) != nullptr) path_ = pattern;
  }
  ~ScratchDirectory() {
    for (const std::string& name : Entries()) {
      const std::string path = path_ + "/" + name;
      if (::unlink(path.c_str()) != 0) ::rmdir(path.c_str());
    }
    ::rmdir(path_.c_str());
  }
  ScratchDirectory(const ScratchDirectory&) = delete;
  ScratchDirectory& operator=(const ScratchDirectory&) = delete;

  // Empty when the directory could not be created.
  const std::string& path() const { return path_; }

  // Returns the sorted names in the directory, except . and ..
  std::vector<std::string> Entries() const {
    std::vector<std::string> names;
    if (DIR* dir = ::opendir(path_.c_str())) {
      while (const dirent* entry = ::readdir(dir)) {
        const std::string name = entry->d_name;
        if (name != "." && name != "..") names.push_back(name);
      }
      ::closedir(dir);
    }
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  std::string path_;
};

// Returns the 8 bytes of `value`, least significant first.
inline std::vector<uint8_t> LittleEndian64(uint64_t value) {
  std::vector<uint8_t> bytes(8);
  for (int i = 0; i < 8; ++i) bytes[i] = (value >> (8 * i)) & 0xFF;
  return bytes;
}

// Returns a safetensors image: the header's length as 8 little-endian bytes,
// the header verbatim, then `data`.
inline std::vector<uint8_t> BuildImage(const std::string& header,
                                       const std::vector<uint8_t>& data) {
  std::vector<uint8_t> image = LittleEndian64(header.size());
  image.resize(8 + header.size() + data.size());
  std::copy(header.begin(), header.end(), image.begin() + 8);
  std::copy(data.begin(), data.end(), image.begin() + 8 + header.size());
  return image;
}

}  // namespace test_files
}  // namespace raggedattn

#endif  // RAGGEDATTN_TESTS_TEST_FILES_H_
