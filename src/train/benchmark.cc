#include "train/benchmark.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/error.h"
#include "core/rng.h"
#include "model/presets.h"
#include "model/sentence_model.h"
#include "train/lora.h"

namespace et {

std::vector<BenchConfig> default_bench_configs() {
  return {{"minilm-l6", "fixed", 128, 256},
          {"minilm-l6", "real", 256, 256},
          {"bge-base", "fixed", 128, 128},
          {"bge-base", "fixed", 512, 64},
          {"bge-base", "real", 512, 128},
          {"modernbert-base", "fixed", 512, 64},
          {"modernbert-base", "fixed", 2048, 16},
          {"modernbert-base", "real", 1024, 64},
          {"qwen3-0.6b", "fixed", 512, 32},
          {"qwen3-0.6b", "real", 1024, 32},
          {"embeddinggemma-300m", "fixed", 512, 64},
          {"embeddinggemma-300m", "fixed", 1024, 32},
          {"embeddinggemma-300m", "real", 1024, 64}};
}

namespace {

std::vector<int32_t> lengths(const BenchConfig& c, bool anchor, Rng& rng) {
  std::vector<int32_t> out;
  for (int i = 0; i < c.pairs; ++i) {
    if (c.scenario == "fixed") {
      out.push_back(c.seq_len);
    } else if (anchor) {
      out.push_back(8 + static_cast<int32_t>(rng.below(25)));
    } else {
      double u1 = std::max(rng.uniform(), 1e-300), u2 = rng.uniform();
      double z = std::sqrt(-2 * std::log(u1)) * std::cos(2 * M_PI * u2);
      double x = std::exp(z * 0.6 + std::log(180.0));
      out.push_back(static_cast<int32_t>(std::clamp(x, 16.0, static_cast<double>(c.seq_len))));
    }
  }
  return out;
}

PackedBatch random_column(const std::vector<int32_t>& lens, int vocab, Rng& rng) {
  PackedBatch b;
  for (int32_t l : lens) {
    std::vector<int32_t> ids(static_cast<size_t>(l));
    for (auto& x : ids) x = 5 + static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab - 5)));
    b.add(ids);
  }
  return b;
}

// Query-key pairs one attention layer scores in a sequence of length l: all l^2, the lower
// triangle when causal, |i - j| <= w with a window.
double attention_pairs(double l, bool causal, int window) {
  if (window >= 0 && window < l) {
    const double w = window;
    double pairs = l + 2 * (w * l - w * (w + 1) / 2);  // l diagonal + 2 sum_{d=1..w} (l - d)
    return causal ? (pairs + l) / 2 : pairs;
  }
  return causal ? l * (l + 1) / 2 : l * l;
}

// Matrix FLOPs of one step: 2 per multiply-add of every linear layer (forward), the same
// again for the input gradient, and again for weight gradients when the weights train;
// attention: 4 d per scored query-key pair forward (QK^T and PV, d = heads x head_dim), twice
// that backward.
double step_flops(const SentenceModel& m, const std::vector<PackedBatch>& cols, TrainMode mode) {
  const ModelConfig& c = m.cfg;
  const double h = c.hidden, f = c.intermediate;
  const double qd = static_cast<double>(c.heads) * c.head_dim,
               kvd = static_cast<double>(c.kv_heads) * c.head_dim;
  // multiply-adds per token and layer: q, k, v, o projections and the MLP (3 matrices if gated)
  const double mlp = is_rotary_family(c.family) ? 3 * h * f : 2 * h * f;
  const double linear = c.layers * (h * (qd + 2 * kvd) + qd * h + mlp);
  double tokens = 0, pairs = 0;
  for (const auto& col : cols) {
    tokens += static_cast<double>(col.tokens());
    for (int i = 0; i < col.size(); ++i) {
      double l = col.cu_seqlens[i + 1] - col.cu_seqlens[i];
      for (int layer = 0; layer < c.layers; ++layer) {
        bool sliding = !c.sliding.empty() && c.sliding[static_cast<size_t>(layer)];
        pairs += attention_pairs(l, c.causal, sliding ? c.window : -1);
      }
    }
  }
  const double passes = mode == TrainMode::Full ? 6 : 4;
  return passes * linear * tokens + 12 * pairs * qd;
}

}  // namespace

