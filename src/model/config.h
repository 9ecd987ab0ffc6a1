// Model configuration read from a Hugging Face `config.json`, normalised across families.
#pragma once

#include <string>
#include <vector>

#include "io/files.h"
#include "ops/backend.h"

namespace et {

enum class Family { Bert, XlmRoberta, DistilBert, MPNet, ModernBert, Qwen3, Gemma3 };

// Whether a family is a pre-norm rotary transformer (model/rotary_encoder.h) rather than the
// post-LayerNorm BERT encoder (model/bert.h).
bool is_rotary_family(Family f);

const char* family_name(Family f);

struct ModelConfig {
  Family family = Family::Bert;
  std::string model_type;  // as written in config.json
  int hidden = 0, layers = 0, heads = 0, head_dim = 0, intermediate = 0;
  int vocab = 0, max_positions = 0, type_vocab = 0;
  float norm_eps = 1e-12f;
  int pad_id = 0;
  // Position ids start here: 0 for BERT/DistilBERT; pad_id + 1 for RoBERTa-style models
  // (transformers' create_position_ids_from_input_ids).
  int position_offset = 0;
  int rel_buckets = 0;  // MPNet relative attention buckets (0 = none)
  Act act = Act::GeluErf;
  // Dropout in training (transformers' train mode): on the embedding output and the sublayer
  // outputs before their residual sums (hidden_dropout_prob; DistilBERT's `dropout`, which
  // drops only the FFN output), and on the attention probabilities
  // (attention_probs_dropout_prob; `attention_dropout`). The rotary families' configs name
  // theirs in unsupported_dropout when any is non-zero (they are 0 in the published models).
  float hidden_dropout = 0.0f, attention_dropout = 0.0f;
  std::string unsupported_dropout;

  // Rotary families (ModernBERT, Qwen3, Gemma3):
  int kv_heads = 0;                   // grouped-query attention (== heads when absent)
  bool causal = false;                // Qwen3
  std::vector<bool> sliding;          // per layer: local (sliding-window) attention
  int window = -1;                    // |i - j| <= window on sliding layers
  double rope_theta = 10000.0;        // full-attention layers
  double rope_theta_local = 10000.0;  // sliding layers
  float attn_scale = 0.0f;            // 0: 1/sqrt(head_dim)
  bool qk_norm = false;               // per-head RMSNorm of q and k before RoPE
  float norm_offset = 0.0f;           // RMSNorm x * rstd * (w + offset): 1 for Gemma
  bool sandwich_norm = false;         // Gemma3: norms after attention and MLP outputs too
  bool layer_norm = false;            // ModernBERT: LayerNorm (no bias) instead of RMSNorm
  bool norm_bias = false, attn_bias = false, mlp_bias = false;
  float emb_scale = 1.0f;  // Gemma: embeddings * sqrt(hidden)
};

ModelConfig parse_model_config(const json& j, const std::string& where);
Act parse_hidden_act(const std::string& name, const std::string& where);

}  // namespace et
