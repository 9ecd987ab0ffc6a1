// The one Linear unit of every model: y = x W^T + b + s * dropout(x) A^T B^T.
//   W [out, in] frozen or trainable, b [out] optional,
//   LoRA (optional): A [r, in], B [out, r], s = lora_alpha / r (or / sqrt(r) with rsLoRA).
// The rest of the model does not know which training mode it is in.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/param.h"
#include "ops/backend.h"

namespace et {

struct Rng;

struct Linear {
  std::string name;  // module path, e.g. "encoder.layer.0.attention.self.query"
  Param* weight = nullptr;
  Param* bias = nullptr;
  Param* lora_a = nullptr;
  Param* lora_b = nullptr;
  float lora_scaling = 0.0f;
  float lora_dropout = 0.0f;
  int64_t in = 0, out = 0;
  // Set by the model where it makes this Linear's input itself, in a buffer from linear_input (a
  // GLU's output), or a group's (linear_group_forward) in one from group_input (a norm's output):
  // LoRA's rank-r term may then ride along K (takes_rank_along_k, group_takes_rank_along_k).
  bool input_from_model = false;
};

// Linears that read one input (a layer's q, k and v projections).
using LinearGroup = std::vector<const Linear*>;

// LoRA along K: y = [x | xa] [W | s B]^T, one product with K = in + r, instead of a rank-r
// product writing y (s xa B^T) and the base product's epilogue reading it back (or, into an fp32
// residual stream, reading and rewriting it): xa = x_lora A^T lands in spare columns after each
// row of the input, and s B in spare columns after each row of W (r rounded up to 8, zeros past
// r). Taken where the model makes the input (Linear::input_from_model: the rotary families'
// down_proj, whose output joins the fp32 residual stream; BERT's W2 measured slower) and W is a
// frozen bf16 copy laid out with the spare columns (store_frozen_weights_bf16), without LoRA
// dropout; the saved state is as without it.
bool takes_rank_along_k(const Linear& l);
// On a backend whose products run in bf16: every frozen fp32 W of `linears` and of `groups`
// (their members) as a bf16 copy, all in one device buffer; the fp32 values stay on the host
// (Param::host_f32). Laid out as LoRA along K asks:
//  - a group's members whose input the model makes: as group_takes_rank_along_k describes, or
//    plain where the group does not qualify;
//  - another Linear with LoRA (no dropout) whose input the model makes: W as the first `in`
//    columns and rows of an [out + c, in + c] buffer (c: r rounded up to 8) whose spare columns
//    hold s B and spare rows A (layout at weight_buffer, linear.cc);
//  - the rest: W's plain copy.
// s B and A are written by refresh_product_copies. Weights already stored are left as they are.
void store_frozen_weights_bf16(const Backend& be, const std::vector<const Linear*>& linears,
                               const std::vector<LinearGroup>& groups);
// The buffer a model makes l's input in: [n, in], rows in + c apart when l takes its LoRA term
// along K (the spare columns are the Linear's), else contiguous.
Tensor linear_input(const Backend& be, const Linear& l, int64_t n);

// What backward needs: the input, the LoRA dropout site (p = 0 without dropout; its mask is
// regenerated, dropout_mask.h, and these rows start at row mask_row0 of it), the input of the
// LoRA branch (dropout(x)) and x_lora A^T (a group's forward along K: a strided view, the
// member's columns of the group's), or (a group's other forward, see linear_group_forward) its
// transpose A x_lora^T [r, n] instead, a strided view (rows n rounded up to 8 apart).
// An input that is act(x_pre), or a GLU's act(x_pre) * x_up (x_packed: x_pre = [gate | up]), may
// be kept as those alone (with_activation_input); one that is a norm's output xhat (w + offset)
// as xhat in x_lora with w in x_lora_scale (with_normalized_input).
struct LinearSaved {
  Tensor x;
  DropoutSite mask;
  int64_t mask_row0 = 0;
  Tensor x_lora;
  Tensor xa;
  Tensor xa_t;
  Tensor x_pre;
  Tensor x_up;
  bool x_packed = false;
  Act x_act = Act::Identity;
  Tensor x_lora_scale;
  float x_lora_offset = 0;
};

// Not keeping the input: a layer that can recompute `in` cheaply (a norm's or an activation's
// output) drops it from the saved state after forward, and hands the recomputed tensor back
// before backward. Without LoRA dropout x_lora is the input itself and goes too; a dropout
// mask's masked copy stays.
void drop_saved_input(LinearSaved& s, const Tensor& in);
LinearSaved with_saved_input(LinearSaved s, const Tensor& in);
// Instead, for a Linear whose input is act(pre) (or act(pre) * up; packed: pre = [gate | up]) and
// whose W is frozen: its backward needs the input only for LoRA's A gradient, which
// Backend::lora_act_input_grad forms from pre directly (a kept LoRA dropout copy is used as
// before), so the input need not be recomputed.
LinearSaved with_activation_input(LinearSaved s, Act act, const Tensor& pre,
                                  const Tensor& up = Tensor{}, bool packed = false);
// Or, for a Linear whose input is a norm's output xhat (w + offset) (no bias) and whose W is
// frozen: its backward needs the input only for LoRA's A gradient, dA += dxa^T x =
// (dxa^T xhat) diag(w + offset), so xhat (the norm's saved normalized input) serves and the
// norm's output need not be recomputed. A kept LoRA dropout copy is used as before.
LinearSaved with_normalized_input(LinearSaved s, const Tensor& xhat, const Tensor& w, float offset);
// Rows [b, e) of what forward saved (every tensor of it is [n, ...]): the backward of those rows
// alone, for a layer that runs a backward in row chunks.
LinearSaved saved_rows(const LinearSaved& s, int64_t b, int64_t e);

// A LoRA Linear's rank-r term, left out of its products for the caller to add in a pass it makes
// over the same tensor anyway (the activation's: act_forward_adding, act_backward_adding):
//   forward:  y's term  scale (x_lora A^T) B^T:  xr = x_lora A^T [n, r], w = B [out, r]
//   backward: dx's term (s dy B) A:              xr = s dy B [n, r],     w = A [r, in], scale 1
// Undefined (w null) when the Linear has no LoRA or added the term itself.
struct LoraTerm {
  Tensor xr;
  const Tensor* w = nullptr;
  float scale = 1.0f;
  bool defined() const { return w != nullptr; }
};

// &term when the backend adds l's rank-r term inside act's pass (Backend::fuses_lora_act), for
// linear_forward / linear_backward to hand it out; null (the Linear adds it itself) otherwise.
LoraTerm* lora_term_slot(const Backend& be, const Linear& l, Act act, LoraTerm& term);

// y = linear(x) for x [n, in] -> [n, out]. With `saved`, keeps what backward needs;
// `rng` drives LoRA dropout (training only; null means no dropout). With `term`, a LoRA
// Linear's rank-r term is left to the caller (LoraTerm).
Tensor linear_forward(const Backend& be, const Linear& l, const Tensor& x, LinearSaved* saved,
                      Rng* rng, LoraTerm* term = nullptr);
// y = act(pre + the term), pre updated to include it (the term's Linear output before an
// activation: Backend::lora_act_forward); act_forward without a term.
void act_forward_adding(const Backend& be, Act act, const LoraTerm& term, Tensor& pre, Tensor& y);
// dx = (dy + the term) act'(x), dy updated to include it (the input gradient of a Linear whose
// input is act(x): Backend::lora_act_backward); act_backward without a term. dx may be dy.
void act_backward_adding(const Backend& be, Act act, const LoraTerm& term, const Tensor& x,
                         Tensor& dy, Tensor& dx);
// The same for a GLU's backward (Backend::lora_glu_backward; up null: gate and dgate packed
// [gate | up]); glu_backward (glu_packed_backward) without a term.
void glu_backward_adding(const Backend& be, Act act, const LoraTerm& term, const Tensor& gate,
                         const Tensor* up, Tensor& dy, Tensor& dgate, Tensor* dup);
// out += linear(x), out [n, out] (a residual stream, bf16 or fp32): the sum is made in the
// products' epilogues instead of by a separate pass over both tensors.
void linear_forward_add(const Backend& be, const Linear& l, const Tensor& x, Tensor& out,
                        LinearSaved* saved, Rng* rng);
// A residual stream's buffer that linear_forward_add may sum into: x itself when it is already
// in `dtype`, contiguous and no one else holds it (a layer's handed-over input, an earlier sum),
// else a copy.
Tensor residual_buffer(const Backend& be, Tensor x, DType dtype);

// LoRA along K for a group whose input the model makes (every member's input_from_model): the
// members share C spare columns after each input row, [x | xa_1 | xa_2 | ...] with
// xa_i = x A_i^T, C = sum r_i; member i's W is the first `in` columns of an [out_i, in + C]
// buffer [W_i | 0 | s B_i | 0], s B_i at columns in + sum_{j<i} r_j (refresh_product_copies).
// Taken when every member has LoRA without dropout, a rank that is a multiple of 8 and a frozen
// bf16 W in that layout (store_frozen_weights_bf16).
bool group_takes_rank_along_k(const LinearGroup& group);
// The buffer a model makes a group's input in: [n, in], rows in + C apart when the group takes
// its LoRA terms along K, else contiguous.
Tensor group_input(const Backend& be, const LinearGroup& group, int64_t n);

// Keeps Param::value_bf16 of every LoRA factor and bias of `linears` equal to its fp32 value on a
// backend whose products run in bf16 (one multi-tensor conversion instead of one per product:
// four per LoRA Linear and step, and the bias); nothing elsewhere. The A factors of each group
// get their copies in one buffer, stacked [sum r, in], for linear_group_forward. The encoder
// forward calls it first, so the copies are fresh for that forward and its backward.
void refresh_product_copies(const Backend& be, const std::vector<const Linear*>& linears,
                            const std::vector<LinearGroup>& groups);

// linear_forward of every member of a group on the one input x. Where every member has LoRA
// without dropout and bf16 product copies stacked by refresh_product_copies, the down-projections
// run as one product over the stacked A, reading x once instead of once per member: along K
// when x is group_input's buffer and the group takes that form (x A^T [n, C] into the spare
// columns, then one product per member, without the rank-r products), else A x^T [sum r, n]
// (transposed so that each member's share is a row range) and each member's rank-r product
// writing y before its base product adds into it. Otherwise each member runs alone.
// saved[i] may be null (no backward).
std::vector<Tensor> linear_group_forward(const Backend& be, const LinearGroup& group,
                                         const Tensor& x, const std::vector<LinearSaved*>& saved,
                                         Rng* rng);
// For a group that takes its LoRA terms along K: a buffer G [n, sum out + C] in the products'
// dtype whose column ranges [o_i, o_i + out_i) (o_i = out_1 + ... + out_{i-1}) the caller
// writes the members' output gradients into, for linear_group_backward; undefined for other
// groups (the caller makes its gradients as it likes).
Tensor group_output_grad(const Backend& be, const LinearGroup& group, int64_t n);
// linear_backward of every member with dx = sum_i d(x)_i (written, or added to when
// `accumulate`). After a grouped forward the stacked dA and the rank-r part of dx are one product
// each: dA = (s B^T dy^T)_stacked x, dx = (s dy B)_stacked A_stacked. With dys in
// group_output_grad's buffer G, (s dy B)_stacked goes to its last C columns and dx is one
// product: dx = G [W_1; ...; W_k; A_stacked] (K = sum out + C), instead of one per member, each
// reading and rewriting dx.
void linear_group_backward(const Backend& be, const LinearGroup& group,
                           const std::vector<LinearSaved>& saved, const std::vector<Tensor>& dys,
                           Tensor* dx, bool accumulate);
// Accumulates gradients of trainable W, b, A, B; writes (or adds to, when `accumulate`) dx.
// dx may be the buffer of the saved input (s.x / s.x_lora): it is read before dx is written.
// With `term`, dx's rank-r term is left to the caller (LoraTerm; not with LoRA dropout, whose
// mask applies to that term: the Linear adds it itself then).
void linear_backward(const Backend& be, const Linear& l, const LinearSaved& s, const Tensor& dy,
                     Tensor* dx, bool accumulate, LoraTerm* term = nullptr);

}  // namespace et
