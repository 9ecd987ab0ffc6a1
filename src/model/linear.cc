#include "model/linear.h"

#include <utility>

#include "core/error.h"
#include "core/rng.h"

namespace et {

// y = beta * y + x W^T + b + s (x_lora A^T) B^T, with the LoRA branch first: its rank-r
// product writes y (beta 0) or adds into it, and the base product then adds its own output and
// the bias in its epilogue (beta 1). The other order (base first, LoRA adding into its output)
// reads and rewrites all of y in a rank-r product, which cuBLAS runs far below bandwidth for
// wide outputs (H100, 32768 x 3072, rank 16: 214 us with beta 1 against 76 us with beta 0, while
// the base product's epilogue read costs 32 us; bench/NOTES.md).
static void linear_into(const Backend& be, const Linear& l, const Tensor& x2, Tensor& y, float beta,
                        LinearSaved* saved, Rng* rng) {
  const int64_t n = x2.dim(0);
  if (saved) saved->x = x2;
  if (l.lora_a) {
    Tensor xl = x2, mask;
    if (rng && l.lora_dropout > 0) {
      Tensor host = cpu_empty(x2.shape);
      float* m = host.f32();
      const float keep = 1.0f / (1.0f - l.lora_dropout);
      for (int64_t i = 0; i < host.numel(); ++i) m[i] = rng->uniform() < l.lora_dropout ? 0 : keep;
      mask = be.upload(host);
      xl = be.empty(x2.shape, x2.dtype);
      be.mul(x2, mask, xl);
    }
    const int64_t r = l.lora_a->value.dim(0);
    Tensor xa = be.empty({n, r}, x2.dtype);
    be.matmul(xl, false, product_operand(*l.lora_a), true, xa);
    be.matmul(xa, false, product_operand(*l.lora_b), true, y, l.lora_scaling, beta);
    beta = 1.0f;
    if (saved) {
      saved->mask = mask;
      saved->x_lora = xl;
      saved->xa = xa;
    }
  }
  // the bf16 bias copy serves bf16 outputs (as torch's bf16 addmm: the bias rounded to bf16,
  // added to the fp32 accumulator); an fp32 output takes the fp32 bias
  const Tensor* bias = nullptr;
  if (l.bias) bias = y.dtype == DType::BF16 ? &product_operand(*l.bias) : &l.bias->value;
  be.matmul(x2, false, l.weight->value, true, y, 1.0f, beta, bias);
}

static Tensor rows_of_input(const Linear& l, const Tensor& x) {
  ET_CHECK(x.dim(-1) == l.in, "linear ", l.weight->name, ": input has ", x.dim(-1),
           " features, expected ", l.in);
  return x.reshape({x.numel() / l.in, l.in});
}

Tensor linear_forward(const Backend& be, const Linear& l, const Tensor& x, LinearSaved* saved,
                      Rng* rng) {
  Tensor x2 = rows_of_input(l, x);
  Tensor y = be.empty({x2.dim(0), l.out}, x.dtype);
  linear_into(be, l, x2, y, 0.0f, saved, rng);
  return y;
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
  if (x.dtype == dtype && x.owner.use_count() == 1) return x;
  Tensor y = be.empty(x.shape, dtype);
  be.copy(y, x);
  return y;
}

void drop_saved_input(LinearSaved& s, const Tensor& in) {
  if (s.x_lora.data == in.data) s.x_lora = Tensor{};
  s.x = Tensor{};
}

LinearSaved saved_rows(const LinearSaved& s, int64_t b, int64_t e) {
  LinearSaved r;
  for (auto [from, to] : {std::pair{&s.x, &r.x}, std::pair{&s.mask, &r.mask},
                          std::pair{&s.x_lora, &r.x_lora}, std::pair{&s.xa, &r.xa}})
    if (from->defined()) *to = from->rows(b, e);
  return r;
}

LinearSaved with_saved_input(LinearSaved s, const Tensor& in) {
  s.x = in;
  if (!s.x_lora.defined()) s.x_lora = in;
  return s;
}

void refresh_product_copies(const Backend& be, const std::vector<const Linear*>& linears) {
  if (be.act_dtype() != DType::BF16 || be.device() == Device::CPU) return;
  std::vector<Backend::CopySlot> slots;
  for (const Linear* l : linears)
    for (Param* p : {l->lora_a, l->lora_b, l->bias}) {
      if (!p || p->value.dtype != DType::F32) continue;
      if (!p->value_bf16.defined() || p->value_bf16.shape != p->value.shape)
        p->value_bf16 = be.empty(p->value.shape, DType::BF16);
      slots.push_back({&p->value, &p->value_bf16});
    }
  be.copy_all(slots);
}

// dW += dy^T x;  db += sum dy;  dB += s dy^T xa;  dA += (s dy B)^T x_lora;
// dx = dy W + (s dy B) A  (times the dropout mask on the LoRA branch).
// Every read of the saved input comes before dx is first written, so dx may share the saved
// input's buffer (a layer that recomputed the input hands its buffer back as dx).
void linear_backward(const Backend& be, const Linear& l, const LinearSaved& s, const Tensor& dy,
                     Tensor* dx, bool accumulate) {
  const int64_t n = dy.numel() / l.out;
  Tensor g = dy.reshape({n, l.out});
  if (l.bias && l.bias->trainable) be.bias_backward(g, l.bias->grad);
  // A gradient arriving in fp32 (from the rotary encoders' fp32 residual stream) feeds up to
  // three products, each of which would convert it to the activation dtype on its own: convert
  // once (same values; on the CPU the activation dtype is fp32 and nothing happens).
  if (g.dtype != be.act_dtype()) {
    Tensor t = be.empty(g.shape, be.act_dtype());
    be.copy(t, g);
    g = t;
  }
  if (l.weight->trainable) be.matmul(g, true, s.x, false, l.weight->grad, 1.0f, 1.0f);
  Tensor dxa;
  if (l.lora_a) {
    const int64_t r = l.lora_a->value.dim(0);
    dxa = be.empty({n, r}, dy.dtype);
    be.matmul(g, false, product_operand(*l.lora_b), false, dxa, l.lora_scaling, 0.0f);
    if (l.lora_b->trainable) be.matmul(g, true, s.xa, false, l.lora_b->grad, l.lora_scaling, 1.0f);
    if (l.lora_a->trainable) be.matmul(dxa, true, s.x_lora, false, l.lora_a->grad, 1.0f, 1.0f);
  }
  if (!dx) return;
  Tensor d2 = dx->reshape({n, l.in});
  float beta = accumulate ? 1.0f : 0.0f;
  // the rank-r product first, for the reason given at linear_into
  if (l.lora_a && !s.mask.defined()) {
    be.matmul(dxa, false, product_operand(*l.lora_a), false, d2, 1.0f, beta);
    beta = 1.0f;
  }
  be.matmul(g, false, l.weight->value, false, d2, 1.0f, beta);
  if (l.lora_a && s.mask.defined()) {
    Tensor t = be.empty({n, l.in}, dy.dtype);
    be.matmul(dxa, false, product_operand(*l.lora_a), false, t);
    be.mul(t, s.mask, t);
    be.add(d2, t, d2);
  }
}

}  // namespace et
