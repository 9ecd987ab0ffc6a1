// Pre-norm rotary transformers used as sentence encoders: ModernBERT, Qwen3 (Qwen3-Embedding)
// and Gemma3 text (EmbeddingGemma). One layer, on a packed batch [T, hidden]:
//
//   h  = N_attn(x)                              (ModernBERT layer 0: identity)
//   q, k, v = Wq h, Wk h, Wv h                  (ModernBERT: one fused Wqkv, columns q|k|v)
//   q, k = RMSNorm_head(q), RMSNorm_head(k)     (Qwen3, Gemma3: per head over head_dim)
//   q, k = RoPE(q), RoPE(k)                     (theta of the layer's kind: full or sliding)
//   a  = Wo attn(q, k, v)                       (GQA; causal for Qwen3; window on sliding layers)
//   a  = N_post_attn(a)                         (Gemma3 only)
//   x1 = x + a
//   m  = act(Wg N_mlp(x1)) * Wu N_mlp(x1)        (ModernBERT: Wi, first half act'd, second gates)
//   f  = N_post_mlp(Wd m)                       (post-norm Gemma3 only)
//   x' = x1 + f
// Embeddings: word[ids] (x sqrt(hidden) for Gemma3; LayerNorm for ModernBERT); a final norm
// after the last layer. Norms: LayerNorm without bias (ModernBERT), RMSNorm (Qwen3), RMSNorm
// with (1 + w) (Gemma3). Positions restart at 0 in every sequence.
// References: transformers' modeling_modernbert.py, modeling_qwen3.py, modeling_gemma3.py.
#pragma once

#include <string>
#include <vector>

#include "core/rng.h"
#include "model/config.h"
#include "model/linear.h"

namespace et {

struct PackedBatch;

struct Norm {
  Param* w = nullptr;  // null: identity
  Param* b = nullptr;  // LayerNorm bias (ModernBERT with norm_bias)
};

struct RotaryLayer {
  Linear qkv;      // ModernBERT: Wqkv [3 hidden, hidden]
  Linear q, k, v;  // Qwen3, Gemma3
  Linear o;
  Linear wi;        // ModernBERT: Wi [2 intermediate, hidden]
  Linear gate, up;  // Qwen3, Gemma3
  Linear down;      // ModernBERT mlp.Wo, else down_proj
  Norm attn_norm, post_attn_norm, mlp_norm, post_mlp_norm;
  Param *q_norm = nullptr, *k_norm = nullptr;
  bool sliding = false;
};

struct RotaryEncoder {
  ModelConfig cfg;
  std::string prefix;
  Param* word = nullptr;
  Norm emb_norm;  // ModernBERT
  std::vector<RotaryLayer> layers;
  Norm final_norm;
  bool gradient_checkpointing = false;
};

// What a norm keeps for backward: its normalized input xhat = (x - mean) rstd (LayerNorm) or
// x rstd (RMSNorm), in the activation dtype, and rstd; not x. The norms of the residual stream
// read fp32, so a bf16 xhat is half of x. The output y = xhat w (+ b), the input of the
// projections after the norm, is recomputed from xhat (exactly in fp32, within one bf16
// rounding of the forward's y in bf16).
struct NormSaved {
  Tensor xhat, rstd;
};

struct RotaryLayerSaved {
  Tensor x;  // the layer input: with gradient checkpointing, or when N_attn is the identity
  NormSaved attn_norm, post_attn_norm, mlp_norm, post_mlp_norm;
  LinearSaved qkv, q, k, v, o, wi, gate, up, down;
  // Kept small: N_attn(x) and N_mlp(x1) (the projections' inputs) are recomputed in backward
  // from the norms' xhat; with q/k norms, q and k after norm and RoPE are recomputed from
  // q_pre/k_pre.
  Tensor q_pre, k_pre, q_rstd, k_rstd;  // inputs of the q/k norms
  Tensor qr, kr, vr, ctx, lse;          // attention inputs (qr, kr only without q/k norms)
  Tensor g, u;  // GLU inputs (ModernBERT: g = Wi's packed gate|up); the product is recomputed
  Rng rng;
};

struct RotarySaved {
  Tensor ids, positions;
  NormSaved emb_norm, final_norm;
  AttentionArgs attn_full, attn_local;
  bool has_rng = false;
  std::vector<RotaryLayerSaved> layers;
};

RotaryEncoder bind_rotary_encoder(const ModelConfig& cfg, ParamStore& store,
                                  const std::string& where);
std::vector<Linear*> rotary_linears(RotaryEncoder& enc);
// Every parameter of the encoder (for full fine-tuning).
std::vector<Param*> rotary_params(RotaryEncoder& enc);

// Projections of one layer that read the same input, run as groups (linear_group_forward):
// Qwen3's and Gemma3's q, k, v (reading N_attn(x)) and gate, up (reading N_mlp(x1)); none for
// ModernBERT, whose are fused already (empty groups).
inline LinearGroup rotary_qkv(const RotaryLayer& L) {
  if (L.qkv.weight) return {};
  return {&L.q, &L.k, &L.v};
}
inline LinearGroup rotary_glu(const RotaryLayer& L) {
  if (L.wi.weight) return {};
  return {&L.gate, &L.up};
}
inline std::vector<LinearGroup> rotary_groups(const RotaryLayer& L) {
  if (L.qkv.weight) return {};
  return {rotary_qkv(L), rotary_glu(L)};
}

Tensor rotary_forward(const Backend& be, const RotaryEncoder& enc, const PackedBatch& batch,
                      RotarySaved* saved, Rng* rng);
// Consumes d_hidden (freed once the final norm's gradient is taken) and `saved` (each layer's
// tensors are released as its backward uses them, which lowers the step's peak memory).
void rotary_backward(const Backend& be, const RotaryEncoder& enc, RotarySaved& saved,
                     Tensor d_hidden);

}  // namespace et
