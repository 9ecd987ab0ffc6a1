// The op interface: every numeric operation the models need, forward and backward, on tensors
// that live on the backend's device. The CPU backend (ops/cpu) is the fp32 reference; the CUDA
// backend implements the same contract with bf16 storage and fp32 accumulation.
//
// Conventions (all tensors row-major, contiguous):
//   - activations are packed: [T, C] with T = total tokens of the batch, no padding;
//   - sequence b occupies rows [cu_seqlens[b], cu_seqlens[b+1]);
//   - "accumulate" outputs (parameter gradients) are added to; other outputs are overwritten.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "ops/dropout_mask.h"

namespace et {

// Variable-length multi-head attention over a packed batch.
//   q: [T, Hq*D], k, v: [T, Hkv*D] (Hq % Hkv == 0: grouped-query attention),
//   out: [T, Hq*D], lse: [T, Hq] (log-sum-exp of each query row's scaled scores, for backward).
// score(i, j) = scale * q_i . k_j + bias(h, j - i), restricted to j <= i when causal and to
// |i - j| <= window when window >= 0 (positions within a sequence).
struct AttentionArgs {
  std::vector<int32_t> cu_seqlens;  // host copy, batch + 1 entries
  Tensor cu_seqlens_dev;            // the same on the device (I32); CPU backend ignores it
  int max_seqlen = 0;
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
  float scale = 1.0f;
  bool causal = false;
  int window = -1;
  // MPNet relative position bias: table [num_buckets, n_heads] indexed by the T5-style
  // bidirectional bucket of (j - i) with max_distance.
  const Tensor* rel_bias = nullptr;
  int rel_buckets = 0, rel_max_distance = 128;
  // Dropout on the attention probabilities (training): out = (P * keep / (1 - p)) V with the
  // mask of dropout_mask.h at row = token * n_heads + head, col = key position; the softmax
  // normaliser and lse are those of P before dropout, as torch's dropout after softmax.
  DropoutSite dropout;
};

enum class PoolMode : uint8_t { Cls, Mean, Max, MeanSqrtLen, WeightedMean, LastToken };

// Elementwise activations: GeluErf = x/2 (1 + erf(x/sqrt2)); GeluTanh = the tanh approximation
// x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); SiLU = x sigmoid(x).
enum class Act : uint8_t { Identity, Tanh, ReLU, Sigmoid, GeluErf, GeluTanh, SiLU };

struct Backend {
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual const char* name() const = 0;

  // Storage type of activations (F32 on the CPU, BF16 on CUDA). Parameters, their gradients
  // and optimizer state are always F32; ops accept either type for activations.
  virtual DType act_dtype() const { return DType::F32; }

  // Memory.
  virtual Tensor empty(const Shape& shape, DType dtype = DType::F32) const = 0;
  virtual Tensor zeros(const Shape& shape, DType dtype = DType::F32) const = 0;
  virtual Tensor upload(const Tensor& host) const = 0;   // host -> device (same dtype)
  virtual Tensor download(const Tensor& dev) const = 0;  // device -> host (F32 for floats)
  // download without draining the device's queue, for small tensors read a step later (a
  // step's loss terms, its gradient norm): the copy is queued behind the work already queued,
  // and the returned function waits for that copy alone, not for work queued after it, so a
  // trainer reads step N's values while step N + 1 runs. The CPU backend copies at once.
  using HostRead = std::function<Tensor()>;
  virtual HostRead download_async(const Tensor& dev) const {
    return [h = download(dev)] { return h; };
  }
  virtual void fill(Tensor& t, float value) const = 0;
  virtual void copy(Tensor& dst, const Tensor& src) const = 0;

