#include <unistd.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "core/error.h"
#include "eval/evaluate.h"
#include "io/retrieval_data.h"
#include "model/sentence_model.h"
#include "ops/cuda/cuda_backend.h"
#include "train/lora.h"

namespace et::cli {

namespace {

struct EvalOptions {
  std::string model, adapter, baseline, data, split = "test", output, device = "cpu";
  std::string query_prompt_name, corpus_prompt_name;
  std::vector<std::string> columns;
  int batch_size = 64;
};

std::string prompt_of(const SentenceModel& m, const std::string& name,
                      const std::string& fallback) {
  std::string n = name.empty() ? fallback : name;
  if (n.empty()) return "";
  auto it = m.prompts.find(n);
  if (it == m.prompts.end()) {
    ET_CHECK(name.empty(), m.dir, ": no prompt named '", n,
             "' in config_sentence_transformers.json");
    return "";
  }
  return it->second;
}

// Embeds queries and corpus with one model and scores the rankings.
json evaluate(const Backend& be, const std::string& model_dir, const std::string& adapter,
              const RetrievalSet& data, const EvalOptions& o) {
  auto m = load_sentence_model(model_dir, be);
  if (!adapter.empty()) load_adapter(be, *m, adapter);
  const bool tty = isatty(fileno(stderr));
  auto t0 = std::chrono::steady_clock::now();
  RetrievalEvalOptions eo;
  eo.query_prompt = prompt_of(*m, o.query_prompt_name, "query");
  eo.document_prompt = prompt_of(*m, o.corpus_prompt_name, "document");
  eo.batch_size = o.batch_size;
  if (tty)
    eo.progress = [&](const char* what, int64_t done, int64_t total) {
      std::fprintf(stderr, "\r%s: embedding %s %lld/%lld", model_dir.c_str(), what,
                   static_cast<long long>(done), static_cast<long long>(total));
    };
  json metrics = evaluate_retrieval(be, *m, data, eo);
  if (tty) std::fprintf(stderr, "\r\033[K");
  const bool cosine = m->similarity_fn_name != "dot";
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "%s: %zu queries, %zu documents in %.1f s\n", model_dir.c_str(),
               data.queries.size(), data.docs.size(), secs);
  return {{"model", model_dir}, {"similarity", cosine ? "cosine" : "dot"}, {"metrics", metrics}};
}

int run_eval(const EvalOptions& o) {
  auto be = make_backend(o.device);
  RetrievalSet data = read_retrieval_set(o.data, o.split, o.columns);
  json result = evaluate(*be, o.model, o.adapter, data, o);
  json base;
  if (!o.baseline.empty()) base = evaluate(*be, o.baseline, "", data, o);
  std::printf("%-16s %10s%s\n", "metric", "model", base.is_null() ? "" : "   baseline      change");
  for (const char* group : {"accuracy@k", "precision@k", "recall@k", "mrr@k", "ndcg@k", "map@k"}) {
    const json& g = result["metrics"][group];
    std::vector<int> ks;
    for (auto it = g.begin(); it != g.end(); ++it) ks.push_back(std::stoi(it.key()));
    std::sort(ks.begin(), ks.end());
    for (int k : ks) {
      const std::string key = std::to_string(k);
      std::string name = std::string(group).substr(0, std::string(group).size() - 1).append(key);
      double v = g[key].get<double>();
      if (base.is_null()) {
        std::printf("%-16s %10.4f\n", name.c_str(), v);
      } else {
        double b = base["metrics"][group][key].get<double>();
        std::printf("%-16s %10.4f %10.4f %+11.4f\n", name.c_str(), v, b, v - b);
      }
    }
  }
  json out = {{"data", o.data},
              {"queries", data.queries.size()},
              {"documents", data.docs.size()},
              {"result", result}};
  if (!base.is_null()) out["baseline"] = base;
  if (!o.output.empty()) write_json_atomic(o.output, out);
  return 0;
}

}  // namespace

Run add_eval(CLI::App& app) {
  auto o = std::make_shared<EvalOptions>();
  app.add_option("--model", o->model, "Model folder")->required();
  app.add_option("--adapter", o->adapter, "PEFT LoRA adapter applied to the model");
  app.add_option("--data", o->data,
                 "BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv) or a pairs file "
                 "(.jsonl/.csv/.tsv with query and passage columns)")
      ->required();
  app.add_option("--split", o->split, "qrels split of a BEIR folder")->capture_default_str();
  app.add_option("--columns", o->columns, "Query and passage columns of a pairs file")
      ->delimiter(',');
  app.add_option("--baseline-model", o->baseline, "Also evaluate this model and show the change");
  app.add_option("--batch-size", o->batch_size, "Texts per forward pass")->capture_default_str();
  app.add_option("--query-prompt-name", o->query_prompt_name,
                 "Prompt for queries (default: 'query' if the model has it)");
  app.add_option("--corpus-prompt-name", o->corpus_prompt_name,
                 "Prompt for documents (default: 'document' if present)");
  app.add_option("--output", o->output, "Write all metrics as JSON here");
  app.add_option("--device", o->device, "cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  return [o]() { return run_eval(*o); };
}

}  // namespace et::cli
