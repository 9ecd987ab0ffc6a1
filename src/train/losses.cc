#include "train/losses.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace et {

namespace {

// Row-normalised copy in double (torch F.normalize: x / max(|x|, 1e-12)) and the norms.
std::vector<double> normalize_rows(const Tensor& x, std::vector<double>& norms) {
  const int64_t n = x.dim(0), d = x.dim(1);
  std::vector<double> out(static_cast<size_t>(n * d));
  norms.assign(static_cast<size_t>(n), 0);
  for (int64_t i = 0; i < n; ++i) {
    double s = 0;
    for (int64_t j = 0; j < d; ++j)
      s += static_cast<double>(x.f32()[i * d + j]) * x.f32()[i * d + j];
    norms[i] = std::sqrt(s);
    double den = std::max(norms[i], 1e-12);
    for (int64_t j = 0; j < d; ++j) out[i * d + j] = x.f32()[i * d + j] / den;
  }
  return out;
}

// Gradient through y = x / max(|x|, eps): dx = (dy - y (y . dy)) / |x|.
Tensor normalize_backward(const std::vector<double>& y, const std::vector<double>& norms,
                          const std::vector<double>& dy, int64_t n, int64_t d) {
  Tensor g = cpu_empty({n, d});
  for (int64_t i = 0; i < n; ++i) {
    double dot = 0;
    for (int64_t j = 0; j < d; ++j) dot += y[i * d + j] * dy[i * d + j];
    for (int64_t j = 0; j < d; ++j) {
      double v = norms[i] > 1e-12 ? (dy[i * d + j] - y[i * d + j] * dot) / norms[i]
                                  : dy[i * d + j] / 1e-12;
      g.f32()[i * d + j] = static_cast<float>(v);
    }
  }
  return g;
}

}  // namespace

LossOutput mnrl_loss(const std::vector<Tensor>& cols, double scale) {
  ET_CHECK(cols.size() >= 2, "MultipleNegativesRankingLoss needs anchor and positive columns");
  const int64_t B = cols[0].dim(0), d = cols[0].dim(1);
  for (const Tensor& c : cols)
    ET_CHECK(c.ndim() == 2 && c.dim(0) == B && c.dim(1) == d, "MNRL: column shape ",
             shape_str(c.shape), " differs from the anchors' ", shape_str(cols[0].shape));
  const int64_t M = B * static_cast<int64_t>(cols.size() - 1);
  std::vector<std::vector<double>> norms(cols.size());
  std::vector<std::vector<double>> unit(cols.size());
  for (size_t c = 0; c < cols.size(); ++c) unit[c] = normalize_rows(cols[c], norms[c]);
  auto cand = [&](int64_t j) { return &unit[1 + j / B][(j % B) * d]; };
  std::vector<double> ds(static_cast<size_t>(B * M));
  double loss = 0;
  for (int64_t i = 0; i < B; ++i) {
    const double* a = &unit[0][i * d];
    double mx = -1e300;
    for (int64_t j = 0; j < M; ++j) {
      const double* c = cand(j);
      double s = 0;
      for (int64_t k = 0; k < d; ++k) s += a[k] * c[k];
      ds[i * M + j] = s * scale;
      mx = std::max(mx, ds[i * M + j]);
    }
    double z = 0;
    for (int64_t j = 0; j < M; ++j) z += std::exp(ds[i * M + j] - mx);
    double lse = mx + std::log(z);
    loss += lse - ds[i * M + i];
    // dL/dS = (softmax - onehot) / B
    for (int64_t j = 0; j < M; ++j) ds[i * M + j] = (std::exp(ds[i * M + j] - lse) - (j == i)) / B;
  }
  LossOutput out;
  out.loss = loss / static_cast<double>(B);
  std::vector<std::vector<double>> du(cols.size(), std::vector<double>());
  for (size_t c = 0; c < cols.size(); ++c) du[c].assign(static_cast<size_t>(B * d), 0);
  for (int64_t i = 0; i < B; ++i) {
    for (int64_t j = 0; j < M; ++j) {
      double g = scale * ds[i * M + j];
      if (g == 0) continue;
      const double* c = cand(j);
      double* dc = &du[1 + j / B][(j % B) * d];
      for (int64_t k = 0; k < d; ++k) {
        du[0][i * d + k] += g * c[k];
        dc[k] += g * unit[0][i * d + k];
      }
    }
  }
  for (size_t c = 0; c < cols.size(); ++c)
    out.grads.push_back(normalize_backward(unit[c], norms[c], du[c], B, d));
  return out;
}

}  // namespace et
