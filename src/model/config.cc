#include "model/config.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace et {

const char* family_name(Family f) {
  switch (f) {
    case Family::Bert:
      return "bert";
    case Family::XlmRoberta:
      return "xlm-roberta";
    case Family::DistilBert:
      return "distilbert";
    case Family::MPNet:
      return "mpnet";
    case Family::ModernBert:
      return "modernbert";
    case Family::Qwen3:
      return "qwen3";
    case Family::Gemma3:
      return "gemma3";
  }
  return "?";
}

bool is_rotary_family(Family f) {
  return f == Family::ModernBert || f == Family::Qwen3 || f == Family::Gemma3;
}

// rope_theta of a layer type: transformers 5 writes "rope_parameters" (per layer type for
// models with two kinds of layers), older files "rope_theta" / "global_rope_theta" /
// "local_rope_theta" / "rope_local_base_freq".
static double rope_theta_of(const json& j, const char* layer_type, const char* legacy_key,
                            double dflt) {
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
    const json& r = j["rope_parameters"];
    if (r.contains(layer_type) && r[layer_type].is_object() && r[layer_type].contains("rope_theta"))
      return r[layer_type]["rope_theta"].get<double>();
    if (r.contains("rope_theta")) return r["rope_theta"].get<double>();
  }
  if (legacy_key && j.contains(legacy_key) && j[legacy_key].is_number())
    return j[legacy_key].get<double>();
  if (j.contains("rope_theta") && j["rope_theta"].is_number()) return j["rope_theta"].get<double>();
  return dflt;
}

static void check_rope_type(const json& j, const std::string& where) {
  if (!j.contains("rope_parameters") || !j["rope_parameters"].is_object()) return;
  auto check = [&](const json& r) {
    std::string t = r.value("rope_type", "default");
    ET_CHECK(t == "default", where, ": rope_type '", t,
             "' is not supported (only 'default' rotary embeddings)");
  };
  const json& r = j["rope_parameters"];
  if (r.contains("rope_type")) check(r);
  for (auto it = r.begin(); it != r.end(); ++it)
    if (it->is_object()) check(*it);
}

// layer_types (transformers 5), else the family's older rule `sliding(i)`.
template <typename Rule>
static std::vector<bool> sliding_layers(const json& j, int layers, Rule sliding,
                                        const std::string& where) {
  std::vector<bool> s(static_cast<size_t>(layers), false);
  if (j.contains("layer_types") && j["layer_types"].is_array()) {
    ET_CHECK(static_cast<int>(j["layer_types"].size()) == layers, where, ": layer_types has ",
             j["layer_types"].size(), " entries for ", layers, " layers");
    for (int i = 0; i < layers; ++i) {
      std::string t = j["layer_types"][i].get<std::string>();
      ET_CHECK(t == "full_attention" || t == "sliding_attention", where, ": layer_types[", i, "] '",
               t, "' is not full_attention or sliding_attention");
      s[static_cast<size_t>(i)] = t == "sliding_attention";
    }
  } else {
    for (int i = 0; i < layers; ++i) s[static_cast<size_t>(i)] = sliding(i);
  }
  return s;
}

static ModelConfig parse_rotary(const json& j, Family fam, const std::string& where);

Act parse_hidden_act(const std::string& name, const std::string& where) {
  if (name == "gelu") return Act::GeluErf;
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast")
    return Act::GeluTanh;
  if (name == "relu") return Act::ReLU;
  if (name == "silu" || name == "swish") return Act::SiLU;
  if (name == "tanh") return Act::Tanh;
  fail(where, ": hidden activation '", name, "' is not supported");
}

// A dropout probability of config.json: absent -> dflt; otherwise a number in [0, 1).
static float get_prob(const json& j, const char* key, float dflt, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  ET_CHECK(j[key].is_number(), where, ": field '", key, "' must be a number");
  const float p = j[key].get<float>();
  ET_CHECK(p >= 0 && p < 1, where, ": field '", key, "' must be in [0, 1), got ", p);
  return p;
}

static int get_int(const json& j, const char* key, const std::string& where) {
  ET_CHECK(j.contains(key) && j[key].is_number_integer(), where, ": field '", key,
           "' must be an integer");
  int v = j[key].get<int>();
  ET_CHECK(v >= 0, where, ": field '", key, "' must be non-negative, got ", v);
  return v;
}

