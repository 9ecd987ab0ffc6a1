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

// Cross-entropy of scale * cos(query_i, cand_j) against label i, accumulated into the
// gradients of the unit vectors: returns the mean loss over queries and adds weight * dL/du.
static double ranking_ce(const std::vector<const double*>& queries,
                         const std::vector<const double*>& cands, int64_t d, double scale,
                         double weight, std::vector<double*>& dq, std::vector<double*>& dc) {
  const int64_t B = static_cast<int64_t>(queries.size()), M = static_cast<int64_t>(cands.size());
  std::vector<double> row(static_cast<size_t>(M));
  double loss = 0;
  for (int64_t i = 0; i < B; ++i) {
    double mx = -1e300;
    for (int64_t j = 0; j < M; ++j) {
      double s = 0;
      for (int64_t k = 0; k < d; ++k) s += queries[i][k] * cands[j][k];
      row[j] = s * scale;
      mx = std::max(mx, row[j]);
    }
    double z = 0;
    for (int64_t j = 0; j < M; ++j) z += std::exp(row[j] - mx);
    const double lse = mx + std::log(z);
    loss += lse - row[i];
    for (int64_t j = 0; j < M; ++j) {
      const double g =
          weight * scale * (std::exp(row[j] - lse) - (j == i)) / static_cast<double>(B);
      if (g == 0) continue;
      for (int64_t k = 0; k < d; ++k) {
        dq[i][k] += g * cands[j][k];
        dc[j][k] += g * queries[i][k];
      }
    }
  }
  return loss / static_cast<double>(B);
}

// Shared by the two MNRL variants: normalise, run the ranking terms, map gradients back.
static LossOutput mnrl_family(const std::vector<Tensor>& cols, double scale, bool symmetric) {
  ET_CHECK(cols.size() >= 2, "MultipleNegativesRankingLoss needs anchor and positive columns");
  const int64_t B = cols[0].dim(0), d = cols[0].dim(1);
  for (const Tensor& c : cols)
    ET_CHECK(c.ndim() == 2 && c.dim(0) == B && c.dim(1) == d, "MNRL: column shape ",
             shape_str(c.shape), " differs from the anchors' ", shape_str(cols[0].shape));
  std::vector<std::vector<double>> norms(cols.size()), unit(cols.size()), du(cols.size());
  for (size_t c = 0; c < cols.size(); ++c) {
    unit[c] = normalize_rows(cols[c], norms[c]);
    du[c].assign(static_cast<size_t>(B * d), 0.0);
  }
  std::vector<const double*> anchors, cands;
  std::vector<double*> d_anchors, d_cands;
  for (int64_t i = 0; i < B; ++i) {
    anchors.push_back(&unit[0][i * d]);
    d_anchors.push_back(&du[0][i * d]);
  }
  for (size_t c = 1; c < cols.size(); ++c)
    for (int64_t i = 0; i < B; ++i) {
      cands.push_back(&unit[c][i * d]);
      d_cands.push_back(&du[c][i * d]);
    }
  LossOutput out;
  const double w = symmetric ? 0.5 : 1.0;
  out.loss = w * ranking_ce(anchors, cands, d, scale, w, d_anchors, d_cands);
  if (symmetric) {
    std::vector<const double*> positives(cands.begin(), cands.begin() + B);
    std::vector<double*> d_positives(d_cands.begin(), d_cands.begin() + B);
    out.loss += w * ranking_ce(positives, anchors, d, scale, w, d_positives, d_anchors);
  }
  for (size_t c = 0; c < cols.size(); ++c)
    out.grads.push_back(normalize_backward(unit[c], norms[c], du[c], B, d));
  return out;
}

LossOutput mnrl_symmetric_loss(const std::vector<Tensor>& cols, double scale) {
  return mnrl_family(cols, scale, true);
}

LossKind parse_loss_kind(const std::string& name) {
  if (name == "mnrl" || name == "MultipleNegativesRankingLoss") return LossKind::MNRL;
  if (name == "mnrl_symmetric" || name == "MultipleNegativesSymmetricRankingLoss")
    return LossKind::MNRLSymmetric;
  fail("loss '", name, "' is not one of mnrl, mnrl_symmetric");
}

LossOutput compute_loss(const LossSpec& spec, const std::vector<Tensor>& cols) {
  auto base = [&](const std::vector<Tensor>& c) {
    return spec.kind == LossKind::MNRLSymmetric ? mnrl_symmetric_loss(c, spec.scale)
                                                : mnrl_loss(c, spec.scale);
  };
  if (spec.matryoshka_dims.empty()) return base(cols);
  const int64_t B = cols[0].dim(0), d = cols[0].dim(1);
  LossOutput out;
  for (const Tensor& c : cols) out.grads.push_back(cpu_zeros(c.shape));
  for (size_t i = 0; i < spec.matryoshka_dims.size(); ++i) {
    const int64_t dim = spec.matryoshka_dims[i];
    ET_CHECK(dim > 0 && dim <= d, "matryoshka dimension ", dim, " is outside 1..", d);
    const double w = i < spec.matryoshka_weights.size() ? spec.matryoshka_weights[i] : 1.0;
    std::vector<Tensor> cut;
    for (const Tensor& c : cols) {
      Tensor t = cpu_empty({B, dim});
      for (int64_t r = 0; r < B; ++r)
        for (int64_t k = 0; k < dim; ++k) t.f32()[r * dim + k] = c.f32()[r * d + k];
      cut.push_back(t);
    }
    LossOutput part = base(cut);
    out.loss += w * part.loss;
    for (size_t c = 0; c < cols.size(); ++c)
      for (int64_t r = 0; r < B; ++r)
        for (int64_t k = 0; k < dim; ++k)
          out.grads[c].f32()[r * d + k] += static_cast<float>(w * part.grads[c].f32()[r * dim + k]);
  }
  return out;
}

LossOutput mnrl_loss(const std::vector<Tensor>& cols, double scale) {
  return mnrl_family(cols, scale, false);
}

}  // namespace et
