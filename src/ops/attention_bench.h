// Kernel-level benchmark of the attention op (forward and backward through a Backend) on
// random q, k, v in the backend's activation dtype: `embedtune bench --attention`. Reports
// milliseconds per call and matrix FLOP/s (4 d per scored query-key pair forward, 10 d
// backward: S and dP recomputed, dV, dK, dQ), so a kernel can be compared with
// FlashAttention's published or measured rates for the same shape.
#pragma once

#include <cstdint>

#include "io/files.h"
#include "ops/backend.h"

namespace et {

struct AttentionBenchConfig {
  int seqs = 64, seq_len = 512;
  int heads = 12, kv_heads = 0, head_dim = 64;  // kv_heads 0: heads
  bool causal = false;
  int window = -1;
  float dropout = 0.0f;  // on the probabilities (as training with attention dropout)
  int iters = 20, warmup = 3;
};

json run_attention_bench(const AttentionBenchConfig& c, const Backend& be);

}  // namespace et