  // C[m, n] = alpha * op(A) @ op(B) + beta * C (+ bias[n] on every row, when given), op =
  // transpose when the flag is set. The bias is added in the product's epilogue where the
  // backend can (one pass over C instead of two).
  virtual void matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c,
                      float alpha = 1.0f, float beta = 0.0f,
                      const Tensor* bias = nullptr) const = 0;
  // The two products of a LoRA Linear's backward that read its output gradient g [n, out]:
  //   dxa = scale g B        [n, r], written (B [out, r]);
  //   db += scale g^T xa     [out, r] fp32, accumulated (when db is given);
  // xa is [n, r], or its transpose [r, n] when xa_transposed (a grouped forward keeps A x^T);
  // dxa likewise [r, n] when dxa_transposed. The default runs them as two products, each
  // reading all of g; the CUDA backend reads g once for both (ops/cuda/lora_grad.h).
  virtual void lora_output_grad(const Tensor& g, const Tensor& b, const Tensor& xa,
                                bool xa_transposed, float scale, Tensor& dxa, bool dxa_transposed,
                                Tensor* db) const {
    if (dxa_transposed)
      matmul(b, true, g, true, dxa, scale, 0.0f);
    else
      matmul(g, false, b, false, dxa, scale, 0.0f);
    if (db) matmul(g, true, xa, xa_transposed, *db, scale, 1.0f);
  }
  // The A gradient of a LoRA Linear whose input was not kept because it is an activation the
  // backward would otherwise recompute only for this product (the FFN output projections):
  //   da [r, in] fp32 += dxa^T h      dxa [n, r], h [n, in] =
  //     act(x)          x [n, in] (up null, not packed: BERT's FFN),
  //     act(x) * up     x, up [n, in] (a GLU's gate and up),
  //     act(g) * u      packed: x [n, 2 in] = [g | u] (ModernBERT's Wi output)
  // The default materialises h and runs the product; the CUDA backend forms h tile by tile
  // inside the product (ops/cuda/lora_grad.h).
  virtual void lora_act_input_grad(Act act, const Tensor& x, const Tensor* up, bool packed,
                                   const Tensor& dxa, Tensor& da) const {
    Tensor h = empty({x.dim(0), packed ? x.dim(1) / 2 : x.dim(1)}, x.dtype);
    if (packed)
      glu_packed_forward(act, x, h);
    else if (up)
      glu_forward(act, x, *up, h);
    else
      act_forward(act, x, h);
    matmul(dxa, true, h, false, da, 1.0f, 1.0f);
  }
  // A LoRA Linear's rank-r term added in the pass of the activation beside it (the FFNs):
  //   forward:  pre += scale xa B^T, then y = act(pre)     pre, y [n, f], xa [n, r], B [f, r]
  //     (pre: the output of the Linear before the activation, without its rank-r term)
  //   backward: dy += dxa A, then dx = dy act'(x)          x, dy, dx [n, f], dxa [n, r], A [r, f]
  //     (dy: the input gradient of the Linear after the activation, without its rank-r term;
  //     dx may be dy)
  // The defaults run the rank-r product into pre (dy) and then the activation's pass; the CUDA
  // backend adds the term inside that pass (ops/cuda/lora_act.h), saving the [n, f] tensor's
  // write by the product and its read back.
  // Whether the three below add a rank-r term for this activation and rank inside the pass.
  // Where they would not, the callers keep the term in the Linear's own products instead: the
  // defaults add it by a product into the finished [n, f] tensor, which reads and rewrites it
  // (on a GPU slower than the Linear's order, rank-r product first). The CPU's defaults cost
  // nothing extra.
  virtual bool fuses_lora_act(Act act, int64_t r) const {
    (void)act;
    (void)r;
    return true;
  }
  virtual void lora_act_forward(Act act, Tensor& pre, const Tensor& xa, const Tensor& b,
                                float scale, Tensor& y) const {
    matmul(xa, false, b, true, pre, scale, 1.0f);
    act_forward(act, pre, y);
  }
  virtual void lora_act_backward(Act act, const Tensor& x, Tensor& dy, const Tensor& dxa,
                                 const Tensor& a, Tensor& dx) const {
    matmul(dxa, false, a, false, dy, 1.0f, 1.0f);
    act_backward(act, x, dy, dx);
  }
  // The same for a GLU's backward (glu_backward; glu_packed_backward when up is null: gate is
  // the packed [n, 2f] gate | up and dgate the packed [n, 2f] d(gate) | d(up)):
  //   dy += dxa A, then d(gate) = dy up act'(gate), d(up) = dy act(gate)
  virtual void lora_glu_backward(Act act, const Tensor& gate, const Tensor* up, Tensor& dy,
                                 const Tensor& dxa, const Tensor& a, Tensor& dgate,
                                 Tensor* dup) const {
    matmul(dxa, false, a, false, dy, 1.0f, 1.0f);
    if (up) {
      ET_CHECK(dup, "lora_glu_backward: a separate up needs its own gradient");
      glu_backward(act, gate, *up, dy, dgate, *dup);
    } else {
      glu_packed_backward(act, gate, dy, dgate);
    }
  }
  // y[i, :] += bias;   dbias += sum_i dy[i, :]
  virtual void add_bias(Tensor& y, const Tensor& bias) const = 0;
  virtual void bias_backward(const Tensor& dy, Tensor& dbias) const = 0;
  // y = a + b, y = a * b (elementwise; y may alias a);   y *= s
  virtual void add(const Tensor& a, const Tensor& b, Tensor& y) const = 0;
  virtual void mul(const Tensor& a, const Tensor& b, Tensor& y) const = 0;
  virtual void scale(Tensor& y, float s) const = 0;

