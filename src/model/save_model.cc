// Writing sentence-transformers folders (the classic layout, which every sentence-transformers
// version loads): modules.json, 1_Pooling/config.json with pooling_mode_* flags,
// sentence_bert_config.json, config_sentence_transformers.json, Dense sub-folders,
// the transformer's config.json + model.safetensors and its tokenizer files.
#include <filesystem>

#include "core/error.h"
#include "io/safetensors.h"
#include "model/sentence_model.h"

namespace et {

namespace fs = std::filesystem;

static std::vector<std::pair<std::string, Tensor>> host_params(const Backend& be,
                                                               const ParamStore& store) {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const Param& p : store.params)
    out.emplace_back(p.name, p.host_f32.defined() ? p.host_f32 : be.download(p.value));
  return out;
}

static json pooling_json(const SentenceModel& m) {
  auto has = [&](PoolMode x) {
    for (PoolMode p : m.pooling.modes)
      if (p == x) return true;
    return false;
  };
  return {{"word_embedding_dimension", m.cfg.hidden},
          {"pooling_mode_cls_token", has(PoolMode::Cls)},
          {"pooling_mode_mean_tokens", has(PoolMode::Mean)},
          {"pooling_mode_max_tokens", has(PoolMode::Max)},
          {"pooling_mode_mean_sqrt_len_tokens", has(PoolMode::MeanSqrtLen)},
          {"pooling_mode_weightedmean_tokens", has(PoolMode::WeightedMean)},
          {"pooling_mode_lasttoken", has(PoolMode::LastToken)},
          {"include_prompt", m.pooling.include_prompt}};
}

void save_sentence_model(const Backend& be, const SentenceModel& m, const std::string& dir) {
  std::string tmp = dir + ".partial";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  make_dirs(tmp);
  write_json_atomic(path_join(tmp, "config.json"), m.hf_config);
  write_safetensors(path_join(tmp, "model.safetensors"), host_params(be, m.params),
                    {{"format", "pt"}});
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "vocab.txt",
                        "special_tokens_map.json", "sentencepiece.bpe.model", "tokenizer.model",
                        "added_tokens.json", "merges.txt", "vocab.json"}) {
    std::string src = path_join(m.transformer_dir, f);
    if (file_exists(src)) write_text_atomic(path_join(tmp, f), read_text_file(src));
  }
  write_json_atomic(path_join(tmp, "sentence_bert_config.json"),
                    json{{"max_seq_length", m.max_seq_length}, {"do_lower_case", m.do_lower_case}});
  json prompts = json::object();
  for (const auto& [k, v] : m.prompts) prompts[k] = v;
  write_json_atomic(
      path_join(tmp, "config_sentence_transformers.json"),
      json{{"__version__", {{"embedtune", EMBEDTUNE_VERSION}}},
           {"prompts", prompts},
           {"default_prompt_name",
            m.default_prompt_name.empty() ? json(nullptr) : json(m.default_prompt_name)},
           {"similarity_fn_name", m.similarity_fn_name}});
  json modules = json::array();
  int idx = 0;
  auto add = [&](const std::string& type, const std::string& path) {
    modules.push_back({{"idx", idx},
                       {"name", std::to_string(idx)},
                       {"path", path},
                       {"type", "sentence_transformers.models." + type}});
    ++idx;
  };
  add("Transformer", "");
  std::string pool = std::to_string(idx) + "_Pooling";
  make_dirs(path_join(tmp, pool));
  write_json_atomic(path_join(path_join(tmp, pool), "config.json"), pooling_json(m));
  add("Pooling", pool);
  for (const DenseModule& d : m.dense) {
    std::string sub = std::to_string(idx) + "_Dense";
    make_dirs(path_join(tmp, sub));
    write_json_atomic(path_join(path_join(tmp, sub), "config.json"), d.config);
    write_safetensors(path_join(path_join(tmp, sub), "model.safetensors"),
                      host_params(be, d.params));
    add("Dense", sub);
  }
  if (m.normalize) {
    std::string sub = std::to_string(idx) + "_Normalize";
    make_dirs(path_join(tmp, sub));
    add("Normalize", sub);
  }
  write_json_atomic(path_join(tmp, "modules.json"), modules);
  replace_dir_atomic(tmp, dir);
}

}  // namespace et
