#include "train/losses.h"

#include <cblas.h>

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

// Cross-entropy of scale * (Q C^T)[i, :] against label i for unit rows Q [nq, d], C [nc, d]
// (row-major doubles); adds weight * dL/dQ and weight * dL/dC, returns the mean loss.
// The products run through BLAS: batches of thousands of pairs (GradCache) stay cheap.
static double ranking_ce(const double* q, int64_t nq, const double* c, int64_t nc, int64_t d,
                         double scale, double weight, double* dq, double* dc) {
  std::vector<double> s(static_cast<size_t>(nq * nc));
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(nq), static_cast<int>(nc),
              static_cast<int>(d), scale, q, static_cast<int>(d), c, static_cast<int>(d), 0.0,
              s.data(), static_cast<int>(nc));
  double loss = 0;
  for (int64_t i = 0; i < nq; ++i) {
    double* row = s.data() + i * nc;
    double mx = -1e300;
    for (int64_t j = 0; j < nc; ++j) mx = std::max(mx, row[j]);
    double z = 0;
    for (int64_t j = 0; j < nc; ++j) z += std::exp(row[j] - mx);
    const double lse = mx + std::log(z);
    loss += lse - row[i];
    // dL/dS = (softmax - onehot) / nq, times the chain factor of S = scale * Q C^T
    for (int64_t j = 0; j < nc; ++j)
      row[j] = weight * scale * (std::exp(row[j] - lse) - (j == i ? 1.0 : 0.0)) /
               static_cast<double>(nq);
  }
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(nq), static_cast<int>(d),
              static_cast<int>(nc), 1.0, s.data(), static_cast<int>(nc), c, static_cast<int>(d),
              1.0, dq, static_cast<int>(d));
  cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<int>(nc), static_cast<int>(d),
              static_cast<int>(nq), 1.0, s.data(), static_cast<int>(nc), q, static_cast<int>(d),
              1.0, dc, static_cast<int>(d));
  return loss / static_cast<double>(nq);
}

// Shared by the two MNRL variants: normalise, run the ranking terms, map gradients back.
// Candidates are the rows of columns 1.. stacked (positives, then each negative column).
static LossOutput mnrl_family(const std::vector<Tensor>& cols, double scale, bool symmetric) {
  ET_CHECK(cols.size() >= 2, "MultipleNegativesRankingLoss needs anchor and positive columns");
  const int64_t B = cols[0].dim(0), d = cols[0].dim(1);
  for (const Tensor& c : cols)
    ET_CHECK(c.ndim() == 2 && c.dim(0) == B && c.dim(1) == d, "MNRL: column shape ",
             shape_str(c.shape), " differs from the anchors' ", shape_str(cols[0].shape));
  const int64_t M = B * static_cast<int64_t>(cols.size() - 1);
  std::vector<std::vector<double>> norms(cols.size());
  std::vector<double> anchors, cands;
  for (size_t c = 0; c < cols.size(); ++c) {
    std::vector<double> u = normalize_rows(cols[c], norms[c]);
    auto& dst = c == 0 ? anchors : cands;
    dst.insert(dst.end(), u.begin(), u.end());
  }
  std::vector<double> d_anchors(static_cast<size_t>(B * d), 0.0),
      d_cands(static_cast<size_t>(M * d), 0.0);
  LossOutput out;
  const double w = symmetric ? 0.5 : 1.0;
  out.loss = w * ranking_ce(anchors.data(), B, cands.data(), M, d, scale, w, d_anchors.data(),
                            d_cands.data());
  if (symmetric)  // each positive against all anchors
    out.loss += w * ranking_ce(cands.data(), B, anchors.data(), B, d, scale, w, d_cands.data(),
                               d_anchors.data());
  for (size_t c = 0; c < cols.size(); ++c) {
    const double* u = c == 0 ? anchors.data() : cands.data() + (c - 1) * B * d;
    const double* du = c == 0 ? d_anchors.data() : d_cands.data() + (c - 1) * B * d;
    out.grads.push_back(normalize_backward(std::vector<double>(u, u + B * d), norms[c],
                                           std::vector<double>(du, du + B * d), B, d));
  }
  return out;
}

