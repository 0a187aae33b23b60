// Attention shapes of real models, the workloads `raggedattn bench` and the
// Google Benchmark suite run.

#ifndef RAGGEDATTN_TOOLS_PRESETS_H_
#define RAGGEDATTN_TOOLS_PRESETS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "raggedattn/raggedattn.h"

namespace raggedattn {
namespace bench {

// One model's decode attention: head counts, head sizes and the options its
// attention layers use.
struct Preset {
  std::string name;
  int64_t num_qo_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t head_dim_v = 0;
  // Keys before p - window_left are not attended; -1: no window.
  int64_t window_left = -1;
  double soft_cap = 0.0;                // 0: no cap
  std::optional<double> softmax_scale;  // absent: 1 / sqrt(head_dim)
  // Sink logits of shape [num_qo_heads, num_sinks]; 0: no sinks.
  int64_t num_sinks = 0;

  int64_t GroupSize() const { return num_qo_heads / num_kv_heads; }

  // Returns the options of this preset with num_threads set.
  Options ToOptions(int num_threads) const;
};

// Returns the built-in presets in table order.
const std::vector<Preset>& Presets();

// Returns the preset called `name` (case-insensitive), or nullptr.
const Preset* FindPreset(const std::string& name);

// Returns the preset names joined by ", " for help and error messages.
std::string PresetNames();

}  // namespace bench
}  // namespace raggedattn

#endif  // RAGGEDATTN_TOOLS_PRESETS_H_
