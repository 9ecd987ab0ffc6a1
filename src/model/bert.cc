#include "model/bert.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>

#include "core/error.h"
#include "model/weight_binder.h"

namespace et {

void PackedBatch::add(const std::vector<int32_t>& seq, int32_t prompt_length) {
  ids.insert(ids.end(), seq.begin(), seq.end());
  cu_seqlens.push_back(static_cast<int32_t>(ids.size()));
  max_seqlen = std::max(max_seqlen, static_cast<int>(seq.size()));
  // lengths are kept from the first sequence with a prompt on (zeros for those before it)
  const bool track = prompt_length > 0 || !prompt_lengths.empty();
  if (prompt_length > 0 && prompt_lengths.empty()) prompt_lengths.assign(size() - 1, 0);
  if (track) prompt_lengths.push_back(prompt_length);
}

void PackedBatch::append(const PackedBatch& other) {
  const int32_t base = static_cast<int32_t>(ids.size());
  const bool prompts = !prompt_lengths.empty() || !other.prompt_lengths.empty();
  if (prompts && prompt_lengths.empty()) prompt_lengths.assign(size(), 0);
  ids.insert(ids.end(), other.ids.begin(), other.ids.end());
  for (int s = 1; s <= other.size(); ++s) cu_seqlens.push_back(base + other.cu_seqlens[s]);
  max_seqlen = std::max(max_seqlen, other.max_seqlen);
  if (prompts) {
    if (other.prompt_lengths.empty())
      prompt_lengths.resize(prompt_lengths.size() + other.size(), 0);
    else
      prompt_lengths.insert(prompt_lengths.end(), other.prompt_lengths.begin(),
                            other.prompt_lengths.end());
  }
}

// One pass for the range (vectorised), a second only to name the first id outside it.
void check_token_ids(const PackedBatch& batch, int64_t vocab) {
  if (batch.ids.empty()) return;
  const auto [lo, hi] = std::minmax_element(batch.ids.begin(), batch.ids.end());
  if (*lo >= 0 && *hi < vocab) return;
  for (size_t t = 0; t < batch.ids.size(); ++t)
    ET_CHECK(batch.ids[t] >= 0 && batch.ids[t] < vocab, "token id ", batch.ids[t], " at position ",
             t, " is outside the embedding table of ", vocab, " rows");
}

BertEncoder bind_bert_encoder(const ModelConfig& cfg, ParamStore& store, const std::string& where) {
  BertEncoder e;
  e.cfg = cfg;
  WeightBinder b{store, "", where};
  for (const char* p : {"", "bert.", "roberta.", "distilbert.", "mpnet.", "model."}) {
    if (store.find(std::string(p) + "embeddings.word_embeddings.weight")) {
      b.prefix = p;
      break;
    }
  }
  e.prefix = b.prefix;
  const int64_t h = cfg.hidden, f = cfg.intermediate;
  e.word = b.table("embeddings.word_embeddings.weight", h);
  e.pos = b.table("embeddings.position_embeddings.weight", h);
  if (cfg.family == Family::Bert || cfg.family == Family::XlmRoberta)
    e.type = b.maybe("embeddings.token_type_embeddings.weight");
  e.emb_ln_w = b.vec("embeddings.LayerNorm.weight", h);
  e.emb_ln_b = b.vec("embeddings.LayerNorm.bias", h);
  if (cfg.family == Family::MPNet) {
    e.rel_bias = b.need("encoder.relative_attention_bias.weight");
    ET_CHECK(e.rel_bias->value.shape == Shape({cfg.rel_buckets, cfg.heads}), where, ": '",
             e.rel_bias->name, "' has shape ", shape_str(e.rel_bias->value.shape), ", expected ",
             shape_str({cfg.rel_buckets, cfg.heads}));
  }
  for (int i = 0; i < cfg.layers; ++i) {
    BertLayer L;
    if (cfg.family == Family::DistilBert) {
      std::string p = "transformer.layer." + std::to_string(i) + ".";
      L.q = b.linear(p + "attention.q_lin", h, h);
      L.k = b.linear(p + "attention.k_lin", h, h);
      L.v = b.linear(p + "attention.v_lin", h, h);
      L.o = b.linear(p + "attention.out_lin", h, h);
      L.ln1_w = b.vec(p + "sa_layer_norm.weight", h);
      L.ln1_b = b.vec(p + "sa_layer_norm.bias", h);
      L.ffn_in = b.linear(p + "ffn.lin1", h, f);
      L.ffn_out = b.linear(p + "ffn.lin2", f, h);
      L.ln2_w = b.vec(p + "output_layer_norm.weight", h);
      L.ln2_b = b.vec(p + "output_layer_norm.bias", h);
    } else {
      std::string p = "encoder.layer." + std::to_string(i) + ".";
      if (cfg.family == Family::MPNet) {
        L.q = b.linear(p + "attention.attn.q", h, h);
        L.k = b.linear(p + "attention.attn.k", h, h);
        L.v = b.linear(p + "attention.attn.v", h, h);
        L.o = b.linear(p + "attention.attn.o", h, h);
        L.ln1_w = b.vec(p + "attention.LayerNorm.weight", h);
        L.ln1_b = b.vec(p + "attention.LayerNorm.bias", h);
      } else {
        L.q = b.linear(p + "attention.self.query", h, h);
        L.k = b.linear(p + "attention.self.key", h, h);
        L.v = b.linear(p + "attention.self.value", h, h);
        L.o = b.linear(p + "attention.output.dense", h, h);
        L.ln1_w = b.vec(p + "attention.output.LayerNorm.weight", h);
        L.ln1_b = b.vec(p + "attention.output.LayerNorm.bias", h);
      }
      L.ffn_in = b.linear(p + "intermediate.dense", h, f);
      L.ffn_out = b.linear(p + "output.dense", f, h);
      L.ln2_w = b.vec(p + "output.LayerNorm.weight", h);
      L.ln2_b = b.vec(p + "output.LayerNorm.bias", h);
    }
    // the attention's and the activation's outputs, made in linear_input's buffers
    L.o.input_from_model = L.ffn_out.input_from_model = true;
    e.layers.push_back(L);
  }
  if (b.maybe("pooler.dense.weight")) {
    e.pooler = b.linear("pooler.dense", h, h);
    e.has_pooler = true;
  }
  return e;
}

std::vector<Linear*> bert_linears(BertEncoder& enc) {
  std::vector<Linear*> out;
  for (BertLayer& L : enc.layers)
    for (Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.ffn_in, &L.ffn_out}) out.push_back(l);
  if (enc.has_pooler) out.push_back(&enc.pooler);
  return out;
}