  // Inverted dropout of x [rows, cols] (dropout_mask.h): y = x * keep / (1 - p), where x's rows
  // are rows first_row .. of the tensor the site's mask covers (a row slice keeps that tensor's
  // mask). Linear in x, so the same call on a gradient is the backward. y may alias x.
  virtual void dropout(const Tensor& x, const DropoutSite& d, int64_t first_row,
                       Tensor& y) const = 0;
  // y += dropout(x) (rows of x from first_row of the mask, as dropout): a sublayer's output
  // into its residual stream, LoRA's dropped branch gradient into dx.
  virtual void dropout_add(const Tensor& x, const DropoutSite& d, int64_t first_row,
                           Tensor& y) const = 0;
  // res += dropout(branch), then y = LN(res) as layernorm_forward: a dropped sublayer output,
  // its residual sum and the norm after it (post-LN layers in training), in one pass where the
  // backend fuses them.
  virtual void dropout_add_layernorm_forward(const Tensor& branch, const DropoutSite& d,
                                             Tensor& res, const Tensor& w, const Tensor* b,
                                             float eps, Tensor& y, Tensor& mean,
                                             Tensor& rstd) const {
    dropout_add(branch, d, 0, res);
    layernorm_forward(res, w, b, eps, y, mean, rstd);
  }

