// A sentence-transformers model: Transformer -> Pooling -> [Dense...] -> [Normalize], read from
// a sentence-transformers folder (classic layout with `sentence_transformers.models.*` module
// types, or the v6 layout with `sentence_transformers.base.modules...`) or a plain
// transformers folder (mean pooling, as sentence-transformers does for those).
#pragma once

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/encoder.h"
#include "tokenizer/tokenizer.h"

namespace et {

struct PoolingConfig {
  std::vector<PoolMode> modes;  // concatenated in this order (sentence-transformers' order)
  bool include_prompt = true;
};

struct DenseModule {
  std::string path;   // sub-folder, e.g. "2_Dense"
  ParamStore params;  // "linear.weight", "linear.bias"
  Linear linear;
  Act act = Act::Tanh;
  json config;  // as read, written back on save
};

struct ModuleEntry {
  std::string kind;  // Transformer, Pooling, Dense, Normalize
  std::string path;
};

struct SentenceModel {
  std::string dir;
  std::string transformer_dir;  // folder of the Transformer module (tokenizer files live here)
  ModelConfig cfg;
  json hf_config;     // config.json as read (written back on export)
  ParamStore params;  // every transformer weight, under its file name
  Encoder encoder;
  Tokenizer tokenizer;
  int max_seq_length = 512;
  bool do_lower_case = false;
  PoolingConfig pooling;
  std::deque<DenseModule> dense;  // deque: modules hold pointers into their own ParamStore
  bool normalize = false;
  std::vector<ModuleEntry> modules;
  std::map<std::string, std::string> prompts;
  std::string default_prompt_name;
  std::string similarity_fn_name = "cosine";
  bool has_st_config = false;  // modules.json present

  int embedding_dim() const;
  int64_t num_parameters() const;
};

// Loads the folder onto the backend (weights converted to F32 on the CPU backend).
std::unique_ptr<SentenceModel> load_sentence_model(const std::string& dir, const Backend& be);

// What backward needs from embed_forward.
struct EmbedSaved {
  EncoderSaved encoder;
  PackedBatch batch;
  std::vector<Tensor> argmax;  // per pooling mode (Max only)
  std::vector<LinearSaved> dense;
  std::vector<Tensor> dense_pre;  // pre-activation of each Dense
  Tensor pre_norm, norm_out, norms;
};

// Tokenizes texts (prompt prepended; lowercased when do_lower_case), truncated to
// max_seq_length, into a packed batch. The prompt's token count (sentence-transformers'
// prompt_length) is recorded when the pooling excludes prompts.
PackedBatch tokenize_texts(const SentenceModel& m, const std::vector<std::string>& texts,
                           const std::string& prompt = "");
// Sentence embeddings [B, dim] of a packed batch.
Tensor embed_forward(const Backend& be, const SentenceModel& m, const PackedBatch& batch,
                     EmbedSaved* saved, Rng* rng);
// Embeddings [n, dim] (host F32) of texts, batch_size texts per forward pass; `progress` (if
// set) is called with the number of texts done.
Tensor embed_texts(const Backend& be, const SentenceModel& m, const std::vector<std::string>& texts,
                   const std::string& prompt, int batch_size,
                   const std::function<void(int64_t)>& progress = {});

// Backpropagates d_emb [B, dim] into the gradients of all trainable parameters. Consumes
// `saved`: the encoder's tensors are released as backward uses them.
void embed_backward(const Backend& be, const SentenceModel& m, EmbedSaved& saved,
                    const Tensor& d_emb);

// Writes the model as a sentence-transformers folder (classic layout, safetensors weights,
// tokenizer files copied from the source folder), atomically: `dir` is replaced only once the
// whole folder is written.
void save_sentence_model(const Backend& be, const SentenceModel& m, const std::string& dir);

PoolMode parse_pool_mode(const std::string& s, const std::string& where);
const char* pool_mode_name(PoolMode m);

}  // namespace et
