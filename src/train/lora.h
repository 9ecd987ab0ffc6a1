// LoRA adapters, PEFT-compatible: which Linear units get one (target_modules as PEFT matches
// them), initialisation as PEFT does it, loading and saving PEFT adapter folders
// (adapter_config.json + adapter_model.safetensors), and merging W + s B A.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/sentence_model.h"

namespace et {

struct LoraConfig {
  int r = 16;
  float alpha = 32;
  float dropout = 0.0f;
  // PEFT semantics: a list matches a module whose name equals an entry or ends with
  // "." + entry; a single string (target_regex) must match the whole module name.
  std::vector<std::string> target_modules;
  std::string target_regex;
  bool use_rslora = false;

  float scaling() const;
};

// Default target modules: PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING for the
// BERT family; every attention and MLP projection for ModernBERT, Qwen3 and Gemma3.
std::vector<std::string> default_lora_targets(Family f);
bool lora_matches(const LoraConfig& c, const std::string& module_name);

// Adds LoRA to every matching Linear of the encoder: A kaiming-uniform (bound 1/sqrt(in), the
// value of kaiming_uniform_(a=sqrt(5))), B zero. Returns the number of adapted modules.
int apply_lora(const Backend& be, SentenceModel& m, const LoraConfig& c, uint64_t seed);

// Reads a PEFT adapter folder: its config is applied to `m` and its A/B weights loaded (keys
// with or without "base_model.model.", F32 or F64). Returns the config.
LoraConfig load_adapter(const Backend& be, SentenceModel& m, const std::string& dir);
void save_adapter(const Backend& be, const SentenceModel& m, const LoraConfig& c,
                  const std::string& dir);

// W <- W + s B A for every adapted Linear, then removes the adapters.
void merge_lora(const Backend& be, SentenceModel& m);

}  // namespace et
