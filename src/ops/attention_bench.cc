#include "ops/attention_bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/error.h"
#include "core/rng.h"

namespace et {

namespace {

// Uniform values in [-1, 1) on the host, stored on the device in the activation dtype.
Tensor random_activation(const Backend& be, const Shape& s, Rng& rng) {
  Tensor h = cpu_empty(s);
  for (int64_t i = 0; i < h.numel(); ++i) h.f32()[i] = static_cast<float>(2 * rng.uniform() - 1);
  Tensor d32 = be.upload(h);
  if (be.act_dtype() == DType::F32) return d32;
  Tensor d = be.empty(s, be.act_dtype());
  be.copy(d, d32);
  return d;
}

// Query-key pairs scored in one head of a sequence of length l.
double scored_pairs(double l, bool causal, int window) {
  double pairs = 0;
  for (int64_t i = 0; i < static_cast<int64_t>(l); ++i) {
    int64_t lo = 0, hi = static_cast<int64_t>(l) - 1;
    if (causal) hi = i;
    if (window >= 0) lo = std::max<int64_t>(0, i - window), hi = std::min<int64_t>(hi, i + window);
    pairs += static_cast<double>(hi - lo + 1);
  }
  return pairs;
}

}  // namespace

json run_attention_bench(const AttentionBenchConfig& c, const Backend& be) {
  ET_CHECK(c.seqs > 0 && c.seq_len > 0, "bench --attention: --pairs and --seq-len must be > 0");
  const int kv_heads = c.kv_heads > 0 ? c.kv_heads : c.heads;
  ET_CHECK(c.heads > 0 && c.heads % kv_heads == 0,
           "bench --attention: --heads must be a positive multiple of --kv-heads");
  ET_CHECK(c.head_dim > 0, "bench --attention: --head-dim must be > 0");
  AttentionArgs a;
  a.cu_seqlens = {0};
  for (int s = 0; s < c.seqs; ++s) a.cu_seqlens.push_back(a.cu_seqlens.back() + c.seq_len);
  a.max_seqlen = c.seq_len;
  a.n_heads = c.heads;
  a.n_kv_heads = kv_heads;
  a.head_dim = c.head_dim;
  a.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  a.causal = c.causal;
  a.window = c.window;
  a.dropout = {c.dropout, 1};
  const int64_t t = a.cu_seqlens.back();
  Rng rng(7);
  Tensor q = random_activation(be, {t, int64_t{c.heads} * c.head_dim}, rng);
  Tensor k = random_activation(be, {t, int64_t{kv_heads} * c.head_dim}, rng);
  Tensor v = random_activation(be, {t, int64_t{kv_heads} * c.head_dim}, rng);
  Tensor dout = random_activation(be, q.shape, rng);
  Tensor out = be.empty(q.shape, be.act_dtype()), lse = be.empty({t, c.heads});
  Tensor dq = be.empty(q.shape, be.act_dtype()), dk = be.empty(k.shape, be.act_dtype()),
         dv = be.empty(v.shape, be.act_dtype());
  auto time_ms = [&](auto&& call) {
    for (int i = 0; i < c.warmup; ++i) call();
    be.synchronize();
    std::vector<double> ms;
    for (int i = 0; i < c.iters; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      call();
      be.synchronize();
      ms.push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
    return ms[ms.size() / 2];
  };
  const double fwd_ms = time_ms([&] { be.attention_forward(a, q, k, v, out, lse); });
  const double bwd_ms =
      time_ms([&] { be.attention_backward(a, q, k, v, out, lse, dout, dq, dk, dv, nullptr); });
  // Matrix FLOPs: forward Q K^T and P V (2 x 2d per pair); backward S, dP, dV, dK, dQ (5 x 2d)
  const double pairs = scored_pairs(c.seq_len, c.causal, c.window) * c.seqs * c.heads;
  const double f_fwd = 4.0 * c.head_dim * pairs, f_bwd = 10.0 * c.head_dim * pairs;
  return {{"op", "attention"},
          {"seqs", c.seqs},
          {"seq_len", c.seq_len},
          {"heads", c.heads},
          {"kv_heads", kv_heads},
          {"head_dim", c.head_dim},
          {"causal", c.causal},
          {"window", c.window},
          {"dropout", c.dropout},
          {"dtype", be.act_dtype() == DType::BF16 ? "bf16" : "f32"},
          {"forward_ms", fwd_ms},
          {"backward_ms", bwd_ms},
          {"forward_tflops", f_fwd / fwd_ms / 1e9},
          {"backward_tflops", f_bwd / bwd_ms / 1e9}};
}

}  // namespace et
