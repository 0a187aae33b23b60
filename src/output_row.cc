#include "src/output_row.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/output_row.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace raggedattn {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Every AVX2 and AVX-512 target has F16C, whose conversion rounds to nearest
// even with subnormals and overflow to inf; other targets keep the scalar
// rounding. (A scalar loop made f16 the slowest output of a one-token call.)
void StoreF16Row(const float* in, int64_t n, uint16_t* out) {
  int64_t i = 0;
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
  const hn::ScalableTag<float> df;
  const hn::Rebind<hwy::float16_t, decltype(df)> df16;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  for (; i + lanes <= n; i += lanes) {
    hn::StoreU(hn::DemoteTo(df16, hn::LoadU(df, in + i)), df16,
               reinterpret_cast<hwy::float16_t*>(out + i));
  }
#endif
  for (; i < n; ++i) out[i] = F16BitsFromF32(in[i]);
}

// BF16BitsFromF32 in vectors: round to nearest even by adding 0x7FFF plus
// the lowest kept bit, NaNs quietened; plain integer ops, so every target.
void StoreBF16Row(const float* in, int64_t n, uint16_t* out) {
  int64_t i = 0;
#if HWY_TARGET != HWY_SCALAR
  const hn::ScalableTag<float> df;
  const hn::RebindToUnsigned<decltype(df)> du32;
  const hn::RebindToSigned<decltype(df)> di32;
  const hn::Rebind<uint16_t, decltype(df)> du16;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  for (; i + lanes <= n; i += lanes) {
    const auto bits = hn::BitCast(du32, hn::LoadU(df, in + i));
    const auto high = hn::ShiftRight<16>(bits);
    const auto bias =
        hn::Add(hn::Set(du32, 0x7FFFu), hn::And(high, hn::Set(du32, 1u)));
    const auto rounded = hn::ShiftRight<16>(hn::Add(bits, bias));
    // |bits| > inf's bits, compared as signed: both are below 2^31.
    const auto magnitude =
        hn::BitCast(di32, hn::And(bits, hn::Set(du32, 0x7FFFFFFFu)));
    const auto is_nan =
        hn::RebindMask(du32, hn::Gt(magnitude, hn::Set(di32, 0x7F800000)));
    const auto result =
        hn::IfThenElse(is_nan, hn::Or(high, hn::Set(du32, 0x0040u)), rounded);
    // Every lane is in [0, 0xFFFF], so the saturating narrowing is exact.
    hn::StoreU(hn::DemoteTo(du16, hn::BitCast(di32, result)), du16, out + i);
  }
#endif
  for (; i < n; ++i) out[i] = BF16BitsFromF32(in[i]);
}

// acc[i] += weight * x[i] for i < n, in vectors.
void AddScaledRow(const float* x, float weight, int64_t n, float* acc) {
  int64_t i = 0;
#if HWY_TARGET != HWY_SCALAR
  const hn::ScalableTag<float> df;
  const auto w = hn::Set(df, weight);
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  for (; i + lanes <= n; i += lanes) {
    hn::StoreU(hn::MulAdd(w, hn::LoadU(df, x + i), hn::LoadU(df, acc + i)),
               df, acc + i);
  }
#endif
  for (; i < n; ++i) acc[i] += weight * x[i];
}

}  // namespace HWY_NAMESPACE
}  // namespace raggedattn
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace raggedattn {

HWY_EXPORT(StoreF16Row);
HWY_EXPORT(StoreBF16Row);
HWY_EXPORT(AddScaledRow);

void StoreOutputRow(const float* in, int64_t n, void* base, DType dtype,
                    int64_t offset) {
  if (dtype == DType::kF16) {
    HWY_DYNAMIC_DISPATCH(StoreF16Row)
    (in, n, static_cast<uint16_t*>(base) + offset);
    return;
  }
  if (dtype == DType::kBF16) {
    HWY_DYNAMIC_DISPATCH(StoreBF16Row)
    (in, n, static_cast<uint16_t*>(base) + offset);
    return;
  }
  StoreRowFromF32(in, n, base, dtype, offset);
}

void AddScaledRow(const float* x, float weight, int64_t n, float* acc) {
  HWY_DYNAMIC_DISPATCH(AddScaledRow)(x, weight, n, acc);
}

}  // namespace raggedattn
#endif  // HWY_ONCE
