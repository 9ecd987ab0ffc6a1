// Architecture presets (configurations of real models) and random initialisation, for
// `embedtune init` and `embedtune bench`, where weight values do not matter but shapes do.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "io/files.h"

namespace et {

// transformers config.json of a preset: tiny-bert, minilm-l6, minilm-l12, bge-small, bge-base,
// bge-large, modernbert-base, qwen3-0.6b, embeddinggemma-300m. `vocab_size` overrides the
// preset's vocabulary when > 0.
json preset_config(const std::string& name, int vocab_size = 0);
std::vector<std::string> preset_names();

// Weights of a BERT model initialised as transformers does (normal(0, 0.02) matrices and
// embeddings, zero biases, unit LayerNorm weights, zero padding row).
std::vector<std::pair<std::string, Tensor>> random_bert_weights(const json& config, uint64_t seed);
// Random weights of any preset's architecture (BERT family or rotary).
std::vector<std::pair<std::string, Tensor>> random_weights(const json& config, uint64_t seed);

struct SentenceModel;
struct Backend;
// A randomly initialised model of a preset held in memory only (mean pooling + Normalize, no
// tokenizer): for benchmarks, which feed token ids directly.
std::unique_ptr<SentenceModel> random_model_in_memory(const std::string& preset, const Backend& be,
                                                      uint64_t seed);

// Writes a complete sentence-transformers folder (mean pooling + Normalize) with random
// weights and the WordPiece vocabulary `vocab_txt`.
void create_random_model(const std::string& preset, const std::string& vocab_txt,
                         const std::string& out_dir, uint64_t seed);

}  // namespace et
