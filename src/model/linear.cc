#include "model/linear.h"

#include <algorithm>
#include <utility>

#include "core/error.h"
#include "core/rng.h"

namespace et {

// y = beta * y + x w^T + b, w = W (or W's buffer with LoRA along K, x then the input with its
// spare columns). The bf16 bias copy serves bf16 outputs (as torch's bf16 addmm: the bias
// rounded to bf16, added to the fp32 accumulator); an fp32 output takes the fp32 bias.
static void product_with_bias(const Backend& be, const Linear& l, const Tensor& x2, const Tensor& w,
                              Tensor& y, float beta) {
  const Tensor* bias = nullptr;
  if (l.bias) bias = y.dtype == DType::BF16 ? &product_operand(*l.bias) : &l.bias->value;
  be.matmul(x2, false, w, true, y, 1.0f, beta, bias);
}

static void base_product(const Backend& be, const Linear& l, const Tensor& x2, Tensor& y,
                         float beta) {
  product_with_bias(be, l, x2, l.weight->value, y, beta);
}

static int64_t lora_rank(const Linear& l) {
  return l.lora_a ? l.lora_a->value.dim(0) : 0;
}

// Spare columns a row for LoRA along K: the rank rounded up to 8, so that rows stay 16 bytes
// apart (cuBLASLt's tensor-core algorithms need it), the columns past r zero in both operands.
// (Rounding up to 64, whole K steps of the product, measured slower: ModernBERT-base 512 x 64's
// gain went; bench/NOTES.md.)
static int64_t along_k_columns(int64_t r) {
  return (r + 7) / 8 * 8;
}

bool takes_rank_along_k(const Linear& l) {
  const int64_t r = lora_rank(l);
  return r > 0 && l.input_from_model && l.lora_dropout == 0.0f &&
         l.weight->value.dtype == DType::BF16 && l.weight->value.pitch == l.in + along_k_columns(r);
}

// W's buffer when the term rides along K, [out + c, in + c] bf16 with c = along_k_columns(r):
//   rows [0, out):        [ W | s B | 0 ]   (W: Param::value, s B: refresh_product_copies)
//   rows [out, out + r):  [ A | 0 ]         (A's bf16 copy, refresh_product_copies)
//   rows [out + r, ...):  0
// so that x [A; 0]^T writes xa and zeros into all c spare columns of the input at once.
// (A group's member's buffer has W's rows only: [out, in + C], see linear_group_forward.)
static Tensor weight_buffer(const Linear& l, int64_t rows) {
  Tensor w = l.weight->value;
  w.shape = {rows, w.pitch};
  w.pitch = 0;
  return w;
}
static Tensor weight_buffer(const Linear& l) {
  return weight_buffer(l, l.out + l.weight->value.pitch - l.in);
}

static bool frozen_f32_weight(const Linear& l) {
  const Param* p = l.weight;
  return !p->trainable && p->value.dtype == DType::F32 && !p->host_f32.defined();
}

// A group's spare columns for LoRA along K: C = sum of its members' ranks when every member has
// LoRA without dropout, a rank that is a multiple of 8 (the shares then start 16 bytes apart with
// no padding between them, and the stacked A of refresh_product_copies is [C, in] as it is) and
// an input the model makes, all of one width; else 0.
static int64_t group_spare_columns(const LinearGroup& group) {
  if (group.size() < 2) return 0;
  int64_t c = 0;
  for (const Linear* l : group) {
    const int64_t r = lora_rank(*l);
    if (r == 0 || r % 8 != 0 || !l->input_from_model || l->lora_dropout != 0.0f ||
        l->in != group[0]->in)
      return 0;
    c += r;
  }
  return c;
}

bool group_takes_rank_along_k(const LinearGroup& group) {
  const int64_t c = group_spare_columns(group);
  if (c == 0) return false;
  for (const Linear* l : group)
    if (l->weight->value.dtype != DType::BF16 || l->weight->value.pitch != l->in + c) return false;
  return true;
}

void store_frozen_weights_bf16(const Backend& be, const std::vector<const Linear*>& linears,
                               const std::vector<LinearGroup>& groups) {
  // [rows, cols] buffers, each holding its Linears' W one after another in its first rows and
  // `in` columns: a group along K (group_weight_rows' layout) or a Linear alone
  struct Slot {
    LinearGroup members;
    int64_t rows, cols;
  };
  std::vector<Slot> slots;
  std::vector<const Linear*> placed;
  auto planned = [&](const Linear* l) {
    return std::find(placed.begin(), placed.end(), l) != placed.end();
  };
  for (const LinearGroup& group : groups) {
    bool made_input = !group.empty();  // by the model, in group_input's buffer
    for (const Linear* l : group)
      made_input = made_input && l->input_from_model && frozen_f32_weight(*l) && !planned(l);
    if (!made_input) continue;
    const int64_t c = group_spare_columns(group);
    int64_t rows = c;
    for (const Linear* l : group) rows += l->out;
    if (c > 0)
      slots.push_back({group, rows, group[0]->in + c});
    else  // the members' plain copies
      for (const Linear* l : group) slots.push_back({{l}, l->out, l->in});
    placed.insert(placed.end(), group.begin(), group.end());
  }
  for (const Linear* l : linears) {
    if (!frozen_f32_weight(*l) || planned(l)) continue;
    const int64_t r = lora_rank(*l);
    const int64_t c =
        l->input_from_model && r > 0 && l->lora_dropout == 0.0f ? along_k_columns(r) : 0;
    slots.push_back({{l}, l->out + c, l->in + c});
    placed.push_back(l);
  }
  if (slots.empty()) return;
  // one buffer for all, each slot at a multiple of 64 elements (128 bytes): one block per
  // weight would be rounded up to the memory pool's granularity each (2 MiB: a wide layout of a
  // 2 MiB weight would take 4)
  auto aligned = [](int64_t n) { return (n + 63) / 64 * 64; };
  int64_t total = 0;
  for (const Slot& sl : slots) total += aligned(sl.rows * sl.cols);
  Tensor all = be.empty({total}, DType::BF16);
  be.fill(all, 0.0f);
  int64_t at = 0;
  for (const Slot& sl : slots) {
    Tensor buffer = all.rows(at, at + sl.rows * sl.cols).reshape({sl.rows, sl.cols});
    at += aligned(sl.rows * sl.cols);
    int64_t row0 = 0;
    for (const Linear* l : sl.members) {
      Param* p = l->weight;
      p->host_f32 = be.download(p->value);
      Tensor w_rows = buffer.rows(row0, row0 + l->out);
      row0 += l->out;
      if (sl.cols == l->in)
        be.copy(w_rows, p->value);
      else
        be.copy_columns(p->value, 0, w_rows, 0, l->in);
      p->value = w_rows.leading_cols(l->in);
    }
  }
}

// A group's weight buffer along K as one matrix [sum out + C, in] (rows in + C apart): the
// members' W one after another, then their A factors stacked (written by
// refresh_product_copies), zeros in the spare columns but for each member's s B:
//   [ W_1 | s B_1 |   0   ]
//   [ W_2 |   0   | s B_2 ]
//   [ A_1 |       0       ]
//   [ A_2 |       0       ]
// Undefined unless the group takes its LoRA terms along K (stored so by
// store_frozen_weights_bf16).
static Tensor group_weight_rows(const LinearGroup& group) {
  if (!group_takes_rank_along_k(group)) return Tensor{};
  const Tensor& w0 = group[0]->weight->value;
  const int64_t c = group_spare_columns(group), pitch = w0.pitch;
  int64_t rows = 0;
  for (const Linear* l : group) {
    const Tensor& w = l->weight->value;
    if (w.owner != w0.owner ||
        w.data != static_cast<const char*>(w0.data) + rows * pitch * dtype_size(w0.dtype))
      return Tensor{};
    rows += l->out;
  }
  Tensor all = w0;
  all.shape = {rows + c, group[0]->in};
  return all;
}

Tensor linear_input(const Backend& be, const Linear& l, int64_t n) {
  if (!takes_rank_along_k(l)) return be.empty({n, l.in}, be.act_dtype());
  return be.empty({n, l.in + along_k_columns(lora_rank(l))}, be.act_dtype()).leading_cols(l.in);
}

Tensor group_input(const Backend& be, const LinearGroup& group, int64_t n) {
  ET_CHECK(!group.empty(), "group_input: a group of no Linears");
  const int64_t in = group[0]->in;
  if (!group_takes_rank_along_k(group)) return be.empty({n, in}, be.act_dtype());
  return be.empty({n, in + group_spare_columns(group)}, be.act_dtype()).leading_cols(in);
}

// y = beta * y + [x | x A^T | 0] [W | s B | 0]^T + b (takes_rank_along_k; x2 from
// linear_input): x [A; 0]^T fills the input's spare columns, and xa is copied out of them,
// contiguous, for backward (lora_output_grad).
static void linear_along_k(const Backend& be, const Linear& l, const Tensor& x2, Tensor& y,
                           float beta, LinearSaved* saved) {
  const int64_t n = x2.dim(0), r = lora_rank(l), c = x2.pitch - l.in;
  const Tensor buffer = weight_buffer(l);
  Tensor x_wide = x2.pitch_rows();
  Tensor spare = x_wide.column_view(l.in, l.in + c);
  be.matmul(x2, false, buffer.rows(l.out, l.out + c).leading_cols(l.in), true, spare);
  Tensor xa = be.empty({n, r}, x2.dtype);
  be.copy_columns(x_wide, l.in, xa, 0, r);
  product_with_bias(be, l, x_wide, buffer.rows(0, l.out), y, beta);
  if (saved) {
    saved->x = saved->x_lora = x2;
    saved->xa = xa;
  }
}

// y = beta * y + x W^T + b + s (x_lora A^T) B^T, with the LoRA branch first: its rank-r
// product writes y (beta 0) or adds into it, and the base product then adds its own output and
// the bias in its epilogue (beta 1). The other order (base first, LoRA adding into its output)
// reads and rewrites all of y in a rank-r product, which cuBLAS runs far below bandwidth for
// wide outputs (H100, 32768 x 3072, rank 16: 214 us with beta 1 against 76 us with beta 0, while
// the base product's epilogue read costs 32 us; bench/NOTES.md).
// With `term`, the rank-r product is left out and described there instead (LoraTerm).
static void linear_into(const Backend& be, const Linear& l, const Tensor& x2, Tensor& y, float beta,
                        LinearSaved* saved, Rng* rng, LoraTerm* term = nullptr) {
  const int64_t n = x2.dim(0);
  if (!term && x2.pitch != 0 && x2.pitch == l.weight->value.pitch && takes_rank_along_k(l)) {
    linear_along_k(be, l, x2, y, beta, saved);
    return;
  }
  if (saved) saved->x = x2;
  if (l.lora_a) {
    // LoRA dropout (PEFT's lora_dropout on the branch's input): a mask drawn on the device from
    // one seed of the RNG, regenerated in backward
    Tensor xl = x2;
    DropoutSite mask;
    if (rng && l.lora_dropout > 0) {
      mask = {l.lora_dropout, rng->next_u64()};
      xl = be.empty(x2.shape, x2.dtype);
      be.dropout(x2, mask, 0, xl);
    }
    const int64_t r = l.lora_a->value.dim(0);
    Tensor xa = be.empty({n, r}, x2.dtype);
    be.matmul(xl, false, product_operand(*l.lora_a), true, xa);
    if (term) {
      *term = {xa, &product_operand(*l.lora_b), l.lora_scaling};
    } else {
      be.matmul(xa, false, product_operand(*l.lora_b), true, y, l.lora_scaling, beta);
      beta = 1.0f;
    }
    if (saved) {
      saved->mask = mask;
      saved->x_lora = xl;
      saved->xa = xa;
    }
  }
  base_product(be, l, x2, y, beta);
}

static Tensor rows_of_input(const Linear& l, const Tensor& x) {
  ET_CHECK(x.dim(-1) == l.in, "linear ", l.weight->name, ": input has ", x.dim(-1),
           " features, expected ", l.in);
  if (x.ndim() == 2) return x;  // (a strided view from linear_input too)
  return x.reshape({x.numel() / l.in, l.in});
}

Tensor linear_forward(const Backend& be, const Linear& l, const Tensor& x, LinearSaved* saved,
                      Rng* rng, LoraTerm* term) {
  Tensor x2 = rows_of_input(l, x);
  Tensor y = be.empty({x2.dim(0), l.out}, x.dtype);
  if (term) *term = LoraTerm{};
  linear_into(be, l, x2, y, 0.0f, saved, rng, term);
  return y;
}

LoraTerm* lora_term_slot(const Backend& be, const Linear& l, Act act, LoraTerm& term) {
  term = LoraTerm{};
  return l.lora_a && be.fuses_lora_act(act, l.lora_a->value.dim(0)) ? &term : nullptr;
}

void act_forward_adding(const Backend& be, Act act, const LoraTerm& term, Tensor& pre, Tensor& y) {
  if (term.defined())
    be.lora_act_forward(act, pre, term.xr, *term.w, term.scale, y);
  else
    be.act_forward(act, pre, y);
}

void act_backward_adding(const Backend& be, Act act, const LoraTerm& term, const Tensor& x,
                         Tensor& dy, Tensor& dx) {
  if (term.defined())
    be.lora_act_backward(act, x, dy, term.xr, *term.w, dx);
  else
    be.act_backward(act, x, dy, dx);
}

void glu_backward_adding(const Backend& be, Act act, const LoraTerm& term, const Tensor& gate,
                         const Tensor* up, Tensor& dy, Tensor& dgate, Tensor* dup) {
  if (term.defined()) {
    be.lora_glu_backward(act, gate, up, dy, term.xr, *term.w, dgate, dup);
  } else if (up) {
    ET_CHECK(dup, "glu_backward_adding: a separate up needs its own gradient");
    be.glu_backward(act, gate, *up, dy, dgate, *dup);
  } else {
    be.glu_packed_backward(act, gate, dy, dgate);
  }
}

void linear_forward_add(const Backend& be, const Linear& l, const Tensor& x, Tensor& out,
                        LinearSaved* saved, Rng* rng) {
  Tensor x2 = rows_of_input(l, x);
  ET_CHECK(out.numel() == x2.dim(0) * l.out, "linear ", l.weight->name, ": the sum has ",
           out.numel(), " values, expected ", x2.dim(0) * l.out);
  ET_CHECK(out.data != x.data, "linear ", l.weight->name,
           ": the sum cannot be written into the input's own buffer");
  Tensor y = out.reshape({x2.dim(0), l.out});
  linear_into(be, l, x2, y, 1.0f, saved, rng);
}

Tensor residual_buffer(const Backend& be, Tensor x, DType dtype) {
  if (x.dtype == dtype && x.owner.use_count() == 1 && !x.pitch) return x;
  Tensor y = be.empty(x.shape, dtype);
  if (x.pitch) {  // a Linear's input with spare columns (linear_input)
    Tensor rows = x.pitch_rows();
    be.copy_columns(rows, 0, y, 0, x.dim(1));
  } else {
    be.copy(y, x);
  }
  return y;
}

void drop_saved_input(LinearSaved& s, const Tensor& in) {
  if (s.x_lora.data == in.data) s.x_lora = Tensor{};
  s.x = Tensor{};
}

LinearSaved saved_rows(const LinearSaved& s, int64_t b, int64_t e) {
  ET_CHECK(!s.xa_t.defined(), "saved_rows: a grouped forward's saved state has no token rows");
  LinearSaved r;
  for (auto [from, to] :
       {std::pair{&s.x, &r.x}, std::pair{&s.x_lora, &r.x_lora}, std::pair{&s.xa, &r.xa},
        std::pair{&s.x_pre, &r.x_pre}, std::pair{&s.x_up, &r.x_up}})
    if (from->defined()) *to = from->rows(b, e);
  r.x_packed = s.x_packed;
  r.x_act = s.x_act;
  r.x_lora_scale = s.x_lora_scale;
  r.x_lora_offset = s.x_lora_offset;
  r.mask = s.mask;
  r.mask_row0 = s.mask_row0 + b;
  return r;
}

LinearSaved with_saved_input(LinearSaved s, const Tensor& in) {
  s.x = in;
  if (!s.x_lora.defined()) s.x_lora = in;
  return s;
}

LinearSaved with_normalized_input(LinearSaved s, const Tensor& xhat, const Tensor& w,
                                  float offset) {
  if (!s.x_lora.defined()) {
    s.x_lora = xhat;
    s.x_lora_scale = w;
    s.x_lora_offset = offset;
  }
  return s;
}

// d [r, in] = dxa^T x_lora as A's gradient needs it: for a normalized input (x_lora = xhat),
// scaled per column by w + offset (with_normalized_input).
static void lora_input_scale(const Backend& be, const LinearSaved& s, Tensor& d) {
  if (s.x_lora_scale.defined()) be.norm_scale_shift(d, s.x_lora_scale, s.x_lora_offset, nullptr, d);
}

LinearSaved with_activation_input(LinearSaved s, Act act, const Tensor& pre, const Tensor& up,
                                  bool packed) {
  s.x_pre = pre;
  s.x_up = up;
  s.x_packed = packed;
  s.x_act = act;
  return s;
}

// The stacked A [sum r, in] of a group: a view over its members' bf16 copies when they lie one
// after another in one buffer (as refresh_product_copies lays them out), else undefined.
static Tensor stacked_lora_a(const LinearGroup& group) {
  int64_t rows = 0;
  size_t bytes = 0;
  const Tensor* first = nullptr;
  for (const Linear* l : group) {
    if (!l->lora_a || !l->lora_a->value_bf16.defined()) return Tensor{};
    const Tensor& a = l->lora_a->value_bf16;
    if (!first) first = &a;
    if (a.owner != first->owner || a.data != static_cast<const char*>(first->data) + bytes ||
        a.dim(1) != first->dim(1))
      return Tensor{};
    rows += a.dim(0);
    bytes += a.nbytes();
  }
  if (!first) return Tensor{};
  Tensor stacked = *first;
  stacked.shape = {rows, first->dim(1)};
  return stacked;
}

void refresh_product_copies(const Backend& be, const std::vector<const Linear*>& linears,
                            const std::vector<LinearGroup>& groups) {
  if (be.act_dtype() != DType::BF16 || be.device() == Device::CPU) return;
  for (const LinearGroup& group : groups) {
    bool stackable = group.size() > 1;
    for (const Linear* l : group)
      stackable = stackable && l->lora_a && l->lora_a->value.dtype == DType::F32 &&
                  l->lora_a->value.dim(1) == group[0]->in && l->in == group[0]->in;
    if (!stackable || stacked_lora_a(group).defined()) continue;
    int64_t rows = 0;
    for (const Linear* l : group) rows += l->lora_a->value.dim(0);
    Tensor stacked = be.empty({rows, group[0]->in}, DType::BF16);
    rows = 0;
    for (const Linear* l : group) {
      const int64_t r = l->lora_a->value.dim(0);
      l->lora_a->value_bf16 = stacked.rows(rows, rows + r);
      rows += r;
    }
  }
  std::vector<Backend::CopySlot> slots;
  std::vector<Tensor> beside_w;  // s B (and A) in W's buffer where the term rides along K
  size_t members = 0;
  for (const LinearGroup& group : groups) members += group.size();
  beside_w.reserve(2 * (linears.size() + members));  // (slots point into it: no reallocation)
  // along K: s B at the member's share of the spare columns, A in the group's rows after W's
  // (group_weight_rows)
  for (const LinearGroup& group : groups) {
    if (!group_takes_rank_along_k(group)) continue;
    const Tensor all = group_weight_rows(group);
    int64_t c0 = 0, a0 = all.defined() ? all.dim(0) - group_spare_columns(group) : 0;
    for (const Linear* l : group) {
      const int64_t r = lora_rank(*l);
      if (l->lora_b->value.dtype == DType::F32) {
        beside_w.push_back(weight_buffer(*l, l->out).column_view(l->in + c0, l->in + c0 + r));
        slots.push_back({&l->lora_b->value, &beside_w.back(), l->lora_scaling});
      }
      if (all.defined() && l->lora_a->value.dtype == DType::F32) {
        beside_w.push_back(all.rows(a0, a0 + r));
        slots.push_back({&l->lora_a->value, &beside_w.back()});
      }
      c0 += r;
      a0 += r;
    }
  }
  for (const Linear* l : linears) {
    for (Param* p : {l->lora_a, l->lora_b, l->bias}) {
      if (!p || p->value.dtype != DType::F32) continue;
      if (!p->value_bf16.defined() || p->value_bf16.shape != p->value.shape)
        p->value_bf16 = be.empty(p->value.shape, DType::BF16);
      slots.push_back({&p->value, &p->value_bf16});
    }
    if (takes_rank_along_k(*l) && l->lora_b->value.dtype == DType::F32 &&
        l->lora_a->value.dtype == DType::F32) {
      const int64_t r = lora_rank(*l);
      const Tensor buffer = weight_buffer(*l);
      beside_w.push_back(buffer.rows(0, l->out).column_view(l->in, l->in + r));
      slots.push_back({&l->lora_b->value, &beside_w.back(), l->lora_scaling});
      beside_w.push_back(buffer.rows(l->out, l->out + r).leading_cols(l->in));
      slots.push_back({&l->lora_a->value, &beside_w.back()});
    }
  }
  be.copy_all(slots);
}

// dy as [n, out] in the activation dtype, with the bias and weight gradients accumulated.
static Tensor output_gradient(const Backend& be, const Linear& l, const LinearSaved& s,
                              const Tensor& dy) {
  Tensor g = dy.reshape({dy.numel() / l.out, l.out});
  if (l.bias && l.bias->trainable) be.bias_backward(g, l.bias->grad);
  // A gradient arriving in fp32 (from the rotary encoders' fp32 residual stream) feeds up to
  // three products, each of which would convert it to the activation dtype on its own: convert
  // once (same values; on the CPU the activation dtype is fp32 and nothing happens).
  if (g.dtype != be.act_dtype()) {
    Tensor t = be.empty(g.shape, be.act_dtype());
    be.copy(t, g);
    g = t;
  }
  if (l.weight->trainable) {
    ET_CHECK(s.x.defined(), "linear ", l.weight->name,
             ": the weight's gradient needs the layer input, which was not kept");
    be.matmul(g, true, s.x, false, l.weight->grad, 1.0f, 1.0f);
  }
  return g;
}

// dW += dy^T x;  db += sum dy;  dB += s dy^T xa;  dA += (s dy B)^T x_lora;
// dx = dy W + (s dy B) A  (times the dropout mask on the LoRA branch).
// Every read of the saved input comes before dx is first written, so dx may share the saved
// input's buffer (a layer that recomputed the input hands its buffer back as dx).
void linear_backward(const Backend& be, const Linear& l, const LinearSaved& s, const Tensor& dy,
                     Tensor* dx, bool accumulate, LoraTerm* term) {
  if (term) *term = LoraTerm{};
  const int64_t n = dy.numel() / l.out;
  const Tensor g = output_gradient(be, l, s, dy);
  Tensor dxa;
  if (l.lora_a) {
    const int64_t r = l.lora_a->value.dim(0);
    // in the products' dtype, as g (an fp32 dy, from the rotary encoders' residual stream, would
    // otherwise keep the rank-r products off the fused kernels)
    dxa = be.empty({n, r}, g.dtype);
    const bool xa_t = s.xa_t.defined();
    be.lora_output_grad(g, product_operand(*l.lora_b), xa_t ? s.xa_t : s.xa, xa_t, l.lora_scaling,
                        dxa, false, l.lora_b->trainable ? &l.lora_b->grad : nullptr);
    if (l.lora_a->trainable) {
      ET_CHECK(s.x_lora.defined() || s.x_pre.defined(), "linear ", l.weight->name,
               ": LoRA's A gradient needs the layer input, which was not kept");
      if (s.x_lora.defined() && s.x_lora_scale.defined()) {
        Tensor d = be.empty(l.lora_a->grad.shape, DType::F32);
        be.matmul(dxa, true, s.x_lora, false, d);
        lora_input_scale(be, s, d);
        be.add(l.lora_a->grad, d, l.lora_a->grad);
      } else if (s.x_lora.defined()) {
        be.matmul(dxa, true, s.x_lora, false, l.lora_a->grad, 1.0f, 1.0f);
      } else {
        be.lora_act_input_grad(s.x_act, s.x_pre.reshape({n, s.x_packed ? 2 * l.in : l.in}),
                               s.x_up.defined() ? &s.x_up : nullptr, s.x_packed, dxa,
                               l.lora_a->grad);
      }
    }
  }
  if (!dx) return;
  Tensor d2 = dx->reshape({n, l.in});
  float beta = accumulate ? 1.0f : 0.0f;
  // the rank-r product first, for the reason given at linear_into (or left to the caller)
  if (l.lora_a && !s.mask.active() && term) {
    *term = {dxa, &product_operand(*l.lora_a), 1.0f};
  } else if (l.lora_a && !s.mask.active()) {
    be.matmul(dxa, false, product_operand(*l.lora_a), false, d2, 1.0f, beta);
    beta = 1.0f;
  }
  be.matmul(g, false, l.weight->value, false, d2, 1.0f, beta);
  if (l.lora_a && s.mask.active()) {
    Tensor t = be.empty({n, l.in}, dy.dtype);
    be.matmul(dxa, false, product_operand(*l.lora_a), false, t);
    be.dropout_add(t, s.mask, s.mask_row0, d2);
  }
}

// A [rows, n] matrix whose rows (one per rank, n = tokens) start 16 bytes apart at least: rows
// of n elements are kept at a pitch of n rounded up to 8, since cuBLASLt has no tensor-core
// algorithm for bf16 operands whose leading dimension is not a multiple of 8 elements (it falls
// back to a slow generic kernel; real batches' token counts are arbitrary).
static Tensor transposed_rank_buffer(const Backend& be, int64_t rows, int64_t n, DType dtype) {
  const int64_t pitch = (n + 7) / 8 * 8;
  return be.empty({rows, pitch}, dtype).leading_cols(n);
}

std::vector<Tensor> linear_group_forward(const Backend& be, const LinearGroup& group,
                                         const Tensor& x, const std::vector<LinearSaved*>& saved,
                                         Rng* rng) {
  ET_CHECK(saved.size() == group.size(), "linear_group_forward: ", group.size(), " Linears, ",
           saved.size(), " saved states");
  const Tensor a = stacked_lora_a(group);
  bool grouped = a.defined();
  for (const Linear* l : group) grouped = grouped && !(rng && l->lora_dropout > 0);
  std::vector<Tensor> ys;
  if (!grouped) {
    for (size_t i = 0; i < group.size(); ++i)
      ys.push_back(linear_forward(be, *group[i], x, saved[i], rng));
    return ys;
  }
  const Tensor x2 = rows_of_input(*group[0], x);
  const int64_t n = x2.dim(0), in = group[0]->in, c = a.dim(0);
  if (x2.pitch == in + c && group_takes_rank_along_k(group)) {
    // along K: [x | x A_stacked^T] [W_i | 0 | s B_i | 0]^T, one product per member (no rank-r
    // product writing y for the base product's epilogue to read back); xa copied out of the
    // spare columns, contiguous [n, C], for backward (each member's share a column range)
    Tensor x_wide = x2.pitch_rows();
    Tensor spare = x_wide.column_view(in, in + c);
    be.matmul(x2, false, a, true, spare);
    Tensor xa = be.empty({n, c}, x2.dtype);
    be.copy_columns(x_wide, in, xa, 0, c);
    int64_t c0 = 0;
    for (size_t i = 0; i < group.size(); ++i) {
      const Linear& l = *group[i];
      const int64_t r = lora_rank(l);
      Tensor y = be.empty({n, l.out}, x.dtype);
      product_with_bias(be, l, x_wide, weight_buffer(l, l.out), y, 0.0f);
      if (saved[i]) {
        saved[i]->x = saved[i]->x_lora = x2;
        saved[i]->xa = xa.column_view(c0, c0 + r);
      }
      c0 += r;
      ys.push_back(y);
    }
    return ys;
  }
  Tensor xa_t = transposed_rank_buffer(be, a.dim(0), n, x2.dtype);
  be.matmul(a, false, x2, true, xa_t);  // [sum r, n] = A_stacked x^T
  int64_t r0 = 0;
  for (size_t i = 0; i < group.size(); ++i) {
    const Linear& l = *group[i];
    const int64_t r = l.lora_a->value.dim(0);
    const Tensor share = xa_t.rows(r0, r0 + r);  // [r, n] = A x^T
    r0 += r;
    Tensor y = be.empty({n, l.out}, x.dtype);
    be.matmul(share, true, product_operand(*l.lora_b), true, y, l.lora_scaling, 0.0f);
    base_product(be, l, x2, y, 1.0f);  // rank-r product first: see linear_into
    if (saved[i]) {
      saved[i]->x = saved[i]->x_lora = x2;
      saved[i]->xa_t = share;
    }
    ys.push_back(y);
  }
  return ys;
}

Tensor group_output_grad(const Backend& be, const LinearGroup& group, int64_t n) {
  const Tensor w = group_weight_rows(group);
  if (!w.defined()) return Tensor{};
  return be.empty({n, w.dim(0)}, be.act_dtype());
}

// G [n, sum out + C] when dys are the members' column ranges of group_output_grad's buffer, in
// order, and nothing of theirs needs an output gradient of its own (no trained bias or W; the
// products' dtype); else undefined.
// (w: group_weight_rows(group).)
static Tensor packed_output_grad(const LinearGroup& group, const Tensor& w,
                                 const std::vector<Tensor>& dys, int64_t n) {
  if (!w.defined()) return Tensor{};
  const Tensor& d0 = dys[0];
  int64_t col = 0;
  for (size_t i = 0; i < group.size(); ++i) {
    const Linear& l = *group[i];
    const Tensor& d = dys[i];
    if (d.ndim() != 2 || d.dim(0) != n || d.dim(1) != l.out || d.pitch != w.dim(0) ||
        d.owner != d0.owner || d.dtype != d0.dtype ||
        d.data != static_cast<const char*>(d0.data) + col * dtype_size(d.dtype) ||
        (l.bias && l.bias->trainable) || l.weight->trainable)
      return Tensor{};
    col += l.out;
  }
  return d0.pitch_rows();
}

void linear_group_backward(const Backend& be, const LinearGroup& group,
                           const std::vector<LinearSaved>& saved, const std::vector<Tensor>& dys,
                           Tensor* dx, bool accumulate) {
  ET_CHECK(saved.size() == group.size() && dys.size() == group.size(),
           "linear_group_backward: ", group.size(), " Linears, ", saved.size(), " saved states, ",
           dys.size(), " gradients");
  // grouped: stacked A copies and no LoRA dropout (xa_t from a grouped forward, or xa: its shares
  // along K, or the members' own)
  const Tensor a = stacked_lora_a(group);
  bool grouped = a.defined();
  for (const LinearSaved& s : saved)
    grouped = grouped && (s.xa_t.defined() || (s.xa.defined() && !s.mask.active()));
  if (!grouped) {
    for (size_t i = 0; i < group.size(); ++i)
      linear_backward(be, *group[i], saved[i], dys[i], dx, accumulate || i > 0);
    return;
  }
  // LoRA's input, shared by the members (grouped: no LoRA dropout); a norm's xhat when the
  // members' inputs were handed over normalized (with_normalized_input)
  const Tensor& x = saved[0].x_lora;
  ET_CHECK(x.defined(), "linear group ", group[0]->weight->name,
           ": LoRA's A gradient needs the layer input, which was not kept");
  const int64_t n = x.dim(0), in = group[0]->in, c = a.dim(0);
  // packed (group_output_grad): dxa [n, C] goes to G's last columns, and dx is one product
  const Tensor w_all = group_weight_rows(group);
  const Tensor g_all = packed_output_grad(group, w_all, dys, n);
  Tensor dxa = g_all.defined() ? g_all.column_view(g_all.dim(1) - c, g_all.dim(1))
                               : transposed_rank_buffer(be, c, n, be.act_dtype());
  std::vector<Tensor> gs;
  int64_t r0 = 0;
  for (size_t i = 0; i < group.size(); ++i) {
    const Linear& l = *group[i];
    const int64_t r = l.lora_a->value.dim(0);
    gs.push_back(g_all.defined() ? dys[i] : output_gradient(be, l, saved[i], dys[i]));
    // [n, r] = s g B, or its transpose [r, n]
    Tensor share = g_all.defined() ? dxa.column_view(r0, r0 + r) : dxa.rows(r0, r0 + r);
    r0 += r;
    const bool xa_t = saved[i].xa_t.defined();
    be.lora_output_grad(gs[i], product_operand(*l.lora_b), xa_t ? saved[i].xa_t : saved[i].xa, xa_t,
                        l.lora_scaling, share, !g_all.defined(),
                        l.lora_b->trainable ? &l.lora_b->grad : nullptr);
  }
  // dA_stacked = dxa^T x [sum r, in], then each member's rows into its own gradient; like
  // linear_backward, every read of the saved input comes before dx is written
  Tensor da = be.empty({c, in}, DType::F32);
  be.matmul(dxa, g_all.defined(), x, false, da);
  lora_input_scale(be, saved[0], da);
  r0 = 0;
  for (const Linear* l : group) {
    const int64_t r = l->lora_a->value.dim(0);
    if (l->lora_a->trainable) be.add(l->lora_a->grad, da.rows(r0, r0 + r), l->lora_a->grad);
    r0 += r;
  }
  if (!dx) return;
  Tensor d2 = dx->reshape({n, in});
  const float beta = accumulate ? 1.0f : 0.0f;
  if (g_all.defined()) {  // [g_1 | g_2 | ... | dxa] [W_1; W_2; ...; A]
    be.matmul(g_all, false, w_all, false, d2, 1.0f, beta);
    return;
  }
  be.matmul(dxa, true, a, false, d2, 1.0f, beta);
  for (size_t i = 0; i < group.size(); ++i)
    be.matmul(gs[i], false, group[i]->weight->value, false, d2, 1.0f, 1.0f);
}

}  // namespace et
