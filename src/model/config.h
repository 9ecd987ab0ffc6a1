// Model configuration read from a Hugging Face `config.json`, normalised across families.
#pragma once

#include <string>

#include "io/files.h"
#include "ops/backend.h"

namespace et {

enum class Family { Bert, XlmRoberta, DistilBert, MPNet };

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
};

ModelConfig parse_model_config(const json& j, const std::string& where);
Act parse_hidden_act(const std::string& name, const std::string& where);

}  // namespace et
