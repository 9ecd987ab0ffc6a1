#include "model/sentence_model.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "core/error.h"
#include "io/safetensors.h"
#include "tokenizer/unicode.h"

namespace et {

int SentenceModel::embedding_dim() const {
  if (!dense.empty()) return static_cast<int>(dense.back().linear.out);
  return cfg.hidden * static_cast<int>(pooling.modes.size());
}

int64_t SentenceModel::num_parameters() const {
  int64_t n = 0;
  for (const Param& p : params.params) n += p.value.numel();
  for (const DenseModule& d : dense)
    for (const Param& p : d.params.params) n += p.value.numel();
  return n;
}

PoolMode parse_pool_mode(const std::string& s, const std::string& where) {
  if (s == "cls") return PoolMode::Cls;
  if (s == "mean") return PoolMode::Mean;
  if (s == "max") return PoolMode::Max;
  if (s == "mean_sqrt_len_tokens" || s == "mean_sqrt_len") return PoolMode::MeanSqrtLen;
  if (s == "weightedmean") return PoolMode::WeightedMean;
  if (s == "lasttoken") return PoolMode::LastToken;
  fail(where, ": pooling_mode '", s,
       "' is not one of cls, mean, max, mean_sqrt_len_tokens, weightedmean, lasttoken");
}

const char* pool_mode_name(PoolMode m) {
  switch (m) {
    case PoolMode::Cls:
      return "cls";
    case PoolMode::Mean:
      return "mean";
    case PoolMode::Max:
      return "max";
    case PoolMode::MeanSqrtLen:
      return "mean_sqrt_len_tokens";
    case PoolMode::WeightedMean:
      return "weightedmean";
    case PoolMode::LastToken:
      return "lasttoken";
  }
  return "?";
}

static PoolingConfig read_pooling(const std::string& file) {
  json j = read_json_file(file);
  PoolingConfig p;
  p.include_prompt = j.value("include_prompt", true);
  if (j.contains("pooling_mode")) {  // v6 layout: a string (or a list of strings)
    const json& m = j["pooling_mode"];
    if (m.is_string()) {
      p.modes.push_back(parse_pool_mode(m.get<std::string>(), file));
    } else if (m.is_array()) {
      for (const auto& x : m) {
        ET_CHECK(x.is_string(), file, ": pooling_mode entries must be strings");
        p.modes.push_back(parse_pool_mode(x.get<std::string>(), file));
      }
    } else {
      fail(file, ": pooling_mode must be a string or a list of strings");
    }
  } else {  // classic layout: one boolean flag per mode, concatenated in this order
    const std::pair<const char*, PoolMode> flags[] = {
        {"pooling_mode_cls_token", PoolMode::Cls},
        {"pooling_mode_max_tokens", PoolMode::Max},
        {"pooling_mode_mean_tokens", PoolMode::Mean},
        {"pooling_mode_mean_sqrt_len_tokens", PoolMode::MeanSqrtLen},
        {"pooling_mode_weightedmean_tokens", PoolMode::WeightedMean},
        {"pooling_mode_lasttoken", PoolMode::LastToken}};
    for (const auto& [key, mode] : flags)
      if (j.value(key, false)) p.modes.push_back(mode);
  }
  ET_CHECK(!p.modes.empty(), file, ": no pooling mode is enabled");
  return p;
}

static Act parse_dense_activation(const std::string& name, const std::string& where) {
  std::string last = name.substr(name.rfind('.') == std::string::npos ? 0 : name.rfind('.') + 1);
  if (last == "Identity") return Act::Identity;
  if (last == "Tanh") return Act::Tanh;
  if (last == "ReLU") return Act::ReLU;
  if (last == "Sigmoid") return Act::Sigmoid;
  if (last == "GELU") return Act::GeluErf;
  if (last == "SiLU") return Act::SiLU;
  fail(where, ": activation_function '", name,
       "' is not supported (Identity, Tanh, ReLU, Sigmoid, GELU, SiLU)");
}

static Tensor upload_f32(const Backend& be, const Tensor& t) {
  return be.upload(to_f32(t));
}

static DenseModule read_dense(const std::string& dir, const std::string& path, const Backend& be) {
  DenseModule d;
  d.path = path;
  std::string full = path_join(dir, path);
  std::string cfg_file = path_join(full, "config.json");
  d.config = read_json_file(cfg_file);
  ET_CHECK(d.config.contains("in_features") && d.config.contains("out_features"), cfg_file,
           ": Dense config needs in_features and out_features");
  d.linear.in = d.config["in_features"].get<int64_t>();
  d.linear.out = d.config["out_features"].get<int64_t>();
  d.linear.name = "linear";
  d.act = parse_dense_activation(
      d.config.value("activation_function", "torch.nn.modules.activation.Tanh"), cfg_file);
  std::string wfile = path_join(full, "model.safetensors");
  ET_CHECK(file_exists(wfile), full, ": no model.safetensors (pytorch_model.bin is not supported)");
  TensorFile tf = read_safetensors(wfile);
  d.linear.weight = d.params.add("linear.weight", upload_f32(be, tf.at("linear.weight")));
  ET_CHECK(d.linear.weight->value.shape == Shape({d.linear.out, d.linear.in}), wfile,
           ": linear.weight has shape ", shape_str(d.linear.weight->value.shape), ", expected ",
           shape_str({d.linear.out, d.linear.in}));
  if (d.config.value("bias", true)) {
    d.linear.bias = d.params.add("linear.bias", upload_f32(be, tf.at("linear.bias")));
    ET_CHECK(d.linear.bias->value.numel() == d.linear.out, wfile, ": linear.bias has ",
             d.linear.bias->value.numel(), " values, expected ", d.linear.out);
  }
  return d;
}

static std::string module_kind(const std::string& type) {
  for (const char* k : {"Transformer", "Pooling", "Dense", "Normalize"}) {
    std::string kind = k;
    if (type.size() >= kind.size() &&
        type.compare(type.size() - kind.size(), kind.size(), kind) == 0)
      return kind;
  }
  return "";
}

std::unique_ptr<SentenceModel> load_sentence_model(const std::string& dir, const Backend& be) {
  ET_CHECK(dir_exists(dir), dir, ": model folder does not exist");
  auto m = std::make_unique<SentenceModel>();
  m->dir = dir;
  std::string modules_file = path_join(dir, "modules.json");
  std::string transformer_dir = dir;
  if (file_exists(modules_file)) {
    m->has_st_config = true;
    json mods = read_json_file(modules_file);
    ET_CHECK(mods.is_array() && !mods.empty(), modules_file, ": must be a non-empty array");
    for (size_t i = 0; i < mods.size(); ++i) {
      const json& e = mods[i];
      ET_CHECK(e.is_object() && e.contains("type") && e["type"].is_string(), modules_file,
               ": entry ", i, " needs a string 'type'");
      std::string type = e["type"].get<std::string>();
      std::string kind = module_kind(type);
      ET_CHECK(!kind.empty(), modules_file, ": entry ", i, " has module type '", type,
               "', which is not supported (Transformer, Pooling, Dense, Normalize)");
      std::string path = e.value("path", "");
      m->modules.push_back({kind, path});
      if (kind == "Transformer") {
        ET_CHECK(i == 0, modules_file, ": the Transformer module must come first");
        transformer_dir = path_join(dir, path);
      } else if (kind == "Pooling") {
        m->pooling = read_pooling(path_join(path_join(dir, path), "config.json"));
      } else if (kind == "Dense") {
        m->dense.push_back(read_dense(dir, path, be));
      } else if (kind == "Normalize") {
        m->normalize = true;
      }
    }
    ET_CHECK(!m->modules.empty() && m->modules[0].kind == "Transformer", modules_file,
             ": no Transformer module");
    ET_CHECK(!m->pooling.modes.empty(), modules_file, ": no Pooling module");
  } else {
    m->modules = {{"Transformer", ""}, {"Pooling", "1_Pooling"}};
    m->pooling.modes = {PoolMode::Mean};
  }

  m->transformer_dir = transformer_dir;
  std::string cfg_file = path_join(transformer_dir, "config.json");
  m->hf_config = read_json_file(cfg_file);
  m->cfg = parse_model_config(m->hf_config, cfg_file);
  TensorFile weights = read_model_weights(transformer_dir);
  for (const auto& [name, t] : weights.tensors) {
    ET_CHECK(t.dtype == DType::F32 || t.dtype == DType::F16 || t.dtype == DType::BF16 ||
                 t.dtype == DType::F64,
             weights.path, ": tensor '", name, "' has dtype ", dtype_name(t.dtype),
             ", expected a floating-point type");
    m->params.add(name, upload_f32(be, t));
  }
  m->encoder = bind_encoder(m->cfg, m->params, weights.path);
  m->tokenizer = load_tokenizer(transformer_dir);

  // max_seq_length: sentence_bert_config.json, else min(model_max_length, positions).
  int limit = m->cfg.max_positions - m->cfg.position_offset;
  m->max_seq_length = limit;
  std::string tk_cfg = path_join(transformer_dir, "tokenizer_config.json");
  if (file_exists(tk_cfg)) {
    json t = read_json_file(tk_cfg);
    if (t.contains("model_max_length") && t["model_max_length"].is_number()) {
      double v = t["model_max_length"].get<double>();
      if (v > 0 && v < limit) m->max_seq_length = static_cast<int>(v);
    }
  }
  std::string sb = path_join(transformer_dir, "sentence_bert_config.json");
  if (file_exists(sb)) {
    json j = read_json_file(sb);
    if (j.contains("max_seq_length") && j["max_seq_length"].is_number_integer())
      m->max_seq_length = j["max_seq_length"].get<int>();
    m->do_lower_case = j.value("do_lower_case", false);
  }
  ET_CHECK(m->max_seq_length > 0 && m->max_seq_length <= limit, sb, ": max_seq_length ",
           m->max_seq_length, " must be in [1, ", limit, "] for this model");

  std::string stc = path_join(dir, "config_sentence_transformers.json");
  if (file_exists(stc)) {
    json j = read_json_file(stc);
    if (j.contains("prompts") && j["prompts"].is_object()) {
      for (auto it = j["prompts"].begin(); it != j["prompts"].end(); ++it) {
        ET_CHECK(it->is_string(), stc, ": prompts.", it.key(), " must be a string");
        m->prompts[it.key()] = it->get<std::string>();
      }
    }
    if (j.contains("default_prompt_name") && j["default_prompt_name"].is_string())
      m->default_prompt_name = j["default_prompt_name"].get<std::string>();
    if (j.contains("similarity_fn_name") && j["similarity_fn_name"].is_string())
      m->similarity_fn_name = j["similarity_fn_name"].get<std::string>();
  }
  int in = m->cfg.hidden * static_cast<int>(m->pooling.modes.size());
  for (const DenseModule& d : m->dense) {
    ET_CHECK(d.linear.in == in, path_join(dir, d.path), ": Dense in_features ", d.linear.in,
             " does not match the previous module's output ", in);
    in = static_cast<int>(d.linear.out);
  }
  return m;
}

// Python's str.lower() per code point (sentence-transformers' do_lower_case).
static std::string lower_text(const std::string& s) {
  std::u32string out;
  for (char32_t c : unicode::decode_utf8(s)) unicode::lower_append(c, out);
  return unicode::encode_utf8(out);
}

PackedBatch tokenize_texts(const SentenceModel& m, const std::vector<std::string>& texts,
                           const std::string& prompt) {
  PackedBatch b;
  int32_t prompt_len = 0;
  if (!prompt.empty() && !m.pooling.include_prompt) {
    // sentence-transformers: length of the tokenized prompt (with special tokens) minus one.
    std::string p = m.do_lower_case ? lower_text(prompt) : prompt;
    prompt_len =
        static_cast<int32_t>(encode(m.tokenizer, p, true, m.max_seq_length).ids.size()) - 1;
  }
  std::vector<std::string> full(texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    full[i] = prompt + texts[i];
    if (m.do_lower_case) full[i] = lower_text(full[i]);
  }
  for (const Encoding& e : encode_batch(m.tokenizer, full, true, m.max_seq_length))
    b.add(e.ids, prompt_len);
  return b;
}

Tensor embed_texts(const Backend& be, const SentenceModel& m, const std::vector<std::string>& texts,
                   const std::string& prompt, int batch_size,
                   const std::function<void(int64_t)>& progress) {
  ET_CHECK(batch_size > 0, "batch size must be positive");
  const int64_t n = static_cast<int64_t>(texts.size()), dim = m.embedding_dim();
  Tensor all = cpu_empty({n, dim});
  for (int64_t b = 0; b < n; b += batch_size) {
    const int64_t e = std::min<int64_t>(n, b + batch_size);
    std::vector<std::string> part(texts.begin() + b, texts.begin() + e);
    Tensor emb =
        be.download(embed_forward(be, m, tokenize_texts(m, part, prompt), nullptr, nullptr));
    std::memcpy(all.f32() + b * dim, emb.f32(), emb.nbytes());
    if (progress) progress(e);
  }
  return all;
}

static Tensor concat_columns(const Backend& be, const std::vector<Tensor>& parts) {
  if (parts.size() == 1) return parts[0];
  const int64_t rows = parts[0].dim(0);
  int64_t cols = 0;
  for (const Tensor& p : parts) cols += p.dim(1);
  Tensor out = be.empty({rows, cols}, parts[0].dtype);
  int64_t off = 0;
  for (const Tensor& p : parts) {
    be.copy_columns(p, 0, out, off, p.dim(1));
    off += p.dim(1);
  }
  return out;
}

static Tensor column_slice(const Backend& be, const Tensor& t, int64_t off, int64_t n) {
  if (off == 0 && n == t.dim(1)) return t;
  Tensor out = be.empty({t.dim(0), n}, t.dtype);
  be.copy_columns(t, off, out, 0, n);
  return out;
}

Tensor embed_forward(const Backend& be, const SentenceModel& m, const PackedBatch& batch,
                     EmbedSaved* saved, Rng* rng) {
  ET_CHECK(batch.size() > 0, "embed_forward: empty batch");
  Tensor hidden = encoder_forward(be, m.encoder, batch, saved ? &saved->encoder : nullptr, rng);
  const int64_t B = batch.size(), H = m.cfg.hidden;
  std::vector<Tensor> parts;
  if (saved) {
    saved->batch = batch;
    saved->argmax.clear();
  }
  for (PoolMode mode : m.pooling.modes) {
    Tensor out = be.empty({B, H});
    Tensor argmax;
    if (mode == PoolMode::Max) argmax = be.empty({B, H}, DType::I32);
    be.pool_forward(mode, hidden, batch.cu_seqlens, batch.prompt_lengths, out,
                    mode == PoolMode::Max ? &argmax : nullptr);
    parts.push_back(out);
    if (saved) saved->argmax.push_back(argmax);
  }
  Tensor x = concat_columns(be, parts);
  if (saved) {
    saved->dense.assign(m.dense.size(), {});
    saved->dense_pre.assign(m.dense.size(), {});
  }
  for (size_t i = 0; i < m.dense.size(); ++i) {
    const DenseModule& d = m.dense[i];
    Tensor pre = linear_forward(be, d.linear, x, saved ? &saved->dense[i] : nullptr, nullptr);
    Tensor y = be.empty(pre.shape);
    be.act_forward(d.act, pre, y);
    if (saved) saved->dense_pre[i] = pre;
    x = y;
  }
  if (!m.normalize) return x;
  Tensor y = be.empty(x.shape), norms = be.empty({B});
  be.l2norm_forward(x, y, norms);
  if (saved) {
    saved->pre_norm = x;
    saved->norm_out = y;
    saved->norms = norms;
  }
  return y;
}

void embed_backward(const Backend& be, const SentenceModel& m, EmbedSaved& s, const Tensor& d_emb) {
  Tensor g = d_emb;
  if (m.normalize) {
    Tensor dx = be.empty(g.shape);
    be.l2norm_backward(g, s.norm_out, s.norms, dx);
    g = dx;
  }
  for (size_t i = m.dense.size(); i-- > 0;) {
    const DenseModule& d = m.dense[i];
    Tensor dpre = be.empty(g.shape);
    be.act_backward(d.act, s.dense_pre[i], g, dpre);
    Tensor dx = be.empty({g.dim(0), d.linear.in});
    linear_backward(be, d.linear, s.dense[i], dpre, &dx, false);
    g = dx;
  }
  // d(hidden) is the sum over pooling modes; the first writes it, the others add through a
  // scratch tensor freed before the encoder's backward (which takes d(hidden) over).
  const int64_t T = s.batch.tokens(), H = m.cfg.hidden;
  Tensor d_hidden = be.empty({T, H}, be.act_dtype());
  for (size_t i = 0; i < m.pooling.modes.size(); ++i) {
    Tensor gi = column_slice(be, g, static_cast<int64_t>(i) * H, H);
    Tensor part = i == 0 ? d_hidden : be.empty({T, H}, be.act_dtype());
    be.pool_backward(m.pooling.modes[i], gi, s.batch.cu_seqlens, s.batch.prompt_lengths,
                     s.argmax[i].defined() ? &s.argmax[i] : nullptr, part);
    if (i > 0) be.add(d_hidden, part, d_hidden);
  }
  encoder_backward(be, m.encoder, s.encoder, std::move(d_hidden));
}

}  // namespace et
