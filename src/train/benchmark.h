// Training-step benchmark on random-init models of real architectures, with the
// configurations of ../shared/tools/baseline_st.py (sentence-transformers + PEFT): pairs of
// (anchor, positive) token sequences, MultipleNegativesRankingLoss, AdamW.
//   fixed: every sequence has exactly seq_len tokens;
//   real:  anchors 8..32 tokens, positives log-normal around 180 tokens, in [16, seq_len].
#pragma once

#include <string>
#include <vector>

#include "io/files.h"
#include "ops/backend.h"
#include "train/step.h"

namespace et {

struct BenchConfig {
  std::string preset, scenario;
  int seq_len = 128, pairs = 64;
  TrainMode mode = TrainMode::Lora;
  int steps = 20, warmup = 5;
  bool gradient_checkpointing = false;
  bool model_dropout = true;  // the model's own dropout, as baseline_st.py's train mode
  int mini_batch_size = 0;    // GradCache
  // Distinct random batches, cycled (4, as baseline_st.py). Real training meets new token
  // counts every step: more batches than steps measures that (shape-dependent setup included).
  int batches = 4;
  uint64_t seed = 1;
};

// The default table (baseline_st.py's CONFIGS for the architectures embedtune implements).
std::vector<BenchConfig> default_bench_configs();
// Runs one configuration and returns its JSON record: step_s (median), real_tokens_per_s,
// pairs_per_s, peak_mem_gib, model_tflops (matrix FLOPs of the step per second), loss.
json run_bench(const BenchConfig& c, const Backend& be);

}  // namespace et
