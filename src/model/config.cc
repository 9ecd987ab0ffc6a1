#include "model/config.h"

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
  }
  return "?";
}

Act parse_hidden_act(const std::string& name, const std::string& where) {
  if (name == "gelu") return Act::GeluErf;
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast")
    return Act::GeluTanh;
  if (name == "relu") return Act::ReLU;
  if (name == "silu" || name == "swish") return Act::SiLU;
  if (name == "tanh") return Act::Tanh;
  fail(where, ": hidden activation '", name, "' is not supported");
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
  } else {
    fail(where, ": model_type '", t,
         "' is not supported (supported: bert, xlm-roberta, roberta, distilbert, mpnet)");
  }
  if (c.family == Family::DistilBert) {
    c.hidden = get_int(j, "dim", where);
    c.layers = get_int(j, "n_layers", where);
    c.heads = get_int(j, "n_heads", where);
    c.intermediate = get_int(j, "hidden_dim", where);
    c.act = parse_hidden_act(j.value("activation", "gelu"), where);
    ET_CHECK(!j.value("sinusoidal_pos_embds", false), where,
             ": sinusoidal_pos_embds=true is not supported");
  } else {
    c.hidden = get_int(j, "hidden_size", where);
    c.layers = get_int(j, "num_hidden_layers", where);
    c.heads = get_int(j, "num_attention_heads", where);
    c.intermediate = get_int(j, "intermediate_size", where);
    c.act = parse_hidden_act(j.value("hidden_act", "gelu"), where);
    c.norm_eps = j.value("layer_norm_eps", 1e-12f);
    c.type_vocab = j.value("type_vocab_size", 0);
  }
  c.vocab = get_int(j, "vocab_size", where);
  c.max_positions = get_int(j, "max_position_embeddings", where);
  c.pad_id = j.contains("pad_token_id") && j["pad_token_id"].is_number_integer()
                 ? j["pad_token_id"].get<int>()
                 : 0;
  ET_CHECK(c.heads > 0 && c.hidden % c.heads == 0, where, ": hidden size ", c.hidden,
           " is not divisible by the number of attention heads ", c.heads);
  c.head_dim = c.hidden / c.heads;
  if (c.family == Family::XlmRoberta || c.family == Family::MPNet) c.position_offset = c.pad_id + 1;
  if (c.family == Family::MPNet) c.rel_buckets = j.value("relative_attention_num_buckets", 32);
  return c;
}

}  // namespace et
