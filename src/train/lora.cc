#include "train/lora.h"

#include <cmath>
#include <filesystem>
#include <regex>

#include "core/error.h"
#include "core/rng.h"
#include "io/safetensors.h"
#include "ops/cpu/cpu_backend.h"
#include "train/step.h"

namespace et {

float LoraConfig::scaling() const {
  return use_rslora ? alpha / std::sqrt(static_cast<float>(r)) : alpha / static_cast<float>(r);
}

std::vector<std::string> default_lora_targets(Family f) {
  switch (f) {
    case Family::Bert:
    case Family::XlmRoberta:
      return {"query", "value"};
    case Family::DistilBert:
      return {"q_lin", "v_lin"};
    case Family::MPNet:
      return {"q", "v"};
    case Family::ModernBert:
      return {"Wqkv", "Wo", "Wi"};
    case Family::Qwen3:
    case Family::Gemma3:
      // every projection, as embedding fine-tuning recipes for these models use
      return {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  }
  return {};
}

bool lora_matches(const LoraConfig& c, const std::string& name) {
  if (!c.target_regex.empty()) return std::regex_match(name, std::regex(c.target_regex));
  for (const std::string& t : c.target_modules) {
    if (name == t) return true;
    if (name.size() > t.size() && name.compare(name.size() - t.size(), t.size(), t) == 0 &&
        name[name.size() - t.size() - 1] == '.')
      return true;
  }
  return false;
}

// Module names as PEFT sees them inside the transformers model (without a "bert." style
// prefix of the weights file, which the base model class strips).
static std::string peft_module_name(const SentenceModel& m, const Linear& l) {
  return l.name.substr(encoder_prefix(m.encoder).size());
}

static void add_adapter(const Backend& be, SentenceModel& m, Linear& l, const LoraConfig& c,
                        Tensor a, Tensor b) {
  l.lora_a = m.params.add(l.name + ".lora_A.weight", be.upload(a));
  l.lora_b = m.params.add(l.name + ".lora_B.weight", be.upload(b));
  l.lora_scaling = c.scaling();
  l.lora_dropout = c.dropout;
}

int apply_lora(const Backend& be, SentenceModel& m, const LoraConfig& c, uint64_t seed) {
  ET_CHECK(c.r > 0, "lora r must be positive, got ", c.r);
  ET_CHECK(c.dropout >= 0 && c.dropout < 1, "lora_dropout must be in [0, 1), got ", c.dropout);
  Rng rng(seed);
  int n = 0;
  for (Linear* l : encoder_linears(m.encoder)) {
    if (!lora_matches(c, peft_module_name(m, *l))) continue;
    ET_CHECK(!l->lora_a, l->name, ": already has a LoRA adapter");
    Tensor a = cpu_empty({c.r, l->in});
    const double bound = 1.0 / std::sqrt(static_cast<double>(l->in));
    for (int64_t i = 0; i < a.numel(); ++i)
      a.f32()[i] = static_cast<float>((2 * rng.uniform() - 1) * bound);
    add_adapter(be, m, *l, c, a, cpu_zeros({l->out, c.r}));
    ++n;
  }
  ET_CHECK(n > 0, "no module matches the LoRA target_modules");
  return n;
}

LoraConfig load_adapter(const Backend& be, SentenceModel& m, const std::string& dir) {
  std::string cfg_file = path_join(dir, "adapter_config.json");
  json j = read_json_file(cfg_file);
  ET_CHECK(j.value("peft_type", "LORA") == "LORA", cfg_file, ": peft_type '",
           j.value("peft_type", ""), "' is not supported (LORA only)");
  LoraConfig c;
  ET_CHECK(j.contains("r") && j["r"].is_number_integer(), cfg_file,
           ": field 'r' must be an integer");
  c.r = j["r"].get<int>();
  c.alpha = j.value("lora_alpha", static_cast<float>(c.r));
  c.dropout = j.value("lora_dropout", 0.0f);
  c.use_rslora = j.value("use_rslora", false);
  ET_CHECK(!j.value("use_dora", false), cfg_file, ": DoRA adapters are not supported");
  ET_CHECK(j.value("rank_pattern", json::object()).empty() &&
               j.value("alpha_pattern", json::object()).empty(),
           cfg_file, ": rank_pattern/alpha_pattern are not supported");
  const json& t = j.value("target_modules", json());
  if (t.is_string()) {
    c.target_regex = t.get<std::string>();
  } else if (t.is_array()) {
    c.target_modules = t.get<std::vector<std::string>>();
  } else {
    fail(cfg_file, ": target_modules must be a list of names or a regular expression");
  }
  std::string wfile = path_join(dir, "adapter_model.safetensors");
  TensorFile tf = read_safetensors(wfile);
  auto lookup = [&](const std::string& key) -> const Tensor* {
    for (const std::string& k : {key, "base_model.model." + key})
      if (tf.has(k)) return &tf.at(k);
    return nullptr;
  };
  int n = 0;
  for (Linear* l : encoder_linears(m.encoder)) {
    std::string name = peft_module_name(m, *l);
    if (!lora_matches(c, name)) continue;
    const Tensor* a = lookup(name + ".lora_A.weight");
    const Tensor* b = lookup(name + ".lora_B.weight");
    ET_CHECK(a && b, wfile, ": no lora_A/lora_B weights for module '", name, "'");
    ET_CHECK(a->shape == Shape({c.r, l->in}) && b->shape == Shape({l->out, c.r}), wfile,
             ": LoRA weights of '", name, "' have shapes ", shape_str(a->shape), " and ",
             shape_str(b->shape), ", expected ", shape_str({c.r, l->in}), " and ",
             shape_str({l->out, c.r}));
    add_adapter(be, m, *l, c, to_f32(*a), to_f32(*b));
    ++n;
  }
  ET_CHECK(n > 0, cfg_file, ": no module of the model matches target_modules");
  return c;
}

void save_adapter(const Backend& be, const SentenceModel& m, const LoraConfig& c,
                  const std::string& dir) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  SentenceModel& mm = const_cast<SentenceModel&>(m);
  for (Linear* l : encoder_linears(mm.encoder)) {
    if (!l->lora_a) continue;
    std::string key = "base_model.model." + peft_module_name(m, *l);
    tensors.emplace_back(key + ".lora_A.weight", be.download(l->lora_a->value));
    tensors.emplace_back(key + ".lora_B.weight", be.download(l->lora_b->value));
  }
  ET_CHECK(!tensors.empty(), "save_adapter: the model has no LoRA adapters");
  json targets = c.target_regex.empty() ? json(c.target_modules) : json(c.target_regex);
  json cfg = {{"peft_type", "LORA"},
              {"task_type", "FEATURE_EXTRACTION"},
              {"base_model_name_or_path", m.dir},
              {"r", c.r},
              {"lora_alpha", c.alpha},
              {"lora_dropout", c.dropout},
              {"target_modules", targets},
              {"use_rslora", c.use_rslora},
              {"use_dora", false},
              {"bias", "none"},
              {"fan_in_fan_out", false},
              {"init_lora_weights", true},
              {"inference_mode", true},
              {"modules_to_save", nullptr},
              {"layers_to_transform", nullptr},
              {"layers_pattern", nullptr},
              {"rank_pattern", json::object()},
              {"alpha_pattern", json::object()},
              {"revision", nullptr}};
  std::string tmp = dir + ".partial";
  std::error_code ec;
  std::filesystem::remove_all(tmp, ec);
  make_dirs(tmp);
  write_json_atomic(path_join(tmp, "adapter_config.json"), cfg);
  write_safetensors(path_join(tmp, "adapter_model.safetensors"), tensors, {{"format", "pt"}});
  replace_dir_atomic(tmp, dir);
}

void merge_lora(const Backend& be, SentenceModel& m) {
  const std::unique_ptr<Backend> cpu = make_cpu_backend();
  for (Linear* l : encoder_linears(m.encoder)) {
    if (!l->lora_a) continue;
    // W[out, in] += s * B[out, r] @ A[r, in], in fp32 on the host: a GPU product of fp32
    // operands runs in TF32 (about 2.5e-4 relative error in the merged weight), and the fp32
    // W of a frozen weight kept in bf16 is on the host anyway (host_f32).
    Param& w = *l->weight;
    Tensor wf = w.host_f32.defined() ? w.host_f32 : be.download(w.value);
    cpu->matmul(be.download(l->lora_b->value), false, be.download(l->lora_a->value), false, wf,
                l->lora_scaling, 1.0f);
    w.value = be.device() == Device::CPU ? wf : be.upload(wf);
    w.host_f32 = Tensor{};
    l->lora_a = l->lora_b = nullptr;
  }
  // Adapters were added after the base weights, so they form the tail of the store; popping
  // them keeps every other Param where the modules point.
  auto is_lora = [](const Param& p) {
    return p.name.find(".lora_A.") != std::string::npos ||
           p.name.find(".lora_B.") != std::string::npos;
  };
  while (!m.params.params.empty() && is_lora(m.params.params.back())) m.params.params.pop_back();
  for (const Param& p : m.params.params)
    ET_CHECK(!is_lora(p), "merge_lora: adapter weight '", p.name,
             "' is not at the end of the store");
}

}  // namespace et
