// Pairwise and triplet losses of sentence-transformers, with hand-derived gradients (double
// precision). Each mirrors the library's forward exactly, including its small epsilons.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "train/losses.h"

namespace et {

namespace {

using Mat = std::vector<double>;  // row-major [B, d]

Mat to_double(const Tensor& t) {
  Mat m(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) m[i] = t.f32()[i];
  return m;
}

Tensor to_tensor(const Mat& m, int64_t B, int64_t d) {
  Tensor t = cpu_empty({B, d});
  for (int64_t i = 0; i < B * d; ++i) t.f32()[i] = static_cast<float>(m[i]);
  return t;
}

void check_cols(const std::vector<Tensor>& cols, size_t n, const char* loss) {
  ET_CHECK(cols.size() == n, loss, " needs ", n, " columns, got ", cols.size());
  for (const Tensor& c : cols)
    ET_CHECK(c.ndim() == 2 && c.shape == cols[0].shape, loss, ": column shapes differ");
}

void check_labels(const std::vector<double>& labels, int64_t B, const char* loss) {
  ET_CHECK(static_cast<int64_t>(labels.size()) == B, loss, " needs one label per row (", B,
           "), got ", labels.size());
}

// cos(x_i, y_i) = x.y / (max(|x|, eps) max(|y|, eps)) as torch's cosine_similarity with
// eps 1e-8 per norm; gradient accumulated as g * dcos.
double cos_row(const double* x, const double* y, int64_t d, double* nx, double* ny) {
  double xy = 0, xx = 0, yy = 0;
  for (int64_t k = 0; k < d; ++k) {
    xy += x[k] * y[k];
    xx += x[k] * x[k];
    yy += y[k] * y[k];
  }
  *nx = std::max(std::sqrt(xx), 1e-8);
  *ny = std::max(std::sqrt(yy), 1e-8);
  return xy / (*nx * *ny);
}

void cos_backward(const double* x, const double* y, int64_t d, double g, double cosv, double nx,
                  double ny, double* dx, double* dy) {
  for (int64_t k = 0; k < d; ++k) {
    dx[k] += g * (y[k] / (nx * ny) - cosv * x[k] / (nx * nx));
    dy[k] += g * (x[k] / (nx * ny) - cosv * y[k] / (ny * ny));
  }
}

// torch pairwise_distance(x, y, p, eps=1e-6) = ||x - y + eps||_p and its gradient w.r.t. x
// (w.r.t. y it is the negative).
double pdist(const double* x, const double* y, int64_t d, Distance dist,
             std::vector<double>& dgrad) {
  dgrad.assign(static_cast<size_t>(d), 0.0);
  if (dist == Distance::Euclidean) {
    double s = 0;
    for (int64_t k = 0; k < d; ++k) s += (x[k] - y[k] + 1e-6) * (x[k] - y[k] + 1e-6);
    double n = std::sqrt(s);
    for (int64_t k = 0; k < d; ++k) dgrad[k] = n > 0 ? (x[k] - y[k] + 1e-6) / n : 0;
    return n;
  }
  double s = 0;
  for (int64_t k = 0; k < d; ++k) {
    double v = x[k] - y[k] + 1e-6;
    s += std::abs(v);
    dgrad[k] = v > 0 ? 1 : (v < 0 ? -1 : 0);
  }
  return s;
}

// AnglE's angle similarity (sentence_transformers.util.pairwise_angle_sim): the halves of each
// vector are real and imaginary parts (an odd dimension is padded with a zero). Per row i:
//   u_ik = a c + b d + b c - a d,  D_i = |(a, b)_i| |(c, d)_i|,  n_i = sum_k u_ik / D_i,
//   s_i = |n_i|.
struct Angle {
  int64_t B = 0, h = 0;
  Mat x, y;  // padded copies [B, 2h]
  std::vector<double> n, D, dz2, dw2;
};

Angle angle_forward(const Mat& x0, const Mat& y0, int64_t B, int64_t d) {
  Angle A;
  A.B = B;
  A.h = (d + 1) / 2;
  const int64_t h = A.h, w = 2 * h;
  A.x.assign(static_cast<size_t>(B * w), 0);
  A.y.assign(static_cast<size_t>(B * w), 0);
  for (int64_t i = 0; i < B; ++i)
    for (int64_t k = 0; k < d; ++k) {
      A.x[i * w + k] = x0[i * d + k];
      A.y[i * w + k] = y0[i * d + k];
    }
  A.n.assign(static_cast<size_t>(B), 0);
  A.D.assign(static_cast<size_t>(B), 0);
  A.dz2.assign(static_cast<size_t>(B), 0);
  A.dw2.assign(static_cast<size_t>(B), 0);
  for (int64_t i = 0; i < B; ++i) {
    double u = 0;
    for (int64_t k = 0; k < h; ++k) {
      double a = A.x[i * w + k], b = A.x[i * w + h + k], c = A.y[i * w + k],
             dd = A.y[i * w + h + k];
      u += a * c + b * dd + b * c - a * dd;
      A.dz2[i] += a * a + b * b;
      A.dw2[i] += c * c + dd * dd;
    }
    A.D[i] = std::sqrt(A.dz2[i]) * std::sqrt(A.dw2[i]);
    A.n[i] = u / A.D[i];
  }
  return A;
}

// ds: dL/ds_i. Gradients go to the unpadded [B, d] dx, dy.
void angle_backward(const Angle& A, int64_t d, const std::vector<double>& ds, Mat& dx, Mat& dy) {
  const int64_t h = A.h, w = 2 * h;
  for (int64_t i = 0; i < A.B; ++i) {
    const double g = ds[i] * (A.n[i] > 0 ? 1 : (A.n[i] < 0 ? -1 : 0));
    if (g == 0) continue;
    const double n = A.n[i], D = A.D[i];
    for (int64_t k = 0; k < h; ++k) {
      double a = A.x[i * w + k], b = A.x[i * w + h + k], c = A.y[i * w + k],
             dd = A.y[i * w + h + k];
      const double ga = (c - dd) / D - n * a / A.dz2[i], gb = (dd + c) / D - n * b / A.dz2[i];
      const double gc = (a + b) / D - n * c / A.dw2[i], gd = (b - a) / D - n * dd / A.dw2[i];
      dx[i * d + k] += g * ga;
      dy[i * d + k] += g * gc;
      if (h + k < d) {
        dx[i * d + h + k] += g * gb;
        dy[i * d + h + k] += g * gd;
      }
    }
  }
}

}  // namespace

LossOutput triplet_loss(const std::vector<Tensor>& cols, Distance dist, double margin) {
  check_cols(cols, 3, "TripletLoss");
  const int64_t B = cols[0].dim(0), d = cols[0].dim(1);
  Mat a = to_double(cols[0]), p = to_double(cols[1]), n = to_double(cols[2]);
  Mat da(a.size(), 0), dp(a.size(), 0), dn(a.size(), 0);
  LossOutput out;
  std::vector<double> gp, gn;
  for (int64_t i = 0; i < B; ++i) {
    const double *ai = &a[i * d], *pi = &p[i * d], *ni = &n[i * d];
    double dap, dan;
    double cp = 0, cn = 0, nap = 0, npp = 0, nan_ = 0, nnn = 0;
    if (dist == Distance::Cosine) {
      cp = cos_row(ai, pi, d, &nap, &npp);
      cn = cos_row(ai, ni, d, &nan_, &nnn);
      dap = 1 - cp;
      dan = 1 - cn;
    } else {
      dap = pdist(ai, pi, d, dist, gp);
      dan = pdist(ai, ni, d, dist, gn);
    }
    double l = dap - dan + margin;
    if (l <= 0) continue;
    out.loss += l / B;
    const double g = 1.0 / B;
    if (dist == Distance::Cosine) {
      cos_backward(ai, pi, d, -g, cp, nap, npp, &da[i * d], &dp[i * d]);
      cos_backward(ai, ni, d, g, cn, nan_, nnn, &da[i * d], &dn[i * d]);
    } else {
      for (int64_t k = 0; k < d; ++k) {
        da[i * d + k] += g * (gp[k] - gn[k]);
        dp[i * d + k] -= g * gp[k];
        dn[i * d + k] += g * gn[k];
      }
    }
  }
  out.grads = {to_tensor(da, B, d), to_tensor(dp, B, d), to_tensor(dn, B, d)};
  return out;
}

LossOutput cosent_loss(const std::vector<Tensor>& cols, const std::vector<double>& labels,
                       double scale, bool angle) {
  check_cols(cols, 2, angle ? "AnglELoss" : "CoSENTLoss");
  const int64_t B = cols[0].dim(0), d = cols[0].dim(1);
  check_labels(labels, B, "CoSENTLoss");
  Mat a = to_double(cols[0]), p = to_double(cols[1]);
  Mat da(a.size(), 0), dp(a.size(), 0);
  std::vector<double> s(static_cast<size_t>(B)), na(static_cast<size_t>(B)),
      np(static_cast<size_t>(B));
  Angle A;
  if (angle) {
    A = angle_forward(a, p, B, d);
    for (int64_t i = 0; i < B; ++i) s[i] = scale * std::abs(A.n[i]);
  } else {
    for (int64_t i = 0; i < B; ++i) s[i] = scale * cos_row(&a[i * d], &p[i * d], d, &na[i], &np[i]);
  }
  // logsumexp over {0} and {s_i - s_j : label_i < label_j}
  double mx = 0;
  for (int64_t i = 0; i < B; ++i)
    for (int64_t j = 0; j < B; ++j)
      if (labels[i] < labels[j]) mx = std::max(mx, s[i] - s[j]);
  double z = std::exp(-mx);
  for (int64_t i = 0; i < B; ++i)
    for (int64_t j = 0; j < B; ++j)
      if (labels[i] < labels[j]) z += std::exp(s[i] - s[j] - mx);
  LossOutput out;
  out.loss = mx + std::log(z);
  std::vector<double> ds(static_cast<size_t>(B), 0);
  for (int64_t i = 0; i < B; ++i)
    for (int64_t j = 0; j < B; ++j)
      if (labels[i] < labels[j]) {
        double w = std::exp(s[i] - s[j] - out.loss);
        ds[i] += w;
        ds[j] -= w;
      }
  if (angle) {
    for (int64_t i = 0; i < B; ++i) ds[i] *= scale;
    angle_backward(A, d, ds, da, dp);
  } else {
    for (int64_t i = 0; i < B; ++i)
      cos_backward(&a[i * d], &p[i * d], d, ds[i] * scale, s[i] / scale, na[i], np[i], &da[i * d],
                   &dp[i * d]);
  }
  out.grads = {to_tensor(da, B, d), to_tensor(dp, B, d)};
  return out;
}

LossOutput cosine_similarity_loss(const std::vector<Tensor>& cols,
                                  const std::vector<double>& labels) {
  check_cols(cols, 2, "CosineSimilarityLoss");
  const int64_t B = cols[0].dim(0), d = cols[0].dim(1);
  check_labels(labels, B, "CosineSimilarityLoss");
  Mat a = to_double(cols[0]), p = to_double(cols[1]);
  Mat da(a.size(), 0), dp(a.size(), 0);
  LossOutput out;
  for (int64_t i = 0; i < B; ++i) {
    double na, np;
    double c = cos_row(&a[i * d], &p[i * d], d, &na, &np);
    out.loss += (c - labels[i]) * (c - labels[i]) / B;
    cos_backward(&a[i * d], &p[i * d], d, 2 * (c - labels[i]) / B, c, na, np, &da[i * d],
                 &dp[i * d]);
  }
  out.grads = {to_tensor(da, B, d), to_tensor(dp, B, d)};
  return out;
}

// Shared by the two contrastive losses: cosine distances and their terms.
static LossOutput contrastive_family(const std::vector<Tensor>& cols, const std::vector<double>& y,
                                     double margin, bool online) {
  check_cols(cols, 2, online ? "OnlineContrastiveLoss" : "ContrastiveLoss");
  const int64_t B = cols[0].dim(0), d = cols[0].dim(1);
  check_labels(y, B, "ContrastiveLoss");
  Mat a = to_double(cols[0]), p = to_double(cols[1]);
  Mat da(a.size(), 0), dp(a.size(), 0);
  std::vector<double> dist(static_cast<size_t>(B)), c(static_cast<size_t>(B)),
      na(static_cast<size_t>(B)), np(static_cast<size_t>(B));
  for (int64_t i = 0; i < B; ++i) {
    c[i] = cos_row(&a[i * d], &p[i * d], d, &na[i], &np[i]);
    dist[i] = 1 - c[i];
  }
  // which rows count, with which weight on the loss (sum for online, mean otherwise)
  std::vector<bool> use(static_cast<size_t>(B), true);
  double w = online ? 1.0 : 0.5 / B;
  if (online) {
    std::vector<double> pos, neg;
    for (int64_t i = 0; i < B; ++i) (y[i] == 1 ? pos : neg).push_back(dist[i]);
    auto mean = [](const std::vector<double>& v) {
      double s = 0;
      for (double x : v) s += x;
      return v.empty() ? 0.0 : s / static_cast<double>(v.size());
    };
    const double neg_bound = pos.size() > 1 ? *std::max_element(pos.begin(), pos.end()) : mean(neg);
    const double pos_bound = neg.size() > 1 ? *std::min_element(neg.begin(), neg.end()) : mean(pos);
    for (int64_t i = 0; i < B; ++i) use[i] = y[i] == 1 ? dist[i] > pos_bound : dist[i] < neg_bound;
  }
  LossOutput out;
  for (int64_t i = 0; i < B; ++i) {
    if (!use[i]) continue;
    double term, dterm;  // term and d term / d dist
    if (y[i] == 1) {
      term = dist[i] * dist[i];
      dterm = 2 * dist[i];
    } else if (online || y[i] == 0) {
      double r = std::max(0.0, margin - dist[i]);
      term = r * r;
      dterm = -2 * r;
    } else {  // soft labels in ContrastiveLoss: y d^2 + (1 - y) relu(m - d)^2
      double r = std::max(0.0, margin - dist[i]);
      term = y[i] * dist[i] * dist[i] + (1 - y[i]) * r * r;
      dterm = 2 * y[i] * dist[i] - 2 * (1 - y[i]) * r;
    }
    out.loss += w * term;
    // d dist = - d cos
    cos_backward(&a[i * d], &p[i * d], d, -w * dterm, c[i], na[i], np[i], &da[i * d], &dp[i * d]);
  }
  out.grads = {to_tensor(da, B, d), to_tensor(dp, B, d)};
  return out;
}

LossOutput contrastive_loss(const std::vector<Tensor>& cols, const std::vector<double>& labels,
                            double margin) {
  return contrastive_family(cols, labels, margin, false);
}

LossOutput online_contrastive_loss(const std::vector<Tensor>& cols,
                                   const std::vector<double>& labels, double margin) {
  return contrastive_family(cols, labels, margin, true);
}

LossOutput margin_mse_loss(const std::vector<Tensor>& cols, const std::vector<double>& labels) {
  check_cols(cols, 3, "MarginMSELoss");
  const int64_t B = cols[0].dim(0), d = cols[0].dim(1);
  check_labels(labels, B, "MarginMSELoss");
  Mat a = to_double(cols[0]), p = to_double(cols[1]), n = to_double(cols[2]);
  Mat da(a.size(), 0), dp(a.size(), 0), dn(a.size(), 0);
  LossOutput out;
  for (int64_t i = 0; i < B; ++i) {
    double sp = 0, sn = 0;
    for (int64_t k = 0; k < d; ++k) {
      sp += a[i * d + k] * p[i * d + k];
      sn += a[i * d + k] * n[i * d + k];
    }
    const double r = sp - sn - labels[i];
    out.loss += r * r / B;
    const double g = 2 * r / B;
    for (int64_t k = 0; k < d; ++k) {
      da[i * d + k] += g * (p[i * d + k] - n[i * d + k]);
      dp[i * d + k] += g * a[i * d + k];
      dn[i * d + k] -= g * a[i * d + k];
    }
  }
  out.grads = {to_tensor(da, B, d), to_tensor(dp, B, d), to_tensor(dn, B, d)};
  return out;
}

}  // namespace et