json run_bench(const BenchConfig& c, const Backend& be) {
  ET_CHECK(c.scenario == "fixed" || c.scenario == "real", "bench scenario must be fixed or real");
  be.set_gemm_tuning(true);  // as training
  auto m = random_model_in_memory(c.preset, be, 0);
  set_gradient_checkpointing(m->encoder, c.gradient_checkpointing);
  set_model_dropout(m->encoder, c.model_dropout);
  ET_CHECK(c.seq_len <= m->cfg.max_positions, "seq_len ", c.seq_len, " exceeds the model's ",
           m->cfg.max_positions, " positions");
  if (c.mode == TrainMode::Lora) {
    LoraConfig l;
    l.r = 16;
    l.alpha = 32;
    // as baseline_st.py: every attention and MLP projection of the family
    l.target_modules = is_rotary_family(m->cfg.family)
                           ? default_lora_targets(m->cfg.family)
                           : std::vector<std::string>{"query", "key", "value", "dense"};
    apply_lora(be, *m, l, c.seed);
  }
  auto params = set_trainable(be, *m, c.mode);
  std::vector<Tensor> mom, vel;
  int64_t trainable = 0;
  for (Param* p : params) {
    mom.push_back(be.zeros(p->value.shape, DType::F32));
    vel.push_back(be.zeros(p->value.shape, DType::F32));
    trainable += p->value.numel();
  }
  Rng rng(c.seed);
  std::vector<std::vector<PackedBatch>> batches;
  double real_tokens = 0, flops = 0;
  ET_CHECK(c.batches > 0, "bench: --batches must be at least 1, got ", c.batches);
  for (int i = 0; i < c.batches; ++i) {
    std::vector<PackedBatch> cols{random_column(lengths(c, true, rng), m->cfg.vocab, rng),
                                  random_column(lengths(c, false, rng), m->cfg.vocab, rng)};
    real_tokens += static_cast<double>(cols[0].tokens() + cols[1].tokens()) / c.batches;
    flops += step_flops(*m, cols, c.mode) / c.batches;
    batches.push_back(std::move(cols));
  }
  double loss = 0;
  Rng dropout_rng(c.seed ^ 0xd50ULL);
  auto step = [&](int i) {
    LossSpec spec;
    spec.mini_batch_size = c.mini_batch_size;
    loss = train_step_grads(be, *m, batches[i % batches.size()], spec, 1.0, &dropout_rng)();
    std::vector<Backend::AdamWSlot> slots;
    for (size_t j = 0; j < params.size(); ++j)
      slots.push_back({&params[j]->value, &params[j]->grad, &mom[j], &vel[j]});
    be.adamw_step_all(slots, 2e-4f, 0.9f, 0.999f, 1e-8f, 0.01f, i + 1, /*zero_grads=*/true);
  };
  for (int i = 0; i < c.warmup; ++i) step(i);
  be.synchronize();
  be.reset_peak_bytes();  // as baseline_st.py: the peak of the timed steps (weights included)
  std::vector<double> times;
  be.profiler_capture(true);
  for (int i = 0; i < c.steps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    step(c.warmup + i);
    be.synchronize();
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  be.profiler_capture(false);
  std::sort(times.begin(), times.end());
  const double med = times[times.size() / 2];
  return {{"arch", c.preset},
          {"mode", c.mode == TrainMode::Lora ? "lora" : "full"},
          {"gradient_checkpointing", c.gradient_checkpointing},
          {"model_dropout", c.model_dropout},
          {"mini_batch_size", c.mini_batch_size},
          {"batches", c.batches},
          {"scenario", c.scenario},
          {"seq_len", c.seq_len},
          {"pairs", c.pairs},
          {"device", be.name()},
          {"step_s", med},
          {"pairs_per_s", c.pairs / med},
          {"real_tokens_per_s", real_tokens / med},
          {"peak_mem_gib", static_cast<double>(be.peak_bytes()) / (1 << 30)},
          {"model_tflops", flops / med / 1e12},
          {"trainable", trainable},
          {"total", m->num_parameters()},
          {"loss", loss}};
}

}  // namespace et
