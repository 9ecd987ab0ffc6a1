#include <CLI/CLI.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>

#include "cli/commands.h"
#include "core/error.h"
#include "io/npy.h"
#include "io/safetensors.h"
#include "io/text_input.h"
#include "model/sentence_model.h"
#include "ops/cpu/cpu_backend.h"
#include "ops/cuda/cuda_backend.h"
#include "train/lora.h"

namespace et::cli {

namespace {

struct EncodeOptions {
  std::string model, adapter, input, output, prompt_name, prompt, text_field = "text";
  bool has_prompt = false;
  int batch_size = 32;
  std::string device = "cpu";
  bool normalize = false;
};

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

void write_embeddings(const std::string& path, const Tensor& emb) {
  if (ends_with(path, ".npy")) {
    write_npy(path, emb);
  } else if (ends_with(path, ".safetensors")) {
    write_safetensors(path, {{"embeddings", emb}});
  } else if (ends_with(path, ".jsonl")) {
    std::string out;
    const int64_t n = emb.dim(0), d = emb.dim(1);
    char buf[32];
    for (int64_t i = 0; i < n; ++i) {
      out += "{\"index\": " + std::to_string(i) + ", \"embedding\": [";
      for (int64_t j = 0; j < d; ++j) {
        std::snprintf(buf, sizeof(buf), "%s%.9g", j ? ", " : "", emb.f32()[i * d + j]);
        out += buf;
      }
      out += "]}\n";
    }
    write_text_atomic(path, out);
  } else {
    fail(path, ": output must end in .npy, .safetensors or .jsonl");
  }
}

int run_encode(const EncodeOptions& o) {
  ET_CHECK(o.batch_size > 0, "--batch-size must be positive");
  auto be = make_backend(o.device);
  auto m = load_sentence_model(o.model, *be);
  if (!o.adapter.empty()) load_adapter(*be, *m, o.adapter);
  std::string prompt;
  if (o.has_prompt) {
    prompt = o.prompt;
  } else {
    std::string name = o.prompt_name.empty() ? m->default_prompt_name : o.prompt_name;
    if (!name.empty()) {
      auto it = m->prompts.find(name);
      ET_CHECK(it != m->prompts.end(), o.model, ": no prompt named '", name,
               "' in config_sentence_transformers.json");
      prompt = it->second;
    }
  }
  TextInput in = read_text_input(o.input, o.text_field);
  const int64_t n = static_cast<int64_t>(in.size()), dim = m->embedding_dim();
  Tensor all = cpu_empty({n, dim});
  auto t0 = std::chrono::steady_clock::now();
  int64_t tokens = 0;
  const bool tty = isatty(fileno(stderr));
  for (int64_t b = 0; b < n; b += o.batch_size) {
    int64_t e = std::min<int64_t>(n, b + o.batch_size);
    PackedBatch batch;
    if (in.pretokenized()) {
      for (int64_t i = b; i < e; ++i) {
        const auto& ids = in.ids[i];
        ET_CHECK(static_cast<int>(ids.size()) <= m->max_seq_length, o.input, ": row ", i + 1,
                 " has ", ids.size(), " token ids, more than max_seq_length ", m->max_seq_length);
        for (int32_t id : ids)
          ET_CHECK(id < m->cfg.vocab, o.input, ": row ", i + 1, ": token id ", id,
                   " is outside the vocabulary of ", m->cfg.vocab);
        batch.add(ids);
      }
    } else {
      std::vector<std::string> texts(in.texts.begin() + b, in.texts.begin() + e);
      batch = tokenize_texts(*m, texts, prompt);
    }
    tokens += batch.tokens();
    Tensor emb = be->download(embed_forward(*be, *m, batch, nullptr, nullptr));
    if (o.normalize && !m->normalize) {
      Tensor y = cpu_empty(emb.shape), norms = cpu_empty({emb.dim(0)});
      make_cpu_backend()->l2norm_forward(emb, y, norms);
      emb = y;
    }
    std::memcpy(all.f32() + b * dim, emb.f32(), emb.nbytes());
    if (tty)
      std::fprintf(stderr, "\rencoded %lld/%lld", static_cast<long long>(e),
                   static_cast<long long>(n));
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  write_embeddings(o.output, all);
  std::fprintf(stderr,
               "%sencoded %lld texts (%lld tokens) in %.2f s (%.0f tokens/s) -> %s [%lld x %lld]\n",
               tty ? "\r" : "", static_cast<long long>(n), static_cast<long long>(tokens), secs,
               secs > 0 ? tokens / secs : 0.0, o.output.c_str(), static_cast<long long>(n),
               static_cast<long long>(dim));
  return 0;
}

}  // namespace

Run add_encode(CLI::App& app) {
  auto o = std::make_shared<EncodeOptions>();
  app.add_option("--model", o->model, "Model folder (sentence-transformers or transformers)")
      ->required();
  app.add_option("--adapter", o->adapter, "PEFT LoRA adapter folder applied to the model");
  app.add_option("--input", o->input,
                 "Input: .txt (one text per line), .jsonl (a text field per row, or "
                 "\"input_ids\" arrays of pre-tokenized ids)")
      ->required();
  app.add_option("--output", o->output,
                 "Output: .npy, .safetensors (tensor 'embeddings') or .jsonl")
      ->required();
  app.add_option("--text-field", o->text_field, "Text field of JSONL rows")->capture_default_str();
  auto* pn = app.add_option("--prompt-name", o->prompt_name,
                            "Prompt from config_sentence_transformers.json (e.g. query)");
  app.add_option("--prompt", o->prompt, "Prompt text prepended to every input")
      ->excludes(pn)
      ->each([o](const std::string&) { o->has_prompt = true; });
  app.add_option("--batch-size", o->batch_size, "Texts per forward pass")->capture_default_str();
  app.add_flag("--normalize", o->normalize, "L2-normalise embeddings (if the model does not)");
  app.add_option("--device", o->device, "cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  return [o]() { return run_encode(*o); };
}

}  // namespace et::cli