  // LayerNorm over the last dim: y = xhat * w + b, xhat = (x - mean) * rstd; mean, rstd: [rows].
  // With `xhat`, also writes the normalized input in xhat's dtype. y is computed from the
  // unrounded xhat: norm_scale_shift(xhat) gives y again exactly for an fp32 xhat and within
  // one bf16 rounding for a bf16 one (rounding xhat before y would add a second rounding to
  // every norm output: measured, it doubled EmbeddingGemma's LoRA gradient error).
  virtual void layernorm_forward(const Tensor& x, const Tensor& w, const Tensor* b, float eps,
                                 Tensor& y, Tensor& mean, Tensor& rstd,
                                 Tensor* xhat = nullptr) const = 0;
  // dx overwritten; dw, db accumulated (null when frozen).
  virtual void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                                  const Tensor& mean, const Tensor& rstd, Tensor& dx, Tensor* dw,
                                  Tensor* db) const = 0;
  // layernorm_backward that also writes dropped = dropout(dx): the gradient reaching a dropped
  // sublayer output whose residual sum the norm read (see dropout_add_layernorm_forward).
  virtual void layernorm_backward_dropout(const Tensor& dy, const Tensor& x, const Tensor& w,
                                          const Tensor& mean, const Tensor& rstd, Tensor& dx,
                                          Tensor* dw, Tensor* db, const DropoutSite& d,
                                          Tensor& dropped) const {
    layernorm_backward(dy, x, w, mean, rstd, dx, dw, db);
    dropout(dx, d, 0, dropped);
  }
  // The same from the normalized input xhat instead of x and mean: training keeps xhat (bf16)
  // rather than an fp32 residual-stream input, half the bytes. With `accumulate`, dx += the
  // gradient instead (dx: the gradient of the residual stream that the norm's input joined, so
  // the sum needs no pass of its own); with `dx_copy`, dx's new value is also written there in
  // dx_copy's dtype (the bf16 operand of the products that read the sum next).
  virtual void layernorm_backward_normalized(const Tensor& dy, const Tensor& xhat, const Tensor& w,
                                             const Tensor& rstd, Tensor& dx, Tensor* dw, Tensor* db,
                                             bool accumulate = false,
                                             Tensor* dx_copy = nullptr) const = 0;

  // RMSNorm over the last dim of w's size C (x viewed as [numel / C, C], so per-head norms of
  // q [T, H*D] use w of size D): y = xhat * (w + offset), xhat = x * rstd,
  // rstd = 1 / sqrt(mean(x^2) + eps); offset = 1 gives Gemma's (1 + w) form. rstd: [rows].
  // `xhat` as for layernorm_forward. With `accumulate`, y += the output instead (y: a residual
  // stream that a post norm's output joins, so the sum needs no pass of its own).
  virtual void rmsnorm_forward(const Tensor& x, const Tensor& w, float offset, float eps, Tensor& y,
                               Tensor& rstd, Tensor* xhat = nullptr,
                               bool accumulate = false) const = 0;
  // dx = rstd (g - xhat mean(g xhat)) with g = dy (w + offset); dw += sum dy xhat.
  virtual void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, float offset,
                                const Tensor& rstd, Tensor& dx, Tensor* dw) const = 0;
  // From xhat, with `accumulate` and `dx_copy` as for layernorm_backward_normalized.
  virtual void rmsnorm_backward_normalized(const Tensor& dy, const Tensor& xhat, const Tensor& w,
                                           float offset, const Tensor& rstd, Tensor& dx, Tensor* dw,
                                           bool accumulate = false,
                                           Tensor* dx_copy = nullptr) const = 0;
  // A post norm adding into the residual stream and the norm that reads the stream next
  // (Gemma3's sandwich norms: post-attention then pre-feedforward, post-feedforward then the
  // next layer's input norm or the final norm): sum += N1(x) as rmsnorm_forward with
  // `accumulate`, then y = N2(sum) as rmsnorm_forward, in one pass where the backend fuses them.
  virtual void rmsnorm_add_rmsnorm_forward(const Tensor& x, const Tensor& w1, Tensor& sum,
                                           Tensor& rstd1, Tensor* xhat1, const Tensor& w2,
                                           Tensor& y, Tensor& rstd2, Tensor* xhat2, float offset,
                                           float eps) const {
    rmsnorm_forward(x, w1, offset, eps, sum, rstd1, xhat1, true);
    rmsnorm_forward(sum, w2, offset, eps, y, rstd2, xhat2);
  }
  // Its backward: dsum += the gradient of N2's input (rmsnorm_backward_normalized with
  // `accumulate`), then dx1 = the gradient of N1's input at the new dsum; dw1, dw2 accumulate
  // (null when frozen).
  virtual void rmsnorm_add_rmsnorm_backward(const Tensor& dy2, const Tensor& xhat2,
                                            const Tensor& w2, const Tensor& rstd2, Tensor* dw2,
                                            Tensor& dsum, const Tensor& xhat1, const Tensor& w1,
                                            const Tensor& rstd1, Tensor* dw1, Tensor& dx1,
                                            float offset) const {
    rmsnorm_backward_normalized(dy2, xhat2, w2, offset, rstd2, dsum, dw2, true);
    rmsnorm_backward_normalized(dsum, xhat1, w1, offset, rstd1, dx1, dw1);
  }
  // y = xhat * (w + offset) + b over rows of w's size (b optional): a norm's output recomputed
  // from its saved normalized input.
  virtual void norm_scale_shift(const Tensor& xhat, const Tensor& w, float offset, const Tensor* b,
                                Tensor& y) const = 0;

  // Rotary position embedding, in place on x [T, heads * D], "rotate half" pairing (dims i and
  // i + D/2, as transformers' apply_rotary_pos_emb): with a = positions[t] * theta^(-2i/D),
  //   (x_i, x_{i+D/2}) -> (x_i cos a - x_{i+D/2} sin a, x_{i+D/2} cos a + x_i sin a).
  // inverse = true rotates by -a, which is the backward pass (the rotation is orthogonal).
  // rope_columns reads the heads * D columns of `src` from src_col and writes them rotated to
  // `dst` from dst_col (both 2-D with T rows; src == dst with equal columns is in place), so a
  // fused q|k|v projection is split and rotated in one pass.
  virtual void rope_columns(const Tensor& src, int64_t src_col, Tensor& dst, int64_t dst_col,
                            const Tensor& positions, int heads, int head_dim, double theta,
                            bool inverse) const = 0;
  void rope(Tensor& x, const Tensor& positions, int heads, int head_dim, double theta,
            bool inverse) const {
    Tensor x2 = x;
    x2.shape = {positions.numel(), x.numel() / std::max<int64_t>(positions.numel(), 1)};
    rope_columns(x2, 0, x2, 0, positions, heads, head_dim, theta, inverse);
  }

  // Per-head RMSNorm then RoPE (Qwen3's and Gemma3's q and k): y = rope(rmsnorm(x)) over
  // x, y [T, heads * D] with w [D], rstd [T * heads]; and its gradient (dy rotated back, then the
  // RMSNorm backward). The defaults compose the two ops; backends may fuse them.
  virtual void rmsnorm_rope_forward(const Tensor& x, const Tensor& w, float offset, float eps,
                                    const Tensor& positions, int heads, double theta, Tensor& y,
                                    Tensor& rstd) const {
    rmsnorm_forward(x, w, offset, eps, y, rstd);
    rope(y, positions, heads, static_cast<int>(w.numel()), theta, false);
  }
  virtual void rmsnorm_rope_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                                     float offset, const Tensor& rstd, const Tensor& positions,
                                     int heads, double theta, Tensor& dx, Tensor* dw) const {
    Tensor g = empty(dy.shape, dy.dtype);
    copy(g, dy);
    rope(g, positions, heads, static_cast<int>(w.numel()), theta, true);
    rmsnorm_backward(g, x, w, offset, rstd, dx, dw);
  }

  // Gated linear unit: y = act(gate) * up;  dgate = act'(gate) up dy, dup = act(gate) dy.
  virtual void glu_forward(Act act, const Tensor& gate, const Tensor& up, Tensor& y) const = 0;
  virtual void glu_backward(Act act, const Tensor& gate, const Tensor& up, const Tensor& dy,
                            Tensor& dgate, Tensor& dup) const = 0;
  // The same with gate and up packed side by side in one [T, 2F] tensor (gate columns first,
  // as ModernBERT's Wi writes them); the gradient comes back packed the same way.
  virtual void glu_packed_forward(Act act, const Tensor& gate_up, Tensor& y) const = 0;
  virtual void glu_packed_backward(Act act, const Tensor& gate_up, const Tensor& dy,
                                   Tensor& d_gate_up) const = 0;

  // dst[:, dst_col : dst_col + width] = src[:, src_col : src_col + width] (2-D, same rows).
  virtual void copy_columns(const Tensor& src, int64_t src_col, Tensor& dst, int64_t dst_col,
                            int64_t width) const = 0;

  // Elementwise activation y = f(x) (GELU of BERT is Act::GeluErf); dx = f'(x) * dy.
  virtual void act_forward(Act act, const Tensor& x, Tensor& y) const = 0;
  virtual void act_backward(Act act, const Tensor& x, const Tensor& dy, Tensor& dx) const = 0;

  // y[t, :] (+)= table[ids[t], :];  dtable[ids[t], :] += dy[t, :]
  virtual void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& y,
                                 bool accumulate) const = 0;
  virtual void embedding_backward(const Tensor& ids, const Tensor& dy, Tensor& dtable) const = 0;

  virtual void attention_forward(const AttentionArgs& a, const Tensor& q, const Tensor& k,
                                 const Tensor& v, Tensor& out, Tensor& lse) const = 0;
  // dq, dk, dv overwritten; d_rel_bias accumulated when non-null.
  virtual void attention_backward(const AttentionArgs& a, const Tensor& q, const Tensor& k,
                                  const Tensor& v, const Tensor& out, const Tensor& lse,
                                  const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv,
                                  Tensor* d_rel_bias) const = 0;

  // Pooling of each sequence's token rows into one row of out [B, C]. `skip[b]` leading tokens
  // of sequence b are excluded (prompt tokens when include_prompt is false).
  // argmax: [B, C] I32 (Max mode only) remembers the chosen row for backward.
  virtual void pool_forward(PoolMode mode, const Tensor& x, const std::vector<int32_t>& cu_seqlens,
                            const std::vector<int32_t>& skip, Tensor& out,
                            Tensor* argmax) const = 0;
  // dx overwritten (rows not pooled get zero).
  virtual void pool_backward(PoolMode mode, const Tensor& dout,
                             const std::vector<int32_t>& cu_seqlens,
                             const std::vector<int32_t>& skip, const Tensor* argmax,
                             Tensor& dx) const = 0;

  // Decoupled-weight-decay Adam (torch.optim.AdamW), bias-corrected, step >= 1:
  //   p -= lr wd p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
  //   p -= (lr / (1 - b1^step)) m / (sqrt(v) / sqrt(1 - b2^step) + eps)
  virtual void adamw_step(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, float lr, float beta1,
                          float beta2, float eps, float weight_decay, int64_t step) const = 0;
  // sum of squares of all elements (for the global gradient norm)
  virtual double sum_squares(const Tensor& t) const = 0;

  // The optimizer step over all trainable tensors at once. These defaults loop over the
  // per-tensor ops; the CUDA backend overrides them with multi-tensor kernels (one launch per
  // group of tensors instead of one per tensor, and one device->host copy for the norm).
  struct AdamWSlot {
    Tensor *p, *g, *m, *v;  // parameter, gradient, Adam moments: fp32, one shape
  };
  // Clipping by global norm (torch.nn.utils.clip_grad_norm_): every gradient is multiplied by
  // c = max_norm / (sqrt(sum_sq) + 1e-6) when c < 1, before the update. sum_sq is
  // sum_squares_all_dev's [1] F64 tensor, read where it lives (the CUDA kernel reads it, so the
  // host never waits for the norm); c is rounded to fp32 and multiplies each fp32 gradient, as
  // scale(g, c) would.
  struct GradClip {
    const Tensor* sum_sq;
    double max_norm;
  };
  static float clip_coefficient(double sum_sq, double max_norm) {
    const double c = max_norm / (std::sqrt(sum_sq) + 1e-6);
    return c < 1 ? static_cast<float>(c) : 1.0f;
  }
  // adamw_step on every slot (gradients clipped first when `clip` is given), then (zero_grads)
  // every gradient set to 0.
  virtual void adamw_step_all(const std::vector<AdamWSlot>& slots, float lr, float beta1,
                              float beta2, float eps, float weight_decay, int64_t step,
                              bool zero_grads, const GradClip* clip = nullptr) const {
    if (clip) {
      const float c = clip_coefficient(*static_cast<const double*>(download(*clip->sum_sq).data),
                                       clip->max_norm);
      if (c < 1)
        for (const AdamWSlot& s : slots) scale(*s.g, c);
    }
    for (const AdamWSlot& s : slots) {
      adamw_step(*s.p, *s.g, *s.m, *s.v, lr, beta1, beta2, eps, weight_decay, step);
      if (zero_grads) fill(*s.g, 0.0f);
    }
  }
  // The sum of sum_squares over the tensors.
  virtual double sum_squares_all(const std::vector<const Tensor*>& ts) const {
    double s = 0;
    for (const Tensor* t : ts) s += sum_squares(*t);
    return s;
  }
  // sum_squares_all as a [1] F64 tensor on the backend, not read back (for GradClip and a
  // download_async of the norm).
  virtual Tensor sum_squares_all_dev(const std::vector<const Tensor*>& ts) const {
    Tensor h = cpu_empty({1}, DType::F64);
    *static_cast<double*>(h.data) = sum_squares_all(ts);
    return upload(h);
  }
  // fill(t, 0) on each tensor.
  virtual void zero_all(const std::vector<Tensor*>& ts) const {
    for (Tensor* t : ts) fill(*t, 0.0f);
  }
  // copy(*dst, *src) for every pair (a conversion where their dtypes differ), times `scale`; the
  // CUDA backend converts fp32 -> bf16 in multi-tensor launches, into strided 2-D views too
  // (Tensor::pitch: a LoRA factor's columns beside its base weight, see linear.h).
  struct CopySlot {
    const Tensor* src;
    Tensor* dst;
    float scale = 1.0f;
  };
  virtual void copy_all(const std::vector<CopySlot>& slots) const {
    for (const CopySlot& s : slots) {
      copy(*s.dst, *s.src);
      if (s.scale != 1.0f) scale(*s.dst, s.scale);
    }
  }

  // Row-wise L2 normalisation y = x / max(|x|, 1e-12); norms: [rows].
  virtual void l2norm_forward(const Tensor& x, Tensor& y, Tensor& norms) const = 0;
  virtual void l2norm_backward(const Tensor& dy, const Tensor& y, const Tensor& norms,
                               Tensor& dx) const = 0;

  // Softmax cross-entropy of each row of logits [R, C] (C >= R, fp32) against its diagonal
  // column, the in-batch pairing of MultipleNegativesRankingLoss (row r's positive is column r):
  //   loss[r] = logsumexp_j logits[r, j] - logits[r, r]
  //   dlogits[r, j] = grad_scale * (softmax(logits[r, :])_j - [j == r])
  // loss: [R] fp32; dlogits [R, C] fp32, may be logits itself.
  virtual void diagonal_cross_entropy(const Tensor& logits, float grad_scale, Tensor& loss,
                                      Tensor& dlogits) const = 0;

  // Peak bytes of device memory in use (0 where not tracked), and waiting for queued work.
  virtual size_t peak_bytes() const { return 0; }
  // Starts a new peak measurement from the memory in use now.
  virtual void reset_peak_bytes() const {}
  virtual void synchronize() const {}
  // Marks the span a profiler started with capture off records (CUDA: cudaProfilerStart/Stop,
  // which `ncu --profile-from-start off` follows): the bench's timed steps, without set-up and
  // warm-up work.
  virtual void profiler_capture(bool /*on*/) const {}
  // Matrix products may time several library algorithms on their first calls and keep the
  // fastest (the CUDA backend's cuBLASLt products, gemm_lt.h). The chosen algorithm depends on
  // timings, so two runs can differ by a rounding; off by default, so that encoding is
  // reproducible, and switched on by training and the bench. Affects products of shapes not
  // yet seen.
  virtual void set_gemm_tuning(bool /*on*/) const {}
};

}  // namespace et