// Position ids: 0.. for BERT/DistilBERT; for RoBERTa-style models transformers counts
// non-padding tokens from pad_id + 1 and gives padding tokens pad_id.
static std::vector<int32_t> position_ids(const ModelConfig& cfg, const PackedBatch& b) {
  std::vector<int32_t> pos(b.ids.size());
  if (cfg.position_offset == 0) {
    for (int s = 0; s < b.size(); ++s)
      std::iota(pos.begin() + b.cu_seqlens[s], pos.begin() + b.cu_seqlens[s + 1], 0);
    return pos;
  }
  for (int s = 0; s < b.size(); ++s) {
    int32_t count = 0;
    for (int32_t t = b.cu_seqlens[s]; t < b.cu_seqlens[s + 1]; ++t) {
      if (cfg.position_offset == 0) {
        pos[t] = t - b.cu_seqlens[s];
      } else if (b.ids[t] == cfg.pad_id) {
        pos[t] = cfg.pad_id;
      } else {
        pos[t] = cfg.position_offset + count++;
      }
    }
  }
  return pos;
}

// A dropout site of probability p with a seed from the training RNG; off (p = 0) without an RNG
// or when the encoder's model dropout is off.
static DropoutSite draw_dropout(const BertEncoder& enc, float p, Rng* rng) {
  if (!rng || !enc.model_dropout || p <= 0) return {};
  return {p, rng->next_u64()};
}

