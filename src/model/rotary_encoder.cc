#include "model/rotary_encoder.h"

#include <cmath>
#include <numeric>
#include <utility>

#include "core/error.h"
#include "model/bert.h"
#include "model/weight_binder.h"

namespace et {

RotaryEncoder bind_rotary_encoder(const ModelConfig& cfg, ParamStore& store,
                                  const std::string& where) {
  RotaryEncoder e;
  e.cfg = cfg;
  const bool modern = cfg.family == Family::ModernBert;
  const char* word_name = modern ? "embeddings.tok_embeddings.weight" : "embed_tokens.weight";
  WeightBinder b{store, "", where};
  for (const char* p : {"", "model.", "base_model."}) {
    if (store.find(std::string(p) + word_name)) {
      b.prefix = p;
      break;
    }
  }
  e.prefix = b.prefix;
  const int64_t h = cfg.hidden, f = cfg.intermediate, D = cfg.head_dim;
  const int64_t qdim = cfg.heads * D, kvdim = cfg.kv_heads * D;
  e.word = b.table(word_name, h);
  auto norm = [&](const std::string& name, int64_t n, bool optional = false) {
    Norm out;
    if (optional && !b.maybe(name + ".weight")) return out;
    out.w = b.vec(name + ".weight", n);
    if (cfg.layer_norm && cfg.norm_bias) out.b = b.vec(name + ".bias", n);
    return out;
  };
  if (modern) e.emb_norm = norm("embeddings.norm", h);
  for (int i = 0; i < cfg.layers; ++i) {
    RotaryLayer L;
    L.sliding = !cfg.sliding.empty() && cfg.sliding[static_cast<size_t>(i)];
    std::string p = "layers." + std::to_string(i) + ".";
    if (modern) {
      // layer 0 has no attn_norm (the embedding norm precedes it)
      L.attn_norm = norm(p + "attn_norm", h, /*optional=*/i == 0);
      L.qkv = b.linear(p + "attn.Wqkv", h, 3 * h, cfg.attn_bias);
      L.o = b.linear(p + "attn.Wo", h, h, cfg.attn_bias);
      L.mlp_norm = norm(p + "mlp_norm", h);
      L.wi = b.linear(p + "mlp.Wi", h, 2 * f, cfg.mlp_bias);
      L.down = b.linear(p + "mlp.Wo", f, h, cfg.mlp_bias);
    } else {
      L.attn_norm = norm(p + "input_layernorm", h);
      L.q = b.linear(p + "self_attn.q_proj", h, qdim, cfg.attn_bias);
      L.k = b.linear(p + "self_attn.k_proj", h, kvdim, cfg.attn_bias);
      L.v = b.linear(p + "self_attn.v_proj", h, kvdim, cfg.attn_bias);
      L.o = b.linear(p + "self_attn.o_proj", qdim, h, cfg.attn_bias);
      L.q_norm = b.vec(p + "self_attn.q_norm.weight", D);
      L.k_norm = b.vec(p + "self_attn.k_norm.weight", D);
      if (cfg.sandwich_norm) {
        L.post_attn_norm = norm(p + "post_attention_layernorm", h);
        L.mlp_norm = norm(p + "pre_feedforward_layernorm", h);
        L.post_mlp_norm = norm(p + "post_feedforward_layernorm", h);
      } else {
        L.mlp_norm = norm(p + "post_attention_layernorm", h);
      }
      L.gate = b.linear(p + "mlp.gate_proj", h, f, false);
      L.up = b.linear(p + "mlp.up_proj", h, f, false);
      L.down = b.linear(p + "mlp.down_proj", f, h, false);
    }
    // the GLU's output and the attention's, made in linear_input's buffers
    L.down.input_from_model = L.o.input_from_model = true;
    // the norms' outputs, made in group_input's buffers (ModernBERT: linear_input's of its fused
    // projections)
    for (Linear* l : {&L.q, &L.k, &L.v, &L.gate, &L.up}) l->input_from_model = !modern;
    L.qkv.input_from_model = L.wi.input_from_model = modern;
    e.layers.push_back(L);
  }
  e.final_norm = norm(modern ? "final_norm" : "norm", h);
  return e;
}

std::vector<Linear*> rotary_linears(RotaryEncoder& enc) {
  std::vector<Linear*> out;
  for (RotaryLayer& L : enc.layers)
    for (Linear* l : {&L.qkv, &L.q, &L.k, &L.v, &L.o, &L.wi, &L.gate, &L.up, &L.down})
      if (l->weight) out.push_back(l);
  return out;
}

std::vector<Param*> rotary_params(RotaryEncoder& enc) {
  std::vector<Param*> out{enc.word, enc.emb_norm.w, enc.emb_norm.b};
  for (RotaryLayer& L : enc.layers) {
    for (Norm* n : {&L.attn_norm, &L.post_attn_norm, &L.mlp_norm, &L.post_mlp_norm}) {
      out.push_back(n->w);
      out.push_back(n->b);
    }
    out.push_back(L.q_norm);
    out.push_back(L.k_norm);
  }
  for (Linear* l : rotary_linears(enc)) {
    out.push_back(l->weight);
    out.push_back(l->bias);
  }
  out.push_back(enc.final_norm.w);
  out.push_back(enc.final_norm.b);
  std::erase(out, nullptr);
  return out;
}

namespace {

float norm_offset(const ModelConfig& c) {
  return c.layer_norm ? 0.0f : c.norm_offset;
}

// A norm's forward state for input x: rstd [rows], and xhat when it is kept (`keep`).
NormSaved norm_state(const Backend& be, const Norm& n, const Tensor& x, bool keep) {
  return {keep ? be.empty(x.shape, be.act_dtype()) : Tensor{},
          be.empty({x.numel() / n.w->value.numel()}, DType::F32)};
}

// y = N(x) into y (N with a weight), or with `adding` y += N(x) (an RMSNorm only); with s,
// keeps xhat and rstd.
void norm_into(const Backend& be, const ModelConfig& c, const Norm& n, const Tensor& x, Tensor& y,
               bool adding, NormSaved* s) {
  NormSaved st = norm_state(be, n, x, s != nullptr);
  Tensor &xhat = st.xhat, &rstd = st.rstd;
  if (c.layer_norm) {
    ET_CHECK(!adding, "norm ", n.w->name, ": a LayerNorm's forward does not add into its output");
    Tensor mean = be.empty(rstd.shape, DType::F32);
    be.layernorm_forward(x, n.w->value, n.b ? &n.b->value : nullptr, c.norm_eps, y, mean, rstd,
                         s ? &xhat : nullptr);
  } else {
    be.rmsnorm_forward(x, n.w->value, c.norm_offset, c.norm_eps, y, rstd, s ? &xhat : nullptr,
                       adding);
  }
  if (s) *s = st;
}

// The buffer of a norm's output [rows, cols] that the Linears `readers` read: their group's
// input buffer (group_input: spare columns for LoRA along K), one Linear's (linear_input), or
// a plain one.
Tensor norm_output_buffer(const Backend& be, const LinearGroup& readers, int64_t rows,
                          int64_t cols) {
  if (readers.empty()) return be.empty({rows, cols}, be.act_dtype());
  ET_CHECK(readers[0]->in == cols, "norm output of ", cols, " columns read by ",
           readers[0]->weight->name, " of ", readers[0]->in);
  if (readers.size() == 1) return linear_input(be, *readers[0], rows);
  return group_input(be, readers, rows);
}

// The Linears that read a layer's pre-attention and pre-MLP norms: the q/k/v and gate/up
// groups, or ModernBERT's fused Wqkv and Wi.
LinearGroup attn_norm_readers(const RotaryLayer& L) {
  return L.qkv.weight ? LinearGroup{&L.qkv} : rotary_qkv(L);
}
LinearGroup mlp_norm_readers(const RotaryLayer& L) {
  return L.wi.weight ? LinearGroup{&L.wi} : rotary_glu(L);
}

// y = N(x) (a new tensor, in the buffer `readers` read, norm_output_buffer; x itself for an
// identity norm); with s, keeps xhat and rstd.
Tensor norm_forward(const Backend& be, const ModelConfig& c, const Norm& n, const Tensor& x,
                    NormSaved* s, const LinearGroup& readers = {}) {
  if (!n.w) return x;
  const int64_t cols = n.w->value.numel();
  Tensor y = norm_output_buffer(be, readers, x.numel() / cols, cols);
  norm_into(be, c, n, x, y, false, s);
  return y;
}

// The norm that reads the residual stream right after a sum into it (the next pre norm, or the
// final norm), computed with the sum: its output y (in the buffer of `readers`, the Linears that
// read it: norm_output_buffer), and with s its saved state.
struct NextNorm {
  const Norm* n;
  NormSaved* s;
  LinearGroup readers;
  Tensor y;  // set by the sum's function
};

// sum += N(x) (sum: the fp32 residual stream that a post norm's output joins), in the norm's
// own pass for an RMSNorm (Gemma3's post norms: 12 bytes an element instead of the 16 of writing
// N(x) and adding it in a pass of its own); with s, keeps xhat and rstd as norm_forward does.
// With `next`, also next->y = N_next(sum), in the same pass when both are RMSNorms with a weight
// (16 bytes an element instead of 20: the sum is read once).
// x is handed over: in two passes it is freed before N_next allocates.
void norm_forward_adding(const Backend& be, const ModelConfig& c, const Norm& n, Tensor x,
                         Tensor& sum, NormSaved* s, NextNorm* next) {
  if (next && n.w && next->n->w && !c.layer_norm) {
    NormSaved s1 = norm_state(be, n, x, s != nullptr),
              s2 = norm_state(be, *next->n, sum, next->s != nullptr);
    next->y = norm_output_buffer(be, next->readers, sum.dim(0), sum.dim(1));
    be.rmsnorm_add_rmsnorm_forward(x, n.w->value, sum, s1.rstd, s ? &s1.xhat : nullptr,
                                   next->n->w->value, next->y, s2.rstd,
                                   next->s ? &s2.xhat : nullptr, c.norm_offset, c.norm_eps);
    if (s) *s = s1;
    if (next->s) *next->s = s2;
    return;
  }
  if (!n.w || c.layer_norm)
    be.add(sum, norm_forward(be, c, n, x, s), sum);
  else
    norm_into(be, c, n, x, sum, true, s);
  x = Tensor{};
  if (next) next->y = norm_forward(be, c, *next->n, sum, next->s, next->readers);
}

// N(x) again from what norm_forward kept (`x`: the input, for an identity norm).
Tensor norm_recompute(const Backend& be, const ModelConfig& c, const Norm& n, const NormSaved& s,
                      const Tensor& x) {
  if (!n.w) return x;
  Tensor y = be.empty(s.xhat.shape, be.act_dtype());
  be.norm_scale_shift(s.xhat, n.w->value, norm_offset(c), n.b ? &n.b->value : nullptr, y);
  return y;
}

// The input N(x) of Linears `readers` for their backward: recomputed from what norm_forward
// kept, or, when none of their weights trains (LoRA) and N has a scale but no bias, handed over
// as N's saved xhat (with_normalized_input: LoRA's A gradient takes N's scale per column), which
// saves the recompute's pass over [T, hidden]. `x`: the input, for an identity norm.
struct NormOutput {
  const ModelConfig* c;
  const Norm* n;
  const NormSaved* s;
  Tensor h;  // recomputed, or undefined when the readers take xhat
  LinearSaved with(const LinearSaved& saved) const {
    if (h.defined()) return with_saved_input(saved, h);
    return with_normalized_input(saved, s->xhat, n->w->value, norm_offset(*c));
  }
};
NormOutput norm_output_for(const Backend& be, const ModelConfig& c, const Norm& n,
                           const NormSaved& s, const Tensor& x,
                           std::initializer_list<const Linear*> readers) {
  bool frozen = n.w && !n.b;
  for (const Linear* l : readers) frozen = frozen && (!l->weight || !l->weight->trainable);
  return {&c, &n, &s, frozen ? Tensor{} : norm_recompute(be, c, n, s, x)};
}

// dx of y = N(x) (a new tensor; dy itself for an identity norm); accumulates dw, db.
Tensor norm_backward(const Backend& be, const ModelConfig& c, const Norm& n, const NormSaved& s,
                     const Tensor& dy) {
  if (!n.w) return dy;
  Tensor dx = be.empty(dy.shape, be.act_dtype());
  if (c.layer_norm)
    be.layernorm_backward_normalized(dy, s.xhat, n.w->value, s.rstd, dx, grad_of(n.w),
                                     grad_of(n.b));
  else
    be.rmsnorm_backward_normalized(dy, s.xhat, n.w->value, c.norm_offset, s.rstd, dx, grad_of(n.w));
  return dx;
}

// The gradient of the residual stream between norms: `sum` (fp32, see rotary_forward) and, when
// what reads it next is a product (a layer without post norms: Qwen3, ModernBERT), `operand`,
// the same values in the products' dtype, written by the norm backward that made the sum
// instead of converted by the product.
struct ResidualGrad {
  Tensor sum;
  Tensor operand;
};

// What a product reads of a residual gradient (the operand when there is one).
const Tensor& product_input(const ResidualGrad& g) {
  return g.operand.defined() ? g.operand : g.sum;
}

// A post norm (with a weight) whose output joined the residual stream that a pre norm reads
// (Gemma3's sandwich norms), differentiated with that pre norm's backward (norm_backward_adding):
// dx, the gradient of the post norm's input, from the residual gradient the pre norm completes.
struct PostNormGrad {
  const Norm* n;
  const NormSaved* s;
  Tensor dx;  // set by norm_backward_adding
};

// d.sum += dx of y = N(x) (x: the residual stream's value; d.sum fp32), in the norm's backward
// pass (dy itself for an identity norm); with `operand`, d.operand is (re)made from the new sum.
// With `post`, also post->dx from the new sum, in the same pass when both are RMSNorms (16 bytes
// an element instead of 20: the sum is read once).
void norm_backward_adding(const Backend& be, const ModelConfig& c, const Norm& n,
                          const NormSaved& s, const Tensor& dy, ResidualGrad& d, bool operand,
                          PostNormGrad* post) {
  Tensor* copy = nullptr;
  d.operand = Tensor{};
  if (operand && be.act_dtype() != d.sum.dtype) {
    d.operand = be.empty(d.sum.shape, be.act_dtype());
    copy = &d.operand;
  }
  if (post && n.w && !c.layer_norm && !copy) {
    post->dx = be.empty(d.sum.shape, be.act_dtype());
    be.rmsnorm_add_rmsnorm_backward(dy, s.xhat, n.w->value, s.rstd, grad_of(n.w), d.sum,
                                    post->s->xhat, post->n->w->value, post->s->rstd,
                                    grad_of(post->n->w), post->dx, c.norm_offset);
    return;
  }
  if (!n.w) {
    be.add(d.sum, dy, d.sum);
    if (copy) be.copy(*copy, d.sum);
  } else if (c.layer_norm) {
    be.layernorm_backward_normalized(dy, s.xhat, n.w->value, s.rstd, d.sum, grad_of(n.w),
                                     grad_of(n.b), true, copy);
  } else {
    be.rmsnorm_backward_normalized(dy, s.xhat, n.w->value, c.norm_offset, s.rstd, d.sum,
                                   grad_of(n.w), true, copy);
  }
  if (post) post->dx = norm_backward(be, c, *post->n, *post->s, d.sum);
}

double theta_of(const ModelConfig& c, const RotaryLayer& L) {
  return L.sliding ? c.rope_theta_local : c.rope_theta;
}

// The residual sum x + N(linear(in)) in fp32 (see rotary_forward), into x's buffer when no one
// else holds it; without the norm N the products sum into the residual in their epilogues.
// `in` is handed over; with drop_input it is also dropped from the saved state (backward
// recomputes it), so that it is freed before the norm allocates. `next`: the norm that reads
// the sum next (norm_forward_adding).
Tensor residual_linear_add(const Backend& be, const ModelConfig& c, Tensor x, const Linear& l,
                           Tensor in, bool drop_input, const Norm& n, LinearSaved* ls,
                           NormSaved* ns, Rng* rng, NextNorm* next) {
  Tensor sum = residual_buffer(be, std::move(x), DType::F32);
  Tensor y;
  if (n.w) {
    y = linear_forward(be, l, in, ls, rng);
  } else {
    linear_forward_add(be, l, in, sum, ls, rng);
  }
  if (ls && drop_input) drop_saved_input(*ls, in);
  in = Tensor{};
  if (n.w)
    norm_forward_adding(be, c, n, std::move(y), sum, ns, next);
  else if (next)
    next->y = norm_forward(be, c, *next->n, sum, next->s, next->readers);
  return sum;
}

// x is taken by value: a caller that hands its input over lets the first residual sum reuse
// its buffer. Temporaries are released as soon as they are consumed (h after the projections,
// the attention's output after the sum, h2 and m after theirs): the last layer's forward, with
// every layer's saved tensors alive, can be the step's peak. `h`: N_attn(x) when the layer
// below made it with its last sum (s->attn_norm then holds its state already), else undefined;
// `next`: the norm that reads this layer's output (the next layer's, or the final norm).
Tensor layer_forward(const Backend& be, const RotaryEncoder& enc, const RotaryLayer& L,
                     const AttentionArgs& attn, const Tensor& positions, Tensor x, Tensor h,
                     RotaryLayerSaved* s, Rng* rng, NextNorm* next) {
  const ModelConfig& c = enc.cfg;
  const int64_t T = x.dim(0), D = c.head_dim;
  const int64_t qdim = c.heads * D, kvdim = c.kv_heads * D;
  const DType act = be.act_dtype();
  if (!h.defined())
    h = norm_forward(be, c, L.attn_norm, x, s ? &s->attn_norm : nullptr, attn_norm_readers(L));
  if (s && !L.attn_norm.w) s->x = x;  // h is x itself
  Tensor q, k, v;
  const double theta = theta_of(c, L);
  if (L.qkv.weight) {
    // q and k rotated in place in the fused projection's output; the attention reads q, k, v as
    // column views of it (rows qdim + 2 kvdim apart)
    Tensor qkv = linear_forward(be, L.qkv, h, s ? &s->qkv : nullptr, rng);
    be.rope_columns(qkv, 0, qkv, 0, positions, c.heads, static_cast<int>(D), theta, false);
    be.rope_columns(qkv, qdim, qkv, qdim, positions, c.kv_heads, static_cast<int>(D), theta, false);
    q = qkv.column_view(0, qdim);
    k = qkv.column_view(qdim, qdim + kvdim);
    v = qkv.column_view(qdim + kvdim, qdim + 2 * kvdim);
  } else {
    std::vector<Tensor> ys = linear_group_forward(
        be, rotary_qkv(L), h, {s ? &s->q : nullptr, s ? &s->k : nullptr, s ? &s->v : nullptr}, rng);
    q = ys[0], k = ys[1], v = ys[2];
  }
  // h = N_attn(x) is recomputed in backward
  if (s)
    for (LinearSaved* ls : {&s->qkv, &s->q, &s->k, &s->v}) drop_saved_input(*ls, h);
  h = Tensor{};
  if (L.q_norm) {  // per-head RMSNorm and RoPE in one pass
    Tensor qn = be.empty(q.shape, act), kn = be.empty(k.shape, act);
    Tensor qrs = be.empty({T * c.heads}, DType::F32), krs = be.empty({T * c.kv_heads}, DType::F32);
    be.rmsnorm_rope_forward(q, L.q_norm->value, c.norm_offset, c.norm_eps, positions, c.heads,
                            theta, qn, qrs);
    be.rmsnorm_rope_forward(k, L.k_norm->value, c.norm_offset, c.norm_eps, positions, c.kv_heads,
                            theta, kn, krs);
    if (s) {
      s->q_pre = q;
      s->k_pre = k;
      s->q_rstd = qrs;
      s->k_rstd = krs;
    }
    q = qn;
    k = kn;
  } else if (!L.qkv.weight) {
    be.rope(q, positions, c.heads, static_cast<int>(D), theta, false);
    be.rope(k, positions, c.kv_heads, static_cast<int>(D), theta, false);
  }
  // the attention's output in the output projection's input buffer (LoRA along K: the rank
  // product adds no pass over the residual sum it feeds)
  Tensor ctx = linear_input(be, L.o, T), lse = be.empty({T, c.heads}, DType::F32);
  be.attention_forward(attn, q, k, v, ctx, lse);
  NextNorm mlp_norm{&L.mlp_norm, s ? &s->mlp_norm : nullptr, mlp_norm_readers(L), Tensor{}};
  Tensor x1 =
      residual_linear_add(be, c, std::move(x), L.o, ctx, false, L.post_attn_norm,
                          s ? &s->o : nullptr, s ? &s->post_attn_norm : nullptr, rng, &mlp_norm);
  if (s) {
    if (!L.q_norm) {  // no norm to recompute them from: keep q, k after RoPE
      s->qr = q;
      s->kr = k;
    }
    s->vr = v;
    s->ctx = ctx;
    s->lse = lse;
  }
  q = k = v = ctx = Tensor{};
  Tensor h2 = std::move(mlp_norm.y);
  Tensor g, u;  // ModernBERT: g holds Wi's packed output (gate | up), u stays empty
  Tensor m = linear_input(be, L.down, T);
  if (L.wi.weight) {
    g = linear_forward(be, L.wi, h2, s ? &s->wi : nullptr, rng);
    be.glu_packed_forward(c.act, g, m);
  } else {
    std::vector<Tensor> ys = linear_group_forward(
        be, rotary_glu(L), h2, {s ? &s->gate : nullptr, s ? &s->up : nullptr}, rng);
    g = ys[0], u = ys[1];
    be.glu_forward(c.act, g, u, m);
  }
  // h2 = N_mlp(x1) is recomputed in backward
  if (s) {
    for (LinearSaved* ls : {&s->wi, &s->gate, &s->up}) drop_saved_input(*ls, h2);
    s->g = g;
    s->u = u;
  }
  h2 = g = u = Tensor{};
  // m = act(g) * u is recomputed in backward: [T, intermediate] is the largest activation
  return residual_linear_add(be, c, std::move(x1), L.down, std::move(m), true, L.post_mlp_norm,
                             s ? &s->down : nullptr, s ? &s->post_mlp_norm : nullptr, rng, next);
}

// The MLP half of a layer's backward: takes d(out) over (its buffer becomes d(x1), fp32). Its
// [T, intermediate] temporaries are freed on return, before the attention half allocates its
// own; each is dropped as soon as it is consumed (the saved GLU inputs too), and the
// projections' input h2 is recomputed only once the GLU's gradient has replaced dm. `df`: the
// gradient of the post-MLP norm's input when the layer above made it (PostNormGrad), else
// undefined; `post_attn`: the post-attention norm, differentiated with the MLP's input norm.
ResidualGrad mlp_backward(const Backend& be, const RotaryEncoder& enc, const RotaryLayer& L,
                          RotaryLayerSaved& s, ResidualGrad dout, Tensor df,
                          PostNormGrad* post_attn) {
  const ModelConfig& c = enc.cfg;
  const int64_t T = dout.sum.dim(0), H = c.hidden, F = c.intermediate;
  const DType act = be.act_dtype();
  // x' = x1 + N_post_mlp(Wd m)
  if (!df.defined())
    df = L.post_mlp_norm.w ? norm_backward(be, c, L.post_mlp_norm, s.post_mlp_norm, dout.sum)
                           : product_input(dout);
  dout.operand = Tensor{};
  // Wd's input m = act(g) * u is recomputed only when Wd trains (dW = d(f)^T m); LoRA's A
  // gradient takes g and u (Backend::lora_act_input_grad). m, when made, is read by Wd's backward
  // before its dx (dm) overwrites it: one buffer for both.
  Tensor m = be.empty({T, F}, act);
  LinearSaved down;
  if (L.down.weight->trainable) {
    if (L.wi.weight)
      be.glu_packed_forward(c.act, s.g, m);
    else
      be.glu_forward(c.act, s.g, s.u, m);
    down = with_saved_input(s.down, m);
  } else {
    down = with_activation_input(s.down, c.act, s.g, s.u, L.wi.weight != nullptr);
  }
  // Wd's LoRA term of dm is added in the GLU's backward pass (glu_backward_adding)
  LoraTerm down_term;
  linear_backward(be, L.down, down, df, &m, false, lora_term_slot(be, L.down, c.act, down_term));
  down = LinearSaved{};
  df = Tensor{};
  Tensor& dm = m;
  Tensor dwi, dg, du;
  if (L.wi.weight) {
    dwi = be.empty({T, 2 * F}, act);
    glu_backward_adding(be, c.act, down_term, s.g, nullptr, dm, dwi, nullptr);
  } else {
    dg = be.empty({T, F}, act);
    du = be.empty({T, F}, act);
    glu_backward_adding(be, c.act, down_term, s.g, &s.u, dm, dg, &du);
  }
  down_term = LoraTerm{};
  m = s.g = s.u = Tensor{};
  // the projections' input h2 = N_mlp(x1), recomputed or as N_mlp's xhat
  const NormOutput h2 =
      norm_output_for(be, c, L.mlp_norm, s.mlp_norm, Tensor{}, {&L.wi, &L.gate, &L.up});
  Tensor dh2 = be.empty({T, H}, act);
  if (L.wi.weight) {
    linear_backward(be, L.wi, h2.with(s.wi), dwi, &dh2, false);
  } else {
    linear_group_backward(be, rotary_glu(L), {h2.with(s.gate), h2.with(s.up)}, {dg, du}, &dh2,
                          false);
    dg = Tensor{};
  }
  dwi = du = Tensor{};
  if (dout.sum.dtype != DType::F32) {  // d(x1) accumulates in fp32, as the residual stream
    Tensor t = be.empty(dout.sum.shape, DType::F32);
    be.copy(t, dout.sum);
    dout.sum = t;
  }
  // the attention half's output projection reads d(x1) next when there is no post-attention norm
  norm_backward_adding(be, c, L.mlp_norm, s.mlp_norm, dh2, dout, !L.post_attn_norm.w, post_attn);
  s.wi = s.gate = s.up = s.down = LinearSaved{};
  s.mlp_norm = s.post_mlp_norm = NormSaved{};
  return dout;
}

// Gradient of a layer: takes d(out) (by value: the caller hands it over, and it is freed once
// used), returns d(x); accumulates parameter gradients. Temporaries are dropped as soon as they
// are consumed, and so are the tensors of s, each once read (the caller drops the rest): the
// peak of a step is this layer's backward with every earlier layer's saved tensors alive, so
// each tensor of the layer itself released early lowers it. `layer_below`: another layer's
// backward follows, whose MLP half may read d(x) as a product operand (ResidualGrad). `df` as
// for mlp_backward; `below`: the post-MLP norm of the layer below, differentiated with this
// layer's input norm.
ResidualGrad layer_backward(const Backend& be, const RotaryEncoder& enc, const RotaryLayer& L,
                            const AttentionArgs& attn, const Tensor& positions, RotaryLayerSaved& s,
                            ResidualGrad dout, Tensor df, bool layer_below, PostNormGrad* below) {
  const ModelConfig& c = enc.cfg;
  const int64_t T = dout.sum.dim(0), H = c.hidden, D = c.head_dim;
  const int64_t qdim = c.heads * D, kvdim = c.kv_heads * D;
  const DType act = be.act_dtype();
  PostNormGrad post_attn{&L.post_attn_norm, &s.post_attn_norm, Tensor{}};
  ResidualGrad dx1 = mlp_backward(be, enc, L, s, std::move(dout), std::move(df),
                                  L.post_attn_norm.w ? &post_attn : nullptr);
  // x1 = x + N_post_attn(Wo attn(q, k, v))
  Tensor da = L.post_attn_norm.w ? std::move(post_attn.dx) : product_input(dx1);
  dx1.operand = Tensor{};
  Tensor dctx = be.empty({T, qdim}, act);
  linear_backward(be, L.o, s.o, da, &dctx, false);
  da = Tensor{};
  // dq in fp32 where what reads it next takes fp32 (the q norm's backward, the rotation into
  // dqkv): the attention backward accumulates dq in fp32 and would otherwise convert it to the
  // activation dtype in a pass of its own (read 4 + write 2 bytes an element, for the 2 more
  // that the reader reads)
  Tensor dq = be.empty({T, qdim}, L.q_norm || L.qkv.weight ? DType::F32 : act);
  // dk and dv straight into the columns of the buffers that take them next: ModernBERT's dqkv
  // (dk rotated back in place there), the q/k/v group's packed output gradient (dv; dk goes
  // through the k norm's backward first)
  Tensor dqkv = L.qkv.weight ? be.empty({T, qdim + 2 * kvdim}, act) : Tensor{};
  Tensor g = L.q_norm ? group_output_grad(be, rotary_qkv(L), T) : Tensor{};
  Tensor dk = dqkv.defined() ? dqkv.column_view(qdim, qdim + kvdim) : be.empty({T, kvdim}, act);
  Tensor dv = dqkv.defined() ? dqkv.column_view(qdim + kvdim, qdim + 2 * kvdim)
              : g.defined()  ? g.column_view(qdim + kvdim, qdim + 2 * kvdim)
                             : be.empty({T, kvdim}, act);
  const double theta = theta_of(c, L);
  Tensor qr = s.qr, kr = s.kr;
  if (L.q_norm) {  // q, k after norm and RoPE, recomputed
    qr = be.empty({T, qdim}, act);
    kr = be.empty({T, kvdim}, act);
    Tensor qrs = be.empty({T * c.heads}, DType::F32), krs = be.empty({T * c.kv_heads}, DType::F32);
    be.rmsnorm_rope_forward(s.q_pre, L.q_norm->value, c.norm_offset, c.norm_eps, positions, c.heads,
                            theta, qr, qrs);
    be.rmsnorm_rope_forward(s.k_pre, L.k_norm->value, c.norm_offset, c.norm_eps, positions,
                            c.kv_heads, theta, kr, krs);
  }
  be.attention_backward(attn, qr, kr, s.vr, s.ctx, s.lse, dctx, dq, dk, dv, nullptr);
  dctx = qr = kr = s.qr = s.kr = s.vr = s.ctx = s.lse = Tensor{};
  s.o = LinearSaved{};
  s.post_attn_norm = NormSaved{};
  if (L.q_norm) {
    // into the columns of one buffer [dq | dk | dv | .] where the projections take LoRA along K
    // (group_output_grad: then their input gradient is one product)
    Tensor dq_pre = g.defined() ? g.column_view(0, qdim) : be.empty({T, qdim}, act),
           dk_pre = g.defined() ? g.column_view(qdim, qdim + kvdim) : be.empty({T, kvdim}, act);
    be.rmsnorm_rope_backward(dq, s.q_pre, L.q_norm->value, c.norm_offset, s.q_rstd, positions,
                             c.heads, theta, dq_pre, grad_of(L.q_norm));
    be.rmsnorm_rope_backward(dk, s.k_pre, L.k_norm->value, c.norm_offset, s.k_rstd, positions,
                             c.kv_heads, theta, dk_pre, grad_of(L.k_norm));
    dq = dq_pre;
    dk = dk_pre;
    s.q_pre = s.k_pre = s.q_rstd = s.k_rstd = Tensor{};
  } else if (!L.qkv.weight) {
    be.rope(dq, positions, c.heads, static_cast<int>(D), theta, true);
    be.rope(dk, positions, c.kv_heads, static_cast<int>(D), theta, true);
  }
  if (L.qkv.weight) {  // dq rotated back into dqkv, dk in place there
    be.rope_columns(dq, 0, dqkv, 0, positions, c.heads, static_cast<int>(D), theta, true);
    be.rope_columns(dqkv, qdim, dqkv, qdim, positions, c.kv_heads, static_cast<int>(D), theta,
                    true);
    dq = dk = dv = Tensor{};
  }
  // the projections' input, recomputed once the q, k, v gradients are packed (or as xhat)
  const NormOutput h =
      norm_output_for(be, c, L.attn_norm, s.attn_norm, s.x, {&L.qkv, &L.q, &L.k, &L.v});
  Tensor dh = be.empty({T, H}, act);
  if (L.qkv.weight) {
    linear_backward(be, L.qkv, h.with(s.qkv), dqkv, &dh, false);
  } else {
    linear_group_backward(be, rotary_qkv(L), {h.with(s.q), h.with(s.k), h.with(s.v)}, {dq, dk, dv},
                          &dh, false);
    dq = dk = dv = Tensor{};
  }
  // d(x), in place; the MLP half of the layer below reads it next without a post-MLP norm
  norm_backward_adding(be, c, L.attn_norm, s.attn_norm, dh, dx1, layer_below && !L.post_mlp_norm.w,
                       below);
  return dx1;
}

}  // namespace

Tensor rotary_forward(const Backend& be, const RotaryEncoder& enc, const PackedBatch& batch,
                      RotarySaved* saved, Rng* rng) {
  const ModelConfig& c = enc.cfg;
  const int64_t T = batch.tokens(), H = c.hidden;
  check_token_ids(batch, enc.word->value.dim(0));
  ET_CHECK(batch.max_seqlen <= c.max_positions, "sequence of ", batch.max_seqlen,
           " tokens is longer than the model's max_position_embeddings ", c.max_positions,
           " (lower max_seq_length)");
  std::vector<int32_t> pos(batch.ids.size());
  for (int b = 0; b < batch.size(); ++b)
    std::iota(pos.begin() + batch.cu_seqlens[b], pos.begin() + batch.cu_seqlens[b + 1], 0);
  Tensor ids = be.upload(cpu_from_i32(batch.ids, {T}));
  Tensor positions = be.upload(cpu_from_i32(pos, {T}));
  // The residual stream (and its gradient) is kept in fp32 while every matrix operand is bf16:
  // with sandwich norms and scaled embeddings (Gemma3) a bf16 residual loses accuracy at each
  // of the two additions per layer; fp32 costs two [T, hidden] tensors per layer.
  Tensor x = be.empty({T, H}, DType::F32);
  be.embedding_forward(ids, enc.word->value, x, false);
  if (c.emb_scale != 1.0f) be.scale(x, c.emb_scale);
  // ModernBERT's first layer has no attention norm: its Wqkv reads the embedding norm's output,
  // made in its input buffer then (LoRA along K; every layer's Wqkv runs the same products)
  const bool first_reads = !enc.layers.empty() && !enc.layers[0].attn_norm.w;
  x = norm_forward(be, c, enc.emb_norm, x, saved ? &saved->emb_norm : nullptr,
                   first_reads ? attn_norm_readers(enc.layers[0]) : LinearGroup{});

  AttentionArgs full;
  full.cu_seqlens = batch.cu_seqlens;
  full.max_seqlen = batch.max_seqlen;
  full.n_heads = c.heads;
  full.n_kv_heads = c.kv_heads;
  full.head_dim = c.head_dim;
  full.scale = c.attn_scale;
  full.causal = c.causal;
  if (be.device() != Device::CPU)
    full.cu_seqlens_dev = be.upload(cpu_from_i32(batch.cu_seqlens, {batch.size() + 1}));
  AttentionArgs local = full;
  local.window = c.window;
  if (saved) {
    saved->ids = ids;
    saved->positions = positions;
    saved->attn_full = full;
    saved->attn_local = local;
    saved->has_rng = rng != nullptr;
    saved->layers.assign(enc.layers.size(), RotaryLayerSaved{});
  }
  // Each layer's last sum also makes the norm that reads it next (NextNorm): the next layer's
  // input norm (its state kept here unless checkpointing recomputes the layer), or the final one.
  Tensor h;  // N_attn of the next layer's input
  for (size_t i = 0; i < enc.layers.size(); ++i) {
    const RotaryLayer& L = enc.layers[i];
    const AttentionArgs& attn = L.sliding ? local : full;
    RotaryLayerSaved* s = saved ? &saved->layers[i] : nullptr;
    const bool last = i + 1 == enc.layers.size();
    NextNorm next{last ? &enc.final_norm : &enc.layers[i + 1].attn_norm, nullptr,
                  last ? LinearGroup{} : attn_norm_readers(enc.layers[i + 1]), Tensor{}};
    if (saved && last)
      next.s = &saved->final_norm;
    else if (saved && !enc.gradient_checkpointing)
      next.s = &saved->layers[i + 1].attn_norm;
    if (s && enc.gradient_checkpointing) {
      s->x = x;  // only the layer input (and the dropout RNG state); backward recomputes
      if (rng) s->rng = *rng;
      x = layer_forward(be, enc, L, attn, positions, x, std::move(h), nullptr, rng, &next);
    } else {
      x = layer_forward(be, enc, L, attn, positions, std::move(x), std::move(h), s, rng, &next);
    }
    h = std::move(next.y);
  }
  if (enc.layers.empty())
    h = norm_forward(be, c, enc.final_norm, x, saved ? &saved->final_norm : nullptr);
  return h;
}

void rotary_backward(const Backend& be, const RotaryEncoder& enc, RotarySaved& saved,
                     Tensor d_hidden) {
  const ModelConfig& c = enc.cfg;
  ResidualGrad dx{norm_backward(be, c, enc.final_norm, saved.final_norm, d_hidden), Tensor{}};
  Tensor df;  // d(the next layer's post-MLP norm input), made with the layer above's input norm
  d_hidden = Tensor{};
  saved.final_norm = NormSaved{};
  for (size_t i = enc.layers.size(); i-- > 0;) {
    const RotaryLayer& L = enc.layers[i];
    const AttentionArgs& attn = L.sliding ? saved.attn_local : saved.attn_full;
    RotaryLayerSaved recomputed;
    if (enc.gradient_checkpointing) {
      Rng rng = saved.layers[i].rng;
      layer_forward(be, enc, L, attn, saved.positions, saved.layers[i].x, Tensor{}, &recomputed,
                    saved.has_rng ? &rng : nullptr, nullptr);
    }
    RotaryLayerSaved& s = enc.gradient_checkpointing ? recomputed : saved.layers[i];
    // the layer below's post-MLP norm goes with this layer's input norm where its state is kept
    // (with checkpointing it is recomputed after this layer)
    PostNormGrad below{i > 0 ? &enc.layers[i - 1].post_mlp_norm : nullptr,
                       i > 0 ? &saved.layers[i - 1].post_mlp_norm : nullptr, Tensor{}};
    const bool fuse_below = i > 0 && !enc.gradient_checkpointing && below.n->w;
    dx = layer_backward(be, enc, L, attn, saved.positions, s, std::move(dx), std::move(df), i > 0,
                        fuse_below ? &below : nullptr);
    df = std::move(below.dx);
    saved.layers[i] = RotaryLayerSaved{};  // (with checkpointing: the layer input)
  }
  Tensor* dw = grad_of(enc.word);
  if (!dw && !grad_of(enc.emb_norm.w) && !grad_of(enc.emb_norm.b)) return;
  Tensor de = norm_backward(be, c, enc.emb_norm, saved.emb_norm, dx.sum);
  dx = ResidualGrad{};
  if (dw) {
    if (c.emb_scale != 1.0f) {
      Tensor scaled = be.empty(de.shape, de.dtype);
      be.copy(scaled, de);
      be.scale(scaled, c.emb_scale);
      de = scaled;
    }
    be.embedding_backward(saved.ids, de, *dw);
  }
}

}  // namespace et
