#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <tuple>

#include "cli/commands.h"
#include "core/error.h"
#include "io/text_input.h"
#include "ops/attention_bench.h"
#include "ops/cuda/cuda_backend.h"
#include "tokenizer/tokenizer.h"
#include "train/benchmark.h"

namespace et::cli {

// Tokenizer throughput: every line of `texts_path` (a text file, one text per line, or JSONL
// with a "text" field) encoded with special tokens, on one thread and on `threads` threads
// (0: all cores); the best of `repeats` runs.
static int run_tokenizer_bench(const std::string& dir, const std::string& texts_path, int threads,
                               int repeats) {
  Tokenizer tok = load_tokenizer(dir);
  std::vector<std::string> texts = read_text_input(texts_path, "text").texts;
  ET_CHECK(!texts.empty(), texts_path, ": no texts");
  size_t bytes = 0;
  for (const auto& t : texts) bytes += t.size();
  auto measure = [&](int n_threads) {
    double best = 1e30;
    size_t tokens = 0;
    for (int r = 0; r < repeats; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      std::vector<Encoding> enc = encode_batch(tok, texts, true, 0, n_threads);
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      best = std::min(best, s);
      tokens = 0;
      for (const auto& e : enc) tokens += e.ids.size();
    }
    return std::make_pair(best, tokens);
  };
  int all =
      threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  auto [s1, tokens] = measure(1);
  auto [sn, tokens_n] = measure(all);
  (void)tokens_n;
  json r = {{"tokenizer", dir},
            {"texts", texts.size()},
            {"mb", bytes / 1e6},
            {"tokens", tokens},
            {"threads", all},
            {"tokens_per_s_1thread", tokens / s1},
            {"tokens_per_s", tokens / sn},
            {"mb_per_s", bytes / 1e6 / sn}};
  std::printf("%s\n", r.dump().c_str());
  return 0;
}

Run add_bench(CLI::App& app) {
  struct Opts {
    std::string tokenizer, texts;
    int threads = 0, repeats = 3;
    std::vector<std::string> only;
    std::string scenario, mode = "lora", device = "cuda", out;
    int seq_len = 0, pairs = 0, steps = 20, warmup = 5;
    bool checkpointing = false;
    bool model_dropout = true;
    int mini_batch = 0, batches = 4;
    bool attention = false;
    AttentionBenchConfig attn;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("--only", o->only, "Presets to run (minilm-l6, bge-base, ...)")->delimiter(',');
  app.add_option("--scenario", o->scenario, "fixed or real (default: both)");
  app.add_option("--seq-len", o->seq_len, "Override the sequence length of every configuration");
  app.add_option("--pairs", o->pairs, "Override the pairs per batch of every configuration");
  app.add_option("--mode", o->mode, "lora or full")
      ->check(CLI::IsMember({"lora", "full"}))
      ->capture_default_str();
  app.add_option("--steps", o->steps, "Timed steps (median reported)")->capture_default_str();
  app.add_option("--warmup", o->warmup, "Untimed steps first")->capture_default_str();
  app.add_option("--device", o->device, "cuda or cpu")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  app.add_option("--out", o->out,
                 "Also write the JSON lines to this file (replaced, not appended)");
  app.add_flag("--gradient_checkpointing", o->checkpointing, "Recompute layers in backward");
  add_on_off_option(app, "--model_dropout", o->model_dropout,
                    "The model's own dropout in the steps (as baseline_st.py, which trains in "
                    "train mode): on or off");
  app.add_option("--mini_batch_size", o->mini_batch, "GradCache mini-batch (texts), 0: off");
  app.add_option("--batches", o->batches,
                 "Distinct random batches, cycled (as baseline_st.py: 4; more than warmup + "
                 "steps gives every step new token counts, as real training)")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--tokenizer", o->tokenizer,
                 "Benchmark this tokenizer (a folder with tokenizer.json, .model or vocab.txt) "
                 "instead of training");
  app.add_option("--texts", o->texts, "Texts for --tokenizer (.txt lines or JSONL 'text')");
  app.add_option("--threads", o->threads, "Threads for --tokenizer (0: all cores)");
  app.add_option("--repeats", o->repeats, "Runs for --tokenizer (best reported)");
  app.add_flag("--attention", o->attention,
               "Benchmark the attention op alone (forward, backward) on random inputs: "
               "--pairs sequences of --seq-len tokens");
  app.add_option("--heads", o->attn.heads, "Query heads for --attention")->capture_default_str();
  app.add_option("--kv-heads", o->attn.kv_heads, "Key/value heads for --attention (0: --heads)");
  app.add_option("--head-dim", o->attn.head_dim, "Head dimension for --attention")
      ->capture_default_str();
  app.add_flag("--causal", o->attn.causal, "Causal mask for --attention");
  app.add_option("--window", o->attn.window, "Sliding window for --attention (-1: none)")
      ->capture_default_str();
  app.add_option("--attention-dropout", o->attn.dropout,
                 "Dropout on the probabilities for --attention")
      ->check(CLI::Range(0.0, 0.99))
      ->capture_default_str();
  return [o]() {
    if (!o->tokenizer.empty()) {
      ET_CHECK(!o->texts.empty(), "bench --tokenizer needs --texts");
      return run_tokenizer_bench(o->tokenizer, o->texts, o->threads, o->repeats);
    }
    auto be = make_backend(o->device);
    if (o->attention) {
      AttentionBenchConfig c = o->attn;
      if (o->seq_len > 0) c.seq_len = o->seq_len;
      if (o->pairs > 0) c.seqs = o->pairs;
      c.iters = o->steps;
      c.warmup = o->warmup;
      json r = run_attention_bench(c, *be);
      std::printf("%s\n", r.dump().c_str());
      if (!o->out.empty()) write_text_atomic(o->out, r.dump() + "\n");
      return 0;
    }
    std::vector<json> results;
    std::set<std::tuple<std::string, std::string, int, int>> ran;
    for (BenchConfig c : default_bench_configs()) {
      if (!o->only.empty() && std::find(o->only.begin(), o->only.end(), c.preset) == o->only.end())
        continue;
      if (!o->scenario.empty() && c.scenario != o->scenario) continue;
      if (o->seq_len > 0) c.seq_len = o->seq_len;
      if (o->pairs > 0) c.pairs = o->pairs;
      // the overrides can make two of a preset's configurations one (bge-base's fixed 128 x 128
      // and 512 x 64 under --seq-len 512 --pairs 64): run it once
      if (!ran.emplace(c.preset, c.scenario, c.seq_len, c.pairs).second) continue;
      c.mode = o->mode == "full" ? TrainMode::Full : TrainMode::Lora;
      c.steps = o->steps;
      c.warmup = o->warmup;
      c.gradient_checkpointing = o->checkpointing;
      c.model_dropout = o->model_dropout;
      c.mini_batch_size = o->mini_batch;
      c.batches = o->batches;
      json r;
      try {
        r = run_bench(c, *be);
      } catch (const Error& e) {
        r = {{"arch", c.preset},
             {"scenario", c.scenario},
             {"seq_len", c.seq_len},
             {"pairs", c.pairs},
             {"error", e.what()}};
      }
      std::printf("%s\n", r.dump().c_str());
      std::fflush(stdout);
      results.push_back(r);
    }
    std::printf("%-12s %-6s %5s %5s %9s %9s %10s %7s %8s\n", "arch", "scen", "L", "B", "step_ms",
                "pairs/s", "tok/s", "GiB", "TFLOP/s");
    std::string lines;
    for (const json& r : results) {
      lines += r.dump() + "\n";
      if (r.contains("error")) {
        std::printf("%-12s %-6s %5d %5d ERROR %s\n", r["arch"].get<std::string>().c_str(),
                    r["scenario"].get<std::string>().c_str(), r["seq_len"].get<int>(),
                    r["pairs"].get<int>(), r["error"].get<std::string>().substr(0, 60).c_str());
        continue;
      }
      std::printf("%-12s %-6s %5d %5d %9.1f %9.1f %10.0f %7.2f %8.1f\n",
                  r["arch"].get<std::string>().c_str(), r["scenario"].get<std::string>().c_str(),
                  r["seq_len"].get<int>(), r["pairs"].get<int>(), r["step_s"].get<double>() * 1000,
                  r["pairs_per_s"].get<double>(), r["real_tokens_per_s"].get<double>(),
                  r["peak_mem_gib"].get<double>(), r["model_tflops"].get<double>());
    }
    if (!o->out.empty()) write_text_atomic(o->out, lines);
    return 0;
  };
}

}  // namespace et::cli