// The attention of a layer: the batch's, with the layer's probability dropout (off when the site
// is; a copy of the batch's few hundred sequence offsets).
static AttentionArgs with_dropout(const AttentionArgs& attn, const DropoutSite& d) {
  AttentionArgs a = attn;
  a.dropout = d;
  return a;
}

// y = LN(res) or, with a dropped sublayer output `branch`, y = LN(res + drop(branch)) with res
// updated to that sum (one pass: dropout_add_layernorm_forward).
static void residual_layernorm(const Backend& be, const Tensor& branch, const DropoutSite& d,
                               Tensor& res, const Param* w, const Param* b, float eps, Tensor& y,
                               Tensor& mean, Tensor& rstd) {
  if (branch.defined())
    be.dropout_add_layernorm_forward(branch, d, res, w->value, &b->value, eps, y, mean, rstd);
  else
    be.layernorm_forward(res, w->value, &b->value, eps, y, mean, rstd);
}

// One encoder layer: x -> LN2(W2 act(W1 x1) + x1), x1 = LN1(Wo attn(Wq x, Wk x, Wv x) + x).
// With `s`, keeps what backward needs.
// The residual sums are made in the output products' epilogues, into the buffers of x and x1
// when no one else holds them; h is released once consumed, so that with the saved tensors at
// most x1 (as res2) and the [T, intermediate] activation are alive at once: the forward's share
// of the step's peak stays within the backward's (see bert_ffn_backward).
// x is taken by value: the caller hands it over (or keeps it, for gradient checkpointing).
static Tensor bert_layer_forward(const Backend& be, const BertEncoder& enc, const BertLayer& L,
                                 const AttentionArgs& attn, Tensor x, BertLayerSaved* s, Rng* rng) {
  const ModelConfig& c = enc.cfg;
  const int64_t T = x.dim(0), H = c.hidden;
  const DType act = be.act_dtype();
  // the sites' seeds come first from the RNG, so a replay from the layer's saved state (gradient
  // checkpointing, the second pass of a cached-gradient step) draws them again
  const DropoutSite drop_attn = draw_dropout(enc, c.attention_dropout, rng);
  const DropoutSite drop_attn_out =
      c.family == Family::DistilBert ? DropoutSite{} : draw_dropout(enc, c.hidden_dropout, rng);
  const DropoutSite drop_ffn_out = draw_dropout(enc, c.hidden_dropout, rng);
  std::vector<Tensor> qkv = linear_group_forward(
      be, bert_qkv(L), x, {s ? &s->q : nullptr, s ? &s->k : nullptr, s ? &s->v : nullptr}, rng);
  Tensor q = std::move(qkv[0]), k = std::move(qkv[1]), v = std::move(qkv[2]);
  // x and x1 are recomputed from the norm inputs in backward (see BertLayerSaved)
  if (s)
    for (LinearSaved* ls : {&s->q, &s->k, &s->v}) drop_saved_input(*ls, x);
  // the attention's output in Wo's input buffer (LoRA along K: no rank-r product writing y for
  // the base product's epilogue to read back)
  Tensor ctx = linear_input(be, L.o, T), lse = be.empty({T, c.heads}, DType::F32);
  be.attention_forward(with_dropout(attn, drop_attn), q, k, v, ctx, lse);
  // res1 = x + drop(Wo ctx), summed in the products' epilogues without dropout (into x's buffer
  // when it is ours), with it in LN1's pass
  Tensor res1 = residual_buffer(be, std::move(x), act), a;
  if (drop_attn_out.active())
    a = linear_forward(be, L.o, ctx, s ? &s->o : nullptr, rng);
  else
    linear_forward_add(be, L.o, ctx, res1, s ? &s->o : nullptr, rng);
  Tensor x1 = be.empty({T, H}, act);
  Tensor m1 = be.empty({T}, DType::F32), r1 = be.empty({T}, DType::F32);
  residual_layernorm(be, a, drop_attn_out, res1, L.ln1_w, L.ln1_b, c.norm_eps, x1, m1, r1);
  a = Tensor{};
  // W1's LoRA term is added in the activation's pass (act_forward_adding)
  LoraTerm w1_term;
  Tensor h_pre = linear_forward(be, L.ffn_in, x1, s ? &s->ffn_in : nullptr, rng,
                                lora_term_slot(be, L.ffn_in, c.act, w1_term));
  if (s) drop_saved_input(s->ffn_in, x1);
  Tensor h = linear_input(be, L.ffn_out, T);  // W2's input buffer (LoRA along K)
  act_forward_adding(be, c.act, w1_term, h_pre, h);
  w1_term = LoraTerm{};
  Tensor res2 = residual_buffer(be, std::move(x1), act), f;
  if (drop_ffn_out.active())
    f = linear_forward(be, L.ffn_out, h, s ? &s->ffn_out : nullptr, rng);
  else
    linear_forward_add(be, L.ffn_out, h, res2, s ? &s->ffn_out : nullptr, rng);
  // h = act(h_pre) is recomputed in backward rather than kept: [T, intermediate] is the
  // largest activation of a layer. (With LoRA dropout the masked copy stays.)
  if (s) drop_saved_input(s->ffn_out, h);
  h = Tensor{};
  Tensor out = be.empty({T, H}, act);
  Tensor m2 = be.empty({T}, DType::F32), r2 = be.empty({T}, DType::F32);
  residual_layernorm(be, f, drop_ffn_out, res2, L.ln2_w, L.ln2_b, c.norm_eps, out, m2, r2);
  f = Tensor{};
  if (s) {
    s->qt = q;
    s->kt = k;
    s->vt = v;
    s->ctx = ctx;
    s->lse = lse;
    s->res1 = res1;
    s->ln1_mean = m1;
    s->ln1_rstd = r1;
    s->h_pre = h_pre;
    s->res2 = res2;
    s->ln2_mean = m2;
    s->ln2_rstd = r2;
    s->drop_attn = drop_attn;
    s->drop_attn_out = drop_attn_out;
    s->drop_ffn_out = drop_ffn_out;
  }
  return out;
}

