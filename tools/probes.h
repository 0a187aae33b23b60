// Probes of this machine's limits, measured in the same run as the kernel:
// how fast the cores can stream a buffer from memory, and how many f32 FMAs
// they can retire. The bench reports the kernel as a fraction of each.

#ifndef RAGGEDATTN_TOOLS_PROBES_H_
#define RAGGEDATTN_TOOLS_PROBES_H_

#include <cstddef>
#include <cstdint>
#include <vector>

namespace raggedattn {
namespace bench {

struct ByteSpan {
  const void* data = nullptr;
  size_t bytes = 0;
};

// Reads every byte of `spans` once with a vectorized sum, the bytes split
// evenly over num_threads threads; returns the sum, which depends on every
// byte so the reads cannot be elided.
uint64_t ReadProbe(const std::vector<ByteSpan>& spans, int num_threads);

// Runs `iterations` rounds of independent f32 vector FMAs on each of
// num_threads threads; returns the floating-point operations done (2 per FMA
// lane).
double FmaProbe(int num_threads, int64_t iterations);

// Returns the SIMD target the probes dispatch to, e.g. "AVX3".
const char* ProbeTargetName();

}  // namespace bench
}  // namespace raggedattn

#endif  // RAGGEDATTN_TOOLS_PROBES_H_
