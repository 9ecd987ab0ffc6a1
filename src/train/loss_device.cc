#include "train/loss_device.h"

#include "core/error.h"

namespace et {

// With unit rows u = x / |x|, anchors A = u[0:B], candidates C = u[B:n] (M rows):
//   S = scale A C^T [B, M];  L = w / B sum_i CE(S_i, i)
//   dS = w g / B (softmax(S) - I);  dA = scale dS C;  dC = scale dS^T A
// and, symmetric (w = 1/2 for both terms), with the positives P = C[0:B]:
//   S' = scale P A^T [B, B];  dP += scale dS' A;  dA += scale dS'^T P
// then dx = l2norm'(du). g is the step's gradient scale.
BackendLoss mnrl_on_backend(const Backend& be, const Tensor& emb, int64_t rows, double scale,
                            bool symmetric, double grad_scale) {
  ET_CHECK(emb.ndim() == 2, "MNRL: embeddings must be [texts, dim], got ", shape_str(emb.shape));
  const int64_t n = emb.dim(0), d = emb.dim(1), B = rows, M = n - rows;
  ET_CHECK(B > 0 && M >= B && M % B == 0, "MNRL: ", n,
           " embeddings are not anchors plus whole candidate columns of ", B, " rows");
  Tensor x = emb;
  if (x.dtype != DType::F32) {
    x = be.empty(emb.shape, DType::F32);
    be.copy(x, emb);
  }
  Tensor u = be.empty({n, d}, DType::F32), norms = be.empty({n}, DType::F32);
  be.l2norm_forward(x, u, norms);
  const Tensor a = u.rows(0, B), c = u.rows(B, n);
  const double w = symmetric ? 0.5 : 1.0;
  const float coef = static_cast<float>(w * grad_scale / static_cast<double>(B));
  const float sc = static_cast<float>(scale);
  BackendLoss out;
  out.row_weight = w / static_cast<double>(B);
  out.row_losses = be.empty({symmetric ? 2 * B : B}, DType::F32);
  Tensor s = be.empty({B, M}, DType::F32);
  be.matmul(a, false, c, true, s, sc, 0.0f);
  Tensor first = out.row_losses.rows(0, B);
  be.diagonal_cross_entropy(s, coef, first, s);  // s := dL/dS
  Tensor du = be.empty({n, d}, DType::F32);
  Tensor da = du.rows(0, B), dc = du.rows(B, n);
  be.matmul(s, false, c, false, da, sc, 0.0f);
  be.matmul(s, true, a, false, dc, sc, 0.0f);
  if (symmetric) {
    const Tensor p = c.rows(0, B);
    Tensor s2 = be.empty({B, B}, DType::F32);
    be.matmul(p, false, a, true, s2, sc, 0.0f);
    Tensor second = out.row_losses.rows(B, 2 * B);
    be.diagonal_cross_entropy(s2, coef, second, s2);
    Tensor dp = du.rows(B, 2 * B);
    be.matmul(s2, false, a, false, dp, sc, 1.0f);
    be.matmul(s2, true, p, false, da, sc, 1.0f);
  }
  out.d_emb = be.empty({n, d}, DType::F32);
  be.l2norm_backward(du, u, norms, out.d_emb);
  return out;
}

std::function<double()> backend_loss_value_async(const Backend& be, const BackendLoss& l) {
  return [read = be.download_async(l.row_losses), w = l.row_weight] {
    const Tensor h = read();
    double sum = 0;
    for (int64_t i = 0; i < h.numel(); ++i) sum += h.f32()[i];
    return w * sum;
  };
}

double backend_loss_value(const Backend& be, const BackendLoss& l) {
  return backend_loss_value_async(be, l)();
}

}  // namespace et