Tensor bert_forward(const Backend& be, const BertEncoder& enc, const PackedBatch& batch,
                    BertSaved* saved, Rng* rng) {
  const ModelConfig& c = enc.cfg;
  const int64_t T = batch.tokens(), H = c.hidden;
  std::vector<int32_t> pos = position_ids(c, batch);
  const int64_t max_pos = enc.pos->value.dim(0);
  if (!pos.empty()) {
    const int32_t last = *std::max_element(pos.begin(), pos.end());
    ET_CHECK(last < max_pos, "sequence too long for ", family_name(c.family), ": position ", last,
             " needs more than the model's ", max_pos,
             " position embeddings (lower max_seq_length)");
  }
  check_token_ids(batch, enc.word->value.dim(0));
  Tensor ids = be.upload(cpu_from_i32(batch.ids, {T}));
  Tensor positions = be.upload(cpu_from_i32(pos, {T}));
  Tensor types;
  const DType act = be.act_dtype();
  Tensor emb = be.empty({T, H}, act);
  be.embedding_forward(ids, enc.word->value, emb, false);
  be.embedding_forward(positions, enc.pos->value, emb, true);
  if (enc.type) {
    types = be.zeros({T}, DType::I32);
    be.embedding_forward(types, enc.type->value, emb, true);
  }
  Tensor x = be.empty({T, H}, act), mean = be.empty({T}, DType::F32),
         rstd = be.empty({T}, DType::F32);
  be.layernorm_forward(emb, enc.emb_ln_w->value, &enc.emb_ln_b->value, c.norm_eps, x, mean, rstd);
  const DropoutSite drop_emb = draw_dropout(enc, c.hidden_dropout, rng);
  if (drop_emb.active()) be.dropout(x, drop_emb, 0, x);

  AttentionArgs attn;
  attn.cu_seqlens = batch.cu_seqlens;
  attn.max_seqlen = batch.max_seqlen;
  attn.n_heads = attn.n_kv_heads = c.heads;
  attn.head_dim = c.head_dim;
  attn.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  if (enc.rel_bias) {
    attn.rel_bias = &enc.rel_bias->value;
    attn.rel_buckets = c.rel_buckets;
  }
  if (be.device() != Device::CPU)
    attn.cu_seqlens_dev = be.upload(cpu_from_i32(batch.cu_seqlens, {batch.size() + 1}));
  if (saved) {
    saved->ids = ids;
    saved->positions = positions;
    saved->types = types;
    saved->emb = emb;
    saved->emb_mean = mean;
    saved->emb_rstd = rstd;
    saved->attn = attn;
    saved->drop_emb = drop_emb;
    saved->has_rng = rng != nullptr;
    saved->layers.assign(enc.layers.size(), BertLayerSaved{});
  }
  for (size_t i = 0; i < enc.layers.size(); ++i) {
    BertLayerSaved* s = saved ? &saved->layers[i] : nullptr;
    if (s && enc.gradient_checkpointing) {
      // keep only the layer input (and the dropout RNG state); backward recomputes the rest
      s->x = x;
      if (rng) s->rng = *rng;
      x = bert_layer_forward(be, enc, enc.layers[i], attn, std::move(x), nullptr, rng);
    } else {
      x = bert_layer_forward(be, enc, enc.layers[i], attn, std::move(x), s, rng);
    }
  }
  return x;
}

