#include <cstdint>
#include <string>

#include "raggedattn/raggedattn.h"

namespace raggedattn {

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kBF16:
      return "bf16";
    case DType::kF16:
      return "f16";
    case DType::kI32:
      return "i32";
  }
  return "unknown";
}

size_t DTypeSize(DType dtype) {
  return dtype == DType::kBF16 || dtype == DType::kF16 ? 2 : 4;
}

TensorView TensorView::Contiguous(const void* data, DType dtype,
                                  std::initializer_list<int64_t> shape) {
  TensorView view;
  view.data = const_cast<void*>(data);
  view.dtype = dtype;
  view.rank = static_cast<int>(shape.size());
  if (view.rank > kMaxRank) {
    throw InvalidArgument("TensorView: rank " + std::to_string(view.rank) +
                          " exceeds " + std::to_string(kMaxRank));
  }
  int i = 0;
  for (int64_t extent : shape) view.shape[i++] = extent;
  int64_t stride = 1;
  for (int d = view.rank - 1; d >= 0; --d) {
    view.strides[d] = stride;
    // Only outer dimensions use the product, so the outermost never needs it.
    if (d > 0 && __builtin_mul_overflow(
                     stride, view.shape[d] > 0 ? view.shape[d] : 1, &stride)) {
      throw InvalidArgument(
          "TensorView: the element count of the shape "
          "exceeds 2^63");
    }
  }
  return view;
}

TensorView TensorView::Strided(const void* data, DType dtype,
                               std::initializer_list<int64_t> shape,
                               std::initializer_list<int64_t> strides) {
  if (shape.size() != strides.size()) {
    throw InvalidArgument("TensorView: " + std::to_string(shape.size()) +
                          " extents but " + std::to_string(strides.size()) +
                          " strides");
  }
  TensorView view = Contiguous(data, dtype, shape);
  int i = 0;
  for (int64_t stride : strides) view.strides[i++] = stride;
  return view;
}

int64_t TensorView::NumElements() const {
  int64_t count = 1;
  for (int d = 0; d < rank; ++d) count *= shape[d];
  return count;
}

}  // namespace raggedattn