LossOutput mnrl_symmetric_loss(const std::vector<Tensor>& cols, double scale) {
  return mnrl_family(cols, scale, true);
}

namespace {
struct LossName {
  const char* short_name;
  const char* class_name;
  LossKind kind;
};
const LossName kLossNames[] = {
    {"mnrl", "MultipleNegativesRankingLoss", LossKind::MNRL},
    {"mnrl_symmetric", "MultipleNegativesSymmetricRankingLoss", LossKind::MNRLSymmetric},
    {"triplet", "TripletLoss", LossKind::Triplet},
    {"cosent", "CoSENTLoss", LossKind::CoSENT},
    {"angle", "AnglELoss", LossKind::AnglE},
    {"cosine_similarity", "CosineSimilarityLoss", LossKind::CosineSimilarity},
    {"contrastive", "ContrastiveLoss", LossKind::Contrastive},
    {"online_contrastive", "OnlineContrastiveLoss", LossKind::OnlineContrastive},
    {"margin_mse", "MarginMSELoss", LossKind::MarginMSE},
};
}  // namespace

MatryoshkaCut matryoshka_cut(const LossSpec& spec, size_t i, int64_t d) {
  const int64_t dim = spec.matryoshka_dims.at(i);
  ET_CHECK(dim > 0 && dim <= d, "matryoshka dimension ", dim, " is outside 1..", d);
  return {dim, i < spec.matryoshka_weights.size() ? spec.matryoshka_weights[i] : 1.0};
}

LossKind parse_loss_kind(const std::string& name) {
  std::string all;
  for (const LossName& n : kLossNames) {
    if (name == n.short_name || name == n.class_name) return n.kind;
    all += (all.empty() ? "" : ", ") + std::string(n.short_name);
  }
  fail("loss '", name, "' is not one of ", all);
}

bool loss_needs_labels(LossKind k) {
  return k != LossKind::MNRL && k != LossKind::MNRLSymmetric && k != LossKind::Triplet;
}

int loss_columns(LossKind k) {
  switch (k) {
    case LossKind::MNRL:
    case LossKind::MNRLSymmetric:
      return 0;
    case LossKind::Triplet:
    case LossKind::MarginMSE:
      return 3;
    default:
      return 2;
  }
}

LossOutput compute_loss(const LossSpec& spec, const std::vector<Tensor>& cols,
                        const std::vector<double>& labels) {
  auto base = [&](const std::vector<Tensor>& c) -> LossOutput {
    switch (spec.kind) {
      case LossKind::MNRL:
        return mnrl_loss(c, spec.scale);
      case LossKind::MNRLSymmetric:
        return mnrl_symmetric_loss(c, spec.scale);
      case LossKind::Triplet:
        return triplet_loss(c, static_cast<Distance>(spec.distance),
                            spec.margin < 0 ? 5.0 : spec.margin);
      case LossKind::CoSENT:
        return cosent_loss(c, labels, spec.scale, false);
      case LossKind::AnglE:
        return cosent_loss(c, labels, spec.scale, true);
      case LossKind::CosineSimilarity:
        return cosine_similarity_loss(c, labels);
      case LossKind::Contrastive:
        return contrastive_loss(c, labels, spec.margin < 0 ? 0.5 : spec.margin);
      case LossKind::OnlineContrastive:
        return online_contrastive_loss(c, labels, spec.margin < 0 ? 0.5 : spec.margin);
      case LossKind::MarginMSE:
        return margin_mse_loss(c, labels);
    }
    fail("unknown loss");
  };
  if (spec.matryoshka_dims.empty()) return base(cols);
  const int64_t B = cols[0].dim(0), d = cols[0].dim(1);
  LossOutput out;
  for (const Tensor& c : cols) out.grads.push_back(cpu_zeros(c.shape));
  for (size_t i = 0; i < spec.matryoshka_dims.size(); ++i) {
    const auto [dim, w] = matryoshka_cut(spec, i, d);
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