// y = LN(x) with the weights of a saved forward, into y: the same kernel on the same input gives
// the same bits as the forward did (the statistics are recomputed into scratch).
static void layernorm_recompute(const Backend& be, const ModelConfig& c, const Tensor& x,
                                const Param* w, const Param* b, Tensor& y) {
  const int64_t T = x.dim(0);
  Tensor mean = be.empty({T}, DType::F32), rstd = be.empty({T}, DType::F32);
  be.layernorm_forward(x, w->value, &b->value, c.norm_eps, y, mean, rstd);
}

// The input of layer i: kept with gradient checkpointing, else LN2 of layer i - 1 (or the
// embedding LayerNorm and its dropout) recomputed into buf.
static Tensor bert_layer_input(const Backend& be, const BertEncoder& enc, const BertSaved& saved,
                               size_t i, Tensor& buf) {
  if (saved.layers[i].x.defined()) return saved.layers[i].x;
  if (i == 0) {
    layernorm_recompute(be, enc.cfg, saved.emb, enc.emb_ln_w, enc.emb_ln_b, buf);
    if (saved.drop_emb.active()) be.dropout(buf, saved.drop_emb, 0, buf);
  } else {
    const BertLayer& P = enc.layers[i - 1];
    layernorm_recompute(be, enc.cfg, saved.layers[i - 1].res2, P.ln2_w, P.ln2_b, buf);
  }
  return buf;
}