ModelConfig parse_model_config(const json& j, const std::string& where) {
  ET_CHECK(j.is_object(), where, ": config must be a JSON object");
  ET_CHECK(j.contains("model_type") && j["model_type"].is_string(), where,
           ": missing string field 'model_type'");
  ModelConfig c;
  c.model_type = j["model_type"].get<std::string>();
  const std::string& t = c.model_type;
  if (t == "bert") {
    c.family = Family::Bert;
  } else if (t == "xlm-roberta" || t == "roberta" || t == "camembert") {
    c.family = Family::XlmRoberta;
  } else if (t == "distilbert") {
    c.family = Family::DistilBert;
  } else if (t == "mpnet") {
    c.family = Family::MPNet;
  } else if (t == "modernbert") {
    return parse_rotary(j, Family::ModernBert, where);
  } else if (t == "qwen3") {
    return parse_rotary(j, Family::Qwen3, where);
  } else if (t == "gemma3_text" || t == "gemma3") {
    return parse_rotary(j, Family::Gemma3, where);
  } else {
    fail(where, ": model_type '", t,
         "' is not supported (supported: bert, xlm-roberta, roberta, distilbert, mpnet, "
         "modernbert, qwen3, gemma3_text)");
  }
  if (c.family == Family::DistilBert) {
    c.hidden = get_int(j, "dim", where);
    c.layers = get_int(j, "n_layers", where);
    c.heads = get_int(j, "n_heads", where);
    c.intermediate = get_int(j, "hidden_dim", where);
    c.act = parse_hidden_act(j.value("activation", "gelu"), where);
    ET_CHECK(!j.value("sinusoidal_pos_embds", false), where,
             ": sinusoidal_pos_embds=true is not supported");
    c.hidden_dropout = get_prob(j, "dropout", 0.1f, where);
    c.attention_dropout = get_prob(j, "attention_dropout", 0.1f, where);
  } else {
    c.hidden = get_int(j, "hidden_size", where);
    c.layers = get_int(j, "num_hidden_layers", where);
    c.heads = get_int(j, "num_attention_heads", where);
    c.intermediate = get_int(j, "intermediate_size", where);
    c.act = parse_hidden_act(j.value("hidden_act", "gelu"), where);
    c.norm_eps = j.value("layer_norm_eps", 1e-12f);
    c.type_vocab = j.value("type_vocab_size", 0);
    c.hidden_dropout = get_prob(j, "hidden_dropout_prob", 0.1f, where);
    c.attention_dropout = get_prob(j, "attention_probs_dropout_prob", 0.1f, where);
  }
  c.vocab = get_int(j, "vocab_size", where);
  c.max_positions = get_int(j, "max_position_embeddings", where);
  c.pad_id = j.contains("pad_token_id") && j["pad_token_id"].is_number_integer()
                 ? j["pad_token_id"].get<int>()
                 : 0;
  ET_CHECK(c.heads > 0 && c.hidden % c.heads == 0, where, ": hidden size ", c.hidden,
           " is not divisible by the number of attention heads ", c.heads);
  c.head_dim = c.hidden / c.heads;
  c.kv_heads = c.heads;
  if (c.family == Family::XlmRoberta || c.family == Family::MPNet) c.position_offset = c.pad_id + 1;
  if (c.family == Family::MPNet) c.rel_buckets = j.value("relative_attention_num_buckets", 32);
  return c;
}

