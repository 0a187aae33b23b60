#include "tools/presets.h"

#include <cctype>

namespace raggedattn {
namespace bench {

Options Preset::ToOptions(int num_threads) const {
  Options options;
  options.softmax_scale = softmax_scale;
  if (window_left >= 0) options.sliding_window = SlidingWindow{window_left, 0};
  if (soft_cap > 0.0) options.logits_soft_cap = soft_cap;
  options.num_threads = num_threads;
  return options;
}

const std::vector<Preset>& Presets() {
  // Head counts and sizes from each model's published config. A config's
  // sliding_window = W (the last W tokens) is window_left = W - 1.
  static const std::vector<Preset>* const presets = [] {
    auto* list = new std::vector<Preset>;
    Preset preset;

    preset = Preset{};
    preset.name = "Llama-3-8B";
    preset.num_qo_heads = 32;
    preset.num_kv_heads = 8;
    preset.head_dim = preset.head_dim_v = 128;
    list->push_back(preset);

    preset = Preset{};
    preset.name = "Qwen2.5-7B";
    preset.num_qo_heads = 28;
    preset.num_kv_heads = 4;
    preset.head_dim = preset.head_dim_v = 128;
    list->push_back(preset);

    preset = Preset{};
    preset.name = "Mistral-7B";
    preset.num_qo_heads = 32;
    preset.num_kv_heads = 8;
    preset.head_dim = preset.head_dim_v = 128;
    preset.window_left = 4096 - 1;
    list->push_back(preset);

    // Gemma 2 scales by query_pre_attn_scalar**-0.5 = 256**-0.5 and caps
    // attention logits at 50.
    preset = Preset{};
    preset.name = "Gemma-2-9B";
    preset.num_qo_heads = 16;
    preset.num_kv_heads = 8;
    preset.head_dim = preset.head_dim_v = 256;
    preset.soft_cap = 50.0;
    preset.softmax_scale = 1.0 / 16.0;
    list->push_back(preset);

    // gpt-oss: one learned sink logit per query head, and a 128-token window
    // on its sliding layers.
    preset = Preset{};
    preset.name = "gpt-oss-20b";
    preset.num_qo_heads = 64;
    preset.num_kv_heads = 8;
    preset.head_dim = preset.head_dim_v = 64;
    preset.window_left = 128 - 1;
    preset.num_sinks = 1;
    list->push_back(preset);

    // Multi-query attention with a group of 71: the compute-heavy shape.
    preset = Preset{};
    preset.name = "Falcon-7B";
    preset.num_qo_heads = 71;
    preset.num_kv_heads = 1;
    preset.head_dim = preset.head_dim_v = 64;
    list->push_back(preset);
    return list;
  }();
  return *presets;
}

namespace {

bool EqualsIgnoringCase(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

}  // namespace

const Preset* FindPreset(const std::string& name) {
  for (const Preset& preset : Presets()) {
    if (EqualsIgnoringCase(preset.name, name)) return &preset;
  }
  return nullptr;
}

std::string PresetNames() {
  std::string names;
  for (const Preset& preset : Presets()) {
    if (!names.empty()) names += ", ";
    names += preset.name;
  }
  return names;
}

}  // namespace bench
}  // namespace raggedattn
