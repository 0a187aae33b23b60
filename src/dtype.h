// Scalar conversions between f32 and the 16-bit float formats.
//
// The kernels widen in registers; these serve the edges (query load, the
// single rounding of the output, sink logits, file I/O, tests), where exact
// round-to-nearest-even matters more than speed.

#ifndef RAGGEDATTN_SRC_DTYPE_H_
#define RAGGEDATTN_SRC_DTYPE_H_

#include <cstdint>
#include <cstring>

#include "raggedattn/raggedattn.h"

namespace raggedattn {

inline uint32_t BitsFromF32(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

inline float F32FromBits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

inline float F32FromBF16Bits(uint16_t bits) {
  return F32FromBits(static_cast<uint32_t>(bits) << 16);
}

// Rounds to nearest, ties to even; NaN stays NaN (quiet).
inline uint16_t BF16BitsFromF32(float f) {
  const uint32_t bits = BitsFromF32(f);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) {
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  }
  const uint32_t lsb = (bits >> 16) & 1u;
  return static_cast<uint16_t>((bits + 0x7FFFu + lsb) >> 16);
}

inline float F32FromF16Bits(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  const uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0x1Fu) {  // inf or NaN
    return F32FromBits(sign | 0x7F800000u | (mantissa << 13));
  }
  if (exponent != 0) {
    return F32FromBits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  }
  // Zero or subnormal: mantissa * 2^-24, exact in f32.
  const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
  return sign ? -magnitude : magnitude;
}

// Rounds to nearest, ties to even, with overflow to inf and subnormals.
inline uint16_t F16BitsFromF32(float f) {
  const uint32_t bits = BitsFromF32(f);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs_bits = bits & 0x7FFFFFFFu;
  if (abs_bits > 0x7F800000u) return sign | 0x7E00u;   // NaN
  if (abs_bits >= 0x477FF000u) return sign | 0x7C00u;  // rounds past 65504
  if (abs_bits < 0x38800000u) {
    // Subnormal or zero in f16: round |f| * 2^24 to an integer, ties to even.
    const float scaled = F32FromBits(abs_bits) * 16777216.0f;
    const uint32_t whole = static_cast<uint32_t>(scaled);
    const float fraction = scaled - static_cast<float>(whole);
    uint32_t rounded = whole;
    if (fraction > 0.5f || (fraction == 0.5f && (whole & 1u))) ++rounded;
    return sign | static_cast<uint16_t>(rounded);
  }
  const uint32_t lsb = (abs_bits >> 13) & 1u;
  const uint32_t rounded = abs_bits + 0xFFFu + lsb;
  return sign | static_cast<uint16_t>((rounded >> 13) - (112u << 10));
}

// Returns element `index` of a buffer of `dtype` as f32 (f32/bf16/f16 only).
inline float LoadAsF32(const void* base, DType dtype, int64_t index) {
  switch (dtype) {
    case DType::kBF16:
      return F32FromBF16Bits(static_cast<const uint16_t*>(base)[index]);
    case DType::kF16:
      return F32FromF16Bits(static_cast<const uint16_t*>(base)[index]);
    default:
      return static_cast<const float*>(base)[index];
  }
}

// Stores f32 `value` as element `index` of a buffer of `dtype`, rounding once.
inline void StoreFromF32(void* base, DType dtype, int64_t index, float value) {
  switch (dtype) {
    case DType::kBF16:
      static_cast<uint16_t*>(base)[index] = BF16BitsFromF32(value);
      break;
    case DType::kF16:
      static_cast<uint16_t*>(base)[index] = F16BitsFromF32(value);
      break;
    default:
      static_cast<float*>(base)[index] = value;
  }
}

// Converts n elements starting at element `offset` of a buffer of `dtype`
// to f32, choosing the conversion once for the whole row.
inline void LoadRowAsF32(const void* base, DType dtype, int64_t offset,
                         int64_t n, float* out) {
  switch (dtype) {
    case DType::kBF16: {
      const uint16_t* in = static_cast<const uint16_t*>(base) + offset;
      for (int64_t i = 0; i < n; ++i) out[i] = F32FromBF16Bits(in[i]);
      break;
    }
    case DType::kF16: {
      const uint16_t* in = static_cast<const uint16_t*>(base) + offset;
      for (int64_t i = 0; i < n; ++i) out[i] = F32FromF16Bits(in[i]);
      break;
    }
    default:
      std::memcpy(out, static_cast<const float*>(base) + offset,
                  static_cast<size_t>(n) * sizeof(float));
  }
}

// Stores n f32 values as elements [offset, offset + n) of a buffer of
// `dtype`, rounding each once.
inline void StoreRowFromF32(const float* in, int64_t n, void* base, DType dtype,
                            int64_t offset) {
  switch (dtype) {
    case DType::kBF16: {
      uint16_t* out = static_cast<uint16_t*>(base) + offset;
      for (int64_t i = 0; i < n; ++i) out[i] = BF16BitsFromF32(in[i]);
      break;
    }
    case DType::kF16: {
      uint16_t* out = static_cast<uint16_t*>(base) + offset;
      for (int64_t i = 0; i < n; ++i) out[i] = F16BitsFromF32(in[i]);
      break;
    }
    default:
      std::memcpy(static_cast<float*>(base) + offset, in,
                  static_cast<size_t>(n) * sizeof(float));
  }
}

}  // namespace raggedattn

#endif  // RAGGEDATTN_SRC_DTYPE_H_