static ModelConfig parse_rotary(const json& j, Family fam, const std::string& where) {
  ModelConfig c;
  c.family = fam;
  c.model_type = j["model_type"].get<std::string>();
  c.hidden = get_int(j, "hidden_size", where);
  c.layers = get_int(j, "num_hidden_layers", where);
  c.heads = get_int(j, "num_attention_heads", where);
  c.intermediate = get_int(j, "intermediate_size", where);
  c.vocab = get_int(j, "vocab_size", where);
  c.max_positions = get_int(j, "max_position_embeddings", where);
  c.pad_id = j.contains("pad_token_id") && j["pad_token_id"].is_number_integer()
                 ? j["pad_token_id"].get<int>()
                 : 0;
  ET_CHECK(c.heads > 0, where, ": num_attention_heads must be positive");
  c.kv_heads = j.contains("num_key_value_heads") && j["num_key_value_heads"].is_number_integer()
                   ? j["num_key_value_heads"].get<int>()
                   : c.heads;
  ET_CHECK(c.kv_heads > 0 && c.heads % c.kv_heads == 0, where, ": num_attention_heads ", c.heads,
           " is not a multiple of num_key_value_heads ", c.kv_heads);
  c.head_dim = j.contains("head_dim") && j["head_dim"].is_number_integer()
                   ? j["head_dim"].get<int>()
                   : c.hidden / c.heads;
  ET_CHECK(c.head_dim > 0 && c.head_dim % 2 == 0 && c.head_dim <= 256, where, ": head_dim ",
           c.head_dim, " must be even and at most 256");
  check_rope_type(j, where);
  if (fam == Family::ModernBert) {
    ET_CHECK(c.hidden % c.heads == 0, where, ": hidden size ", c.hidden,
             " is not divisible by the number of attention heads ", c.heads);
    c.head_dim = c.hidden / c.heads;
    c.act = parse_hidden_act(j.value("hidden_activation", "gelu"), where);
    c.norm_eps = j.value("norm_eps", 1e-5f);
    c.layer_norm = true;
    c.norm_bias = j.value("norm_bias", false);
    c.attn_bias = j.value("attention_bias", false);
    c.mlp_bias = j.value("mlp_bias", false);
    const int every = std::max(1, j.value("global_attn_every_n_layers", 3));
    c.sliding = sliding_layers(
        j, c.layers, [every](int i) { return i % every != 0; }, where);
    // ModernBERT's local attention: a window of local_attention tokens centred on the query
    c.window = j.value("local_attention", 128) / 2;
    c.rope_theta = rope_theta_of(j, "full_attention", "global_rope_theta", 160000.0);
    c.rope_theta_local = rope_theta_of(j, "sliding_attention", "local_rope_theta", 10000.0);
  } else if (fam == Family::Qwen3) {
    c.act = parse_hidden_act(j.value("hidden_act", "silu"), where);
    c.norm_eps = j.value("rms_norm_eps", 1e-6f);
    c.causal = true;
    c.qk_norm = true;
    c.attn_bias = j.value("attention_bias", false);
    c.sliding = sliding_layers(
        j, c.layers, [](int) { return false; }, where);
    ET_CHECK(!j.value("use_sliding_window", false), where,
             ": use_sliding_window=true is not supported for qwen3");
    c.rope_theta = c.rope_theta_local = rope_theta_of(j, "full_attention", nullptr, 1000000.0);
  } else {  // Gemma3 text (EmbeddingGemma: bidirectional attention)
    c.act = parse_hidden_act(j.value("hidden_activation", "gelu_pytorch_tanh"), where);
    c.norm_eps = j.value("rms_norm_eps", 1e-6f);
    c.causal = !j.value("use_bidirectional_attention", false);
    c.qk_norm = true;
    c.norm_offset = 1.0f;
    c.sandwich_norm = true;
    c.attn_bias = j.value("attention_bias", false);
    // older files: every sliding_window_pattern-th layer (counting from 1) is global
    const int every = std::max(1, j.value("sliding_window_pattern", 6));
    c.sliding = sliding_layers(
        j, c.layers, [every](int i) { return (i + 1) % every != 0; }, where);
    // bidirectional sliding window: sliding_window tokens centred on the query, |i - j| <=
    // sliding_window / 2 (what transformers 5 computes for EmbeddingGemma; fixture-checked)
    c.window = j.value("sliding_window", 512) / 2;
    c.rope_theta = rope_theta_of(j, "full_attention", nullptr, 1000000.0);
    c.rope_theta_local = rope_theta_of(j, "sliding_attention", "rope_local_base_freq", 10000.0);
    float qpas = j.value("query_pre_attn_scalar", static_cast<float>(c.head_dim));
    c.attn_scale = 1.0f / std::sqrt(qpas);
    c.emb_scale = std::sqrt(static_cast<float>(c.hidden));
    ET_CHECK(j.value("attn_logit_softcapping", json()).is_null(), where,
             ": attn_logit_softcapping is not supported");
  }
  if (c.attn_scale == 0.0f) c.attn_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  for (const char* key :
       {"attention_dropout", "embedding_dropout", "mlp_dropout", "hidden_dropout"}) {
    const float p = get_prob(j, key, 0.0f, where);
    if (p > 0)
      c.unsupported_dropout +=
          std::string(c.unsupported_dropout.empty() ? "" : ", ") + key + "=" + std::to_string(p);
  }
  return c;
}

}  // namespace et