// Backward keeps what it allocates to the fewest [T, hidden] units alive at once (bf16; the
// FFN activation is intermediate / hidden units, 4 for BERT), since the step's peak is the saved
// activations plus this. g_out carries d(out) in and d(x) out. With x' = LN2(res2),
// res2 = W2 act(W1 x1) + x1, x1 = LN1(res1), res1 = Wo attn(Wq x, Wk x, Wv x) + x:
//   FFN half:       g_res = d(res2) = LN2'(g_out); g_out := x1 (recomputed);
//                   dx1 = g_res + W1'(act'(W2' drop'(g_res))) in g_res's buffer, over two row
//                   halves, so that only half of the [T, intermediate] activation exists at a
//                   time (with dropout, drop'(g_res) of the half in a buffer of its own)
//   attention half: g_res = d(res1) = LN1'(dx1); g_out := g_res (the residual path, handed
//                   over); dx1 := dctx = Wo' drop'(g_out); dq (fp32, the kernel's accumulator),
//                   dk, dv = attn'(dctx) (6 units); dctx := dq in bf16; x recomputed;
//                   g_out += Wq' dq + Wk' dk + Wv' dv = d(x)
static Tensor bert_ffn_backward(const Backend& be, const BertEncoder& enc, const BertLayer& L,
                                BertLayerSaved& s, Tensor& g_out) {
  const ModelConfig& c = enc.cfg;
  const int64_t T = g_out.dim(0);
  Tensor g_res = be.empty(g_out.shape, g_out.dtype);
  be.layernorm_backward(g_out, s.res2, L.ln2_w->value, s.ln2_mean, s.ln2_rstd, g_res,
                        grad_of(L.ln2_w), grad_of(L.ln2_b));
  // d(x1) = g_res + W1'(...) is summed into g_res's own rows: each row half reads its rows of
  // g_res (W2's backward) before W1's backward adds into them, and the halves are disjoint
  Tensor& x1 = g_out;
  layernorm_recompute(be, c, s.res1, L.ln1_w, L.ln1_b, x1);
  for (int64_t half = 0; half < 2; ++half) {
    const int64_t b = T * half / 2, e = T * (half + 1) / 2;
    if (b == e) continue;
    const Tensor h_pre = s.h_pre.rows(b, e);
    // W2's input h = act(h_pre) is recomputed only when W2 trains (dW = d(f)^T h); LoRA's A
    // gradient takes h_pre (Backend::lora_act_input_grad). h, when made, is read by W2's
    // backward before its dx overwrites it: one buffer for both.
    Tensor h = be.empty(h_pre.shape, be.act_dtype());
    LinearSaved w2 = saved_rows(s.ffn_out, b, e);
    if (L.ffn_out.weight->trainable) {
      be.act_forward(c.act, h_pre, h);
      w2 = with_saved_input(std::move(w2), h);
    } else {
      w2 = with_activation_input(std::move(w2), c.act, h_pre);
    }
    // d(f) = drop'(d(res2)): the rows' mask regenerated (the residual path keeps d(res2))
    Tensor df = g_res.rows(b, e);
    if (s.drop_ffn_out.active()) {
      df = be.empty(df.shape, df.dtype);
      be.dropout(g_res.rows(b, e), s.drop_ffn_out, b, df);
    }
    // W2's LoRA term of dh is added in the activation's backward pass (act_backward_adding)
    LoraTerm w2_term;
    linear_backward(be, L.ffn_out, w2, df, &h, false,
                    lora_term_slot(be, L.ffn_out, c.act, w2_term));
    df = Tensor{};
    Tensor& dh = h;
    act_backward_adding(be, c.act, w2_term, h_pre, dh, dh);
    Tensor dx1_rows = g_res.rows(b, e);
    linear_backward(be, L.ffn_in, with_saved_input(saved_rows(s.ffn_in, b, e), x1.rows(b, e)), dh,
                    &dx1_rows, true);
  }
  s.h_pre = s.res2 = s.ln2_mean = s.ln2_rstd = Tensor{};
  s.ffn_in = s.ffn_out = LinearSaved{};
  return g_res;
}

