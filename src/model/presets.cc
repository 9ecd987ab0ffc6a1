#include "model/presets.h"

#include <cmath>
#include <filesystem>
#include <sstream>

#include "core/error.h"
#include "core/rng.h"
#include "io/safetensors.h"
#include "model/sentence_model.h"
#include "ops/cpu/cpu_backend.h"

namespace et {

namespace {

struct Preset {
  const char* name;
  int hidden, layers, heads, intermediate, vocab;
};

const Preset kPresets[] = {
    {"tiny-bert", 64, 2, 4, 128, 30522},      {"minilm-l6", 384, 6, 12, 1536, 30522},
    {"minilm-l12", 384, 12, 12, 1536, 30522}, {"bge-small", 384, 12, 12, 1536, 30522},
    {"bge-base", 768, 12, 12, 3072, 30522},   {"bge-large", 1024, 24, 16, 4096, 30522},
};

void fill_normal(Tensor& t, Rng& rng, float std) {
  float* p = t.f32();
  for (int64_t i = 0; i < t.numel(); i += 2) {
    double u1 = std::max(rng.uniform(), 1e-300), u2 = rng.uniform();
    double r = std::sqrt(-2.0 * std::log(u1));
    p[i] = static_cast<float>(std * r * std::cos(2 * M_PI * u2));
    if (i + 1 < t.numel()) p[i + 1] = static_cast<float>(std * r * std::sin(2 * M_PI * u2));
  }
}

Tensor filled(const Shape& s, float v) {
  Tensor t = cpu_empty(s);
  std::fill(t.f32(), t.f32() + t.numel(), v);
  return t;
}

// transformers config.json of the rotary presets (the published models' configurations).
json rotary_preset_config(const std::string& name) {
  if (name == "modernbert-base")
    return {{"architectures", {"ModernBertModel"}},
            {"model_type", "modernbert"},
            {"vocab_size", 50368},
            {"hidden_size", 768},
            {"num_hidden_layers", 22},
            {"num_attention_heads", 12},
            {"intermediate_size", 1152},
            {"hidden_activation", "gelu"},
            {"max_position_embeddings", 8192},
            {"global_attn_every_n_layers", 3},
            {"local_attention", 128},
            {"global_rope_theta", 160000.0},
            {"local_rope_theta", 10000.0},
            {"norm_eps", 1e-5},
            {"norm_bias", false},
            {"attention_bias", false},
            {"mlp_bias", false},
            {"initializer_range", 0.02},
            {"pad_token_id", 50283}};
  if (name == "qwen3-0.6b")
    return {{"architectures", {"Qwen3Model"}},
            {"model_type", "qwen3"},
            {"vocab_size", 151669},
            {"hidden_size", 1024},
            {"num_hidden_layers", 28},
            {"num_attention_heads", 16},
            {"num_key_value_heads", 8},
            {"head_dim", 128},
            {"intermediate_size", 3072},
            {"hidden_act", "silu"},
            {"max_position_embeddings", 32768},
            {"rope_theta", 1000000.0},
            {"rms_norm_eps", 1e-6},
            {"tie_word_embeddings", true},
            {"initializer_range", 0.02}};
  if (name == "embeddinggemma-300m") {
    json types = json::array();
    for (int i = 0; i < 24; ++i)
      types.push_back((i + 1) % 6 == 0 ? "full_attention" : "sliding_attention");
    return {{"architectures", {"Gemma3TextModel"}},
            {"model_type", "gemma3_text"},
            {"vocab_size", 262144},
            {"hidden_size", 768},
            {"num_hidden_layers", 24},
            {"num_attention_heads", 3},
            {"num_key_value_heads", 1},
            {"head_dim", 256},
            {"intermediate_size", 1152},
            {"hidden_activation", "gelu_pytorch_tanh"},
            {"max_position_embeddings", 2048},
            {"sliding_window", 512},
            {"layer_types", types},
            {"query_pre_attn_scalar", 256},
            {"rope_theta", 1000000.0},
            {"rope_local_base_freq", 10000.0},
            {"rms_norm_eps", 1e-6},
            {"use_bidirectional_attention", true},
            {"initializer_range", 0.02},
            {"pad_token_id", 0}};
  }
  return json();
}

const char* const kRotaryPresets[] = {"modernbert-base", "qwen3-0.6b", "embeddinggemma-300m"};

}  // namespace

std::vector<std::string> preset_names() {
  std::vector<std::string> out;
  for (const Preset& p : kPresets) out.push_back(p.name);
  for (const char* p : kRotaryPresets) out.push_back(p);
  return out;
}

json preset_config(const std::string& name, int vocab_size) {
  json rotary = rotary_preset_config(name);
  if (!rotary.is_null()) {
    if (vocab_size > 0) rotary["vocab_size"] = vocab_size;
    return rotary;
  }
  for (const Preset& p : kPresets) {
    if (name != p.name) continue;
    return {{"architectures", {"BertModel"}},
            {"model_type", "bert"},
            {"hidden_size", p.hidden},
            {"num_hidden_layers", p.layers},
            {"num_attention_heads", p.heads},
            {"intermediate_size", p.intermediate},
            {"hidden_act", "gelu"},
            {"hidden_dropout_prob", 0.1},
            {"attention_probs_dropout_prob", 0.1},
            {"max_position_embeddings", 512},
            {"type_vocab_size", 2},
            {"layer_norm_eps", 1e-12},
            {"initializer_range", 0.02},
            {"pad_token_id", 0},
            {"vocab_size", vocab_size > 0 ? vocab_size : p.vocab}};
  }
  std::string names;
  for (const std::string& p : preset_names()) names += (names.empty() ? "" : ", ") + p;
  fail("unknown preset '", name, "' (available: ", names, ")");
}

std::vector<std::pair<std::string, Tensor>> random_bert_weights(const json& c, uint64_t seed) {
  Rng rng(seed);
  const int64_t h = c["hidden_size"], f = c["intermediate_size"], v = c["vocab_size"],
                P = c["max_position_embeddings"], tv = c["type_vocab_size"];
  const float std = c.value("initializer_range", 0.02f);
  std::vector<std::pair<std::string, Tensor>> w;
  auto normal = [&](const std::string& name, const Shape& s) {
    Tensor t = cpu_empty(s);
    fill_normal(t, rng, std);
    w.emplace_back(name, t);
    return t;
  };
  auto linear = [&](const std::string& name, int64_t in, int64_t out) {
    normal(name + ".weight", {out, in});
    w.emplace_back(name + ".bias", filled({out}, 0));
  };
  auto norm = [&](const std::string& name) {
    w.emplace_back(name + ".weight", filled({h}, 1));
    w.emplace_back(name + ".bias", filled({h}, 0));
  };
  Tensor word = normal("embeddings.word_embeddings.weight", {v, h});
  int pad = c.value("pad_token_id", 0);
  std::fill(word.f32() + pad * h, word.f32() + (pad + 1) * h, 0.0f);
  normal("embeddings.position_embeddings.weight", {P, h});
  normal("embeddings.token_type_embeddings.weight", {tv, h});
  norm("embeddings.LayerNorm");
  for (int i = 0; i < c["num_hidden_layers"].get<int>(); ++i) {
    std::string p = "encoder.layer." + std::to_string(i) + ".";
    linear(p + "attention.self.query", h, h);
    linear(p + "attention.self.key", h, h);
    linear(p + "attention.self.value", h, h);
    linear(p + "attention.output.dense", h, h);
    norm(p + "attention.output.LayerNorm");
    linear(p + "intermediate.dense", h, f);
    linear(p + "output.dense", f, h);
    norm(p + "output.LayerNorm");
  }
  linear("pooler.dense", h, h);
  return w;
}

// Rotary families: normal(0, 0.02) matrices and embeddings, norms at their identity (1, or 0
// for Gemma's 1 + w), names as transformers writes them.
static std::vector<std::pair<std::string, Tensor>> random_rotary_weights(const json& c,
                                                                         uint64_t seed) {
  ModelConfig cfg = parse_model_config(c, "preset");
  Rng rng(seed);
  const int64_t h = cfg.hidden, f = cfg.intermediate, D = cfg.head_dim;
  const int64_t qd = cfg.heads * D, kvd = cfg.kv_heads * D;
  std::vector<std::pair<std::string, Tensor>> w;
  auto normal = [&](const std::string& name, const Shape& s) {
    Tensor t = cpu_empty(s);
    fill_normal(t, rng, 0.02f);
    w.emplace_back(name, t);
  };
  const float unit = 1.0f - cfg.norm_offset;  // norm weights at the identity
  auto norm = [&](const std::string& name, int64_t n) {
    w.emplace_back(name + ".weight", filled({n}, unit));
  };
  const bool modern = cfg.family == Family::ModernBert;
  normal(modern ? "embeddings.tok_embeddings.weight" : "embed_tokens.weight", {cfg.vocab, h});
  if (modern) norm("embeddings.norm", h);
  for (int i = 0; i < cfg.layers; ++i) {
    std::string p = "layers." + std::to_string(i) + ".";
    if (modern) {
      if (i > 0) norm(p + "attn_norm", h);
      normal(p + "attn.Wqkv.weight", {3 * h, h});
      normal(p + "attn.Wo.weight", {h, h});
      norm(p + "mlp_norm", h);
      normal(p + "mlp.Wi.weight", {2 * f, h});
      normal(p + "mlp.Wo.weight", {h, f});
      continue;
    }
    norm(p + "input_layernorm", h);
    normal(p + "self_attn.q_proj.weight", {qd, h});
    normal(p + "self_attn.k_proj.weight", {kvd, h});
    normal(p + "self_attn.v_proj.weight", {kvd, h});
    normal(p + "self_attn.o_proj.weight", {h, qd});
    norm(p + "self_attn.q_norm", D);
    norm(p + "self_attn.k_norm", D);
    norm(p + "post_attention_layernorm", h);
    if (cfg.sandwich_norm) {
      norm(p + "pre_feedforward_layernorm", h);
      norm(p + "post_feedforward_layernorm", h);
    }
    normal(p + "mlp.gate_proj.weight", {f, h});
    normal(p + "mlp.up_proj.weight", {f, h});
    normal(p + "mlp.down_proj.weight", {h, f});
  }
  norm(modern ? "final_norm" : "norm", h);
  return w;
}

std::vector<std::pair<std::string, Tensor>> random_weights(const json& config, uint64_t seed) {
  if (is_rotary_family(parse_model_config(config, "preset").family))
    return random_rotary_weights(config, seed);
  return random_bert_weights(config, seed);
}

std::unique_ptr<SentenceModel> random_model_in_memory(const std::string& preset, const Backend& be,
                                                      uint64_t seed) {
  auto m = std::make_unique<SentenceModel>();
  m->hf_config = preset_config(preset);
  m->cfg = parse_model_config(m->hf_config, preset);
  for (auto& [name, t] : random_weights(m->hf_config, seed)) m->params.add(name, be.upload(t));
  m->encoder = bind_encoder(m->cfg, m->params, preset);
  // each family's usual pooling: last token for Qwen3-Embedding, mean otherwise
  m->pooling.modes = {m->cfg.family == Family::Qwen3 ? PoolMode::LastToken : PoolMode::Mean};
  m->normalize = true;
  m->max_seq_length = m->cfg.max_positions - m->cfg.position_offset;
  m->dir = "<" + preset + ">";
  return m;
}

void create_random_model(const std::string& preset, const std::string& vocab_txt,
                         const std::string& out_dir, uint64_t seed) {
  std::string vocab = read_text_file(vocab_txt);
  int n = 0;
  std::istringstream in(vocab);
  for (std::string line; std::getline(in, line);) ++n;
  json cfg = preset_config(preset, n);
  std::string tmp = out_dir + ".init";
  make_dirs(tmp);
  write_json_atomic(path_join(tmp, "config.json"), cfg);
  write_safetensors(path_join(tmp, "model.safetensors"), random_weights(cfg, seed));
  write_text_atomic(path_join(tmp, "vocab.txt"), vocab);
  write_json_atomic(path_join(tmp, "tokenizer_config.json"),
                    json{{"do_lower_case", true},
                         {"model_max_length", 512},
                         {"tokenizer_class", "BertTokenizer"}});
  auto be = make_cpu_backend();
  auto m = load_sentence_model(tmp, *be);
  m->normalize = true;
  m->max_seq_length = 256;
  save_sentence_model(*be, *m, out_dir);
  std::error_code ec;
  std::filesystem::remove_all(tmp, ec);
}

}  // namespace et