static void bert_attention_backward(const Backend& be, const BertEncoder& enc, size_t i,
                                    const BertSaved& saved, BertLayerSaved& s, Tensor& g_out,
                                    Tensor dx1) {
  const BertLayer& L = enc.layers[i];
  Tensor g_res = be.empty(g_out.shape, g_out.dtype), da;
  if (s.drop_attn_out.active()) {  // also d(a) = drop'(d(res1)), in the same pass
    da = be.empty(g_out.shape, g_out.dtype);
    be.layernorm_backward_dropout(dx1, s.res1, L.ln1_w->value, s.ln1_mean, s.ln1_rstd, g_res,
                                  grad_of(L.ln1_w), grad_of(L.ln1_b), s.drop_attn_out, da);
  } else {
    be.layernorm_backward(dx1, s.res1, L.ln1_w->value, s.ln1_mean, s.ln1_rstd, g_res,
                          grad_of(L.ln1_w), grad_of(L.ln1_b));
  }
  // d(x) starts as d(res1) (the residual path) in g_res's own buffer: Wo's backward reads it
  // (or its dropped copy) before q, k and v's backward add into it
  g_out = std::move(g_res);
  Tensor& dctx = dx1;
  linear_backward(be, L.o, s.o, da.defined() ? da : g_out, &dctx, false);
  da = Tensor{};
  Tensor dq32 = be.empty(g_out.shape, DType::F32);
  Tensor dk = be.empty(g_out.shape, g_out.dtype), dv = be.empty(g_out.shape, g_out.dtype);
  be.attention_backward(with_dropout(saved.attn, s.drop_attn), s.qt, s.kt, s.vt, s.ctx, s.lse, dctx,
                        dq32, dk, dv, grad_of(enc.rel_bias));
  s.qt = s.kt = s.vt = s.ctx = s.lse = Tensor{};
  s.o = LinearSaved{};
  Tensor& dq = dctx;
  be.copy(dq, dq32);
  dq32 = Tensor{};
  Tensor x_buf = be.empty(g_out.shape, g_out.dtype);
  const Tensor x = bert_layer_input(be, enc, saved, i, x_buf);
  linear_group_backward(
      be, bert_qkv(L),
      {with_saved_input(s.q, x), with_saved_input(s.k, x), with_saved_input(s.v, x)}, {dq, dk, dv},
      &g_out, true);
}

void bert_backward(const Backend& be, const BertEncoder& enc, BertSaved& saved, Tensor d_hidden) {
  const ModelConfig& c = enc.cfg;
  const int64_t T = d_hidden.dim(0), H = c.hidden;
  const DType act = be.act_dtype();
  Tensor g_out = std::move(d_hidden);
  if (g_out.dtype != act) {
    Tensor t = be.empty({T, H}, act);
    be.copy(t, g_out);
    g_out = t;
  }
  for (size_t i = enc.layers.size(); i-- > 0;) {
    BertLayerSaved recomputed;
    if (enc.gradient_checkpointing) {
      Rng rng = saved.layers[i].rng;
      bert_layer_forward(be, enc, enc.layers[i], saved.attn, saved.layers[i].x, &recomputed,
                         saved.has_rng ? &rng : nullptr);
    }
    BertLayerSaved& s = enc.gradient_checkpointing ? recomputed : saved.layers[i];
    Tensor dx1 = bert_ffn_backward(be, enc, enc.layers[i], s, g_out);
    bert_attention_backward(be, enc, i, saved, s, g_out, std::move(dx1));
    saved.layers[i] = BertLayerSaved{};  // (with checkpointing: the layer input)
  }
  Tensor& dx = g_out;
  Tensor d_res = be.empty({T, H}, act);
  Tensor* dw = grad_of(enc.word);
  Tensor* dp = grad_of(enc.pos);
  Tensor* dt = grad_of(enc.type);
  Tensor* dlnw = grad_of(enc.emb_ln_w);
  Tensor* dlnb = grad_of(enc.emb_ln_b);
  if (!dw && !dp && !dt && !dlnw && !dlnb) return;
  if (saved.drop_emb.active()) be.dropout(dx, saved.drop_emb, 0, dx);
  be.layernorm_backward(dx, saved.emb, enc.emb_ln_w->value, saved.emb_mean, saved.emb_rstd, d_res,
                        dlnw, dlnb);
  if (dw) be.embedding_backward(saved.ids, d_res, *dw);
  if (dp) be.embedding_backward(saved.positions, d_res, *dp);
  if (dt) be.embedding_backward(saved.types, d_res, *dt);
}

}  // namespace et
