#include "ops/cpu/cpu_backend.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "ops/op_checks.h"
#include "ops/relative_bucket.h"

namespace et {

namespace {

constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;
constexpr float kSqrt2OverPi = 0.79788456080286536f;

void check_same(const Tensor& a, const Tensor& b, const char* op) {
  ET_CHECK(a.numel() == b.numel(), op, ": size mismatch ", shape_str(a.shape), " vs ",
           shape_str(b.shape));
}

int64_t cols_of(const Tensor& t) {
  return t.shape.empty() ? 1 : t.shape.back();
}
int64_t rows_of(const Tensor& t) {
  return t.numel() / std::max<int64_t>(cols_of(t), 1);
}

float act_value(Act act, float x) {
  switch (act) {
    case Act::Identity:
      return x;
    case Act::Tanh:
      return std::tanh(x);
    case Act::ReLU:
      return x > 0 ? x : 0;
    case Act::Sigmoid:
      return 1.0f / (1.0f + std::exp(-x));
    case Act::GeluErf:
      return 0.5f * x * (1.0f + std::erf(x * kInvSqrt2));
    case Act::GeluTanh: {
      float u = kSqrt2OverPi * (x + 0.044715f * x * x * x);
      return 0.5f * x * (1.0f + std::tanh(u));
    }
    case Act::SiLU:
      return x / (1.0f + std::exp(-x));
  }
  return x;
}

float act_grad(Act act, float x) {
  switch (act) {
    case Act::Identity:
      return 1;
    case Act::Tanh: {
      float t = std::tanh(x);
      return 1 - t * t;
    }
    case Act::ReLU:
      return x > 0 ? 1.0f : 0.0f;
    case Act::Sigmoid: {
      float s = 1.0f / (1.0f + std::exp(-x));
      return s * (1 - s);
    }
    case Act::GeluErf:
      return 0.5f * (1.0f + std::erf(x * kInvSqrt2)) + x * kInvSqrt2Pi * std::exp(-0.5f * x * x);
    case Act::GeluTanh: {
      float u = kSqrt2OverPi * (x + 0.044715f * x * x * x);
      float t = std::tanh(u);
      float du = kSqrt2OverPi * (1.0f + 3.0f * 0.044715f * x * x);
      return 0.5f * (1.0f + t) + 0.5f * x * (1 - t * t) * du;
    }
    case Act::SiLU: {
      float s = 1.0f / (1.0f + std::exp(-x));
      return s * (1 + x * (1 - s));
    }
  }
  return 1;
}

struct CpuBackend final : Backend {
  Device device() const override { return Device::CPU; }
  const char* name() const override { return "cpu"; }

  Tensor empty(const Shape& shape, DType dtype) const override { return cpu_empty(shape, dtype); }
  Tensor zeros(const Shape& shape, DType dtype) const override { return cpu_zeros(shape, dtype); }
  Tensor upload(const Tensor& host) const override { return cpu_clone(host); }
  Tensor download(const Tensor& dev) const override { return cpu_clone(dev); }
  void fill(Tensor& t, float value) const override {
    float* p = t.f32();
    std::fill(p, p + t.numel(), value);
  }
  void copy(Tensor& dst, const Tensor& src) const override {
    ET_CHECK(dst.nbytes() == src.nbytes(), "copy: size mismatch ", shape_str(dst.shape), " vs ",
             shape_str(src.shape));
    ET_CHECK(dst.pitch == 0 && src.pitch == 0, "copy: strided views are not copied");
    if (dst.data != src.data) std::memcpy(dst.data, src.data, src.nbytes());
  }

  void matmul(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c, float alpha,
              float beta, const Tensor* bias) const override {
    gemm(a, ta, b, tb, c, alpha, beta);
    if (bias) add_bias(c, *bias);
  }
  void gemm(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c, float alpha,
            float beta) const {
    ET_CHECK(a.ndim() == 2 && b.ndim() == 2 && c.ndim() == 2, "matmul: operands must be 2-D");
    int64_t m = ta ? a.dim(1) : a.dim(0), k = ta ? a.dim(0) : a.dim(1);
    int64_t kb = tb ? b.dim(1) : b.dim(0), n = tb ? b.dim(0) : b.dim(1);
    ET_CHECK(k == kb && c.dim(0) == m && c.dim(1) == n, "matmul: shapes ", shape_str(a.shape),
             (ta ? "^T" : ""), " x ", shape_str(b.shape), (tb ? "^T" : ""), " -> ",
             shape_str(c.shape), " do not match");
    if (m == 0 || n == 0) return;
    if (k == 0) {
      if (beta == 0)
        fill(c, 0);
      else
        scale(c, beta);
      return;
    }
    // strided views (Tensor::pitch) go in with their row pitch as the leading dimension
    for (const Tensor* t : {&a, &b, static_cast<const Tensor*>(&c)})
      ET_CHECK(t->dtype == DType::F32, "matmul: expected F32 operands, got ", dtype_name(t->dtype));
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha,
                static_cast<const float*>(a.data), static_cast<int>(a.row_pitch()),
                static_cast<const float*>(b.data), static_cast<int>(b.row_pitch()), beta,
                static_cast<float*>(c.data), static_cast<int>(c.row_pitch()));
  }

  void add_bias(Tensor& y, const Tensor& bias) const override {
    int64_t n = cols_of(y), r = rows_of(y);
    ET_CHECK(bias.numel() == n, "add_bias: bias has ", bias.numel(), " values for ", n, " columns");
    float* p = y.f32();
    const float* bp = bias.f32();
    for (int64_t i = 0; i < r; ++i)
      for (int64_t j = 0; j < n; ++j) p[i * n + j] += bp[j];
  }

  void bias_backward(const Tensor& dy, Tensor& db) const override {
    int64_t n = cols_of(dy), r = rows_of(dy);
    ET_CHECK(db.numel() == n, "bias_backward: size mismatch");
    const float* p = dy.f32();
    float* o = db.f32();
    for (int64_t i = 0; i < r; ++i)
      for (int64_t j = 0; j < n; ++j) o[j] += p[i * n + j];
  }

  void add(const Tensor& a, const Tensor& b, Tensor& y) const override {
    check_same(a, b, "add");
    check_same(a, y, "add");
    const float *pa = a.f32(), *pb = b.f32();
    float* py = y.f32();
    for (int64_t i = 0, n = a.numel(); i < n; ++i) py[i] = pa[i] + pb[i];
  }

  void mul(const Tensor& a, const Tensor& b, Tensor& y) const override {
    check_same(a, b, "mul");
    check_same(a, y, "mul");
    const float *pa = a.f32(), *pb = b.f32();
    float* py = y.f32();
    for (int64_t i = 0, n = a.numel(); i < n; ++i) py[i] = pa[i] * pb[i];
  }

  void scale(Tensor& y, float s) const override {
    float* p = y.f32();
    for (int64_t i = 0, n = y.numel(); i < n; ++i) p[i] *= s;
  }

  // y[r, c] = (accumulate ? y : 0) + x[r, c] * keep(first_row + r, c) / (1 - p)
  static void dropout_rows(const Tensor& x, const DropoutSite& d, int64_t first_row, Tensor& y,
                           bool accumulate) {
    const char* op = accumulate ? "dropout_add" : "dropout";
    check_same(x, y, op);
    const DropoutMask m = dropout_mask(d, op);
    const int64_t n = cols_of(x), r = rows_of(x);
    const float* px = x.f32();
    float* py = y.f32();
    for (int64_t i = 0; i < r; ++i) {
      const uint32_t key = m.row_key(first_row + i);
      for (int64_t j = 0; j < n; ++j) {
        const float v = m.apply(key, j, px[i * n + j]);
        py[i * n + j] = accumulate ? py[i * n + j] + v : v;
      }
    }
  }
  void dropout(const Tensor& x, const DropoutSite& d, int64_t first_row, Tensor& y) const override {
    dropout_rows(x, d, first_row, y, false);
  }
  void dropout_add(const Tensor& x, const DropoutSite& d, int64_t first_row,
                   Tensor& y) const override {
    dropout_rows(x, d, first_row, y, true);
  }

  void layernorm_forward(const Tensor& x, const Tensor& w, const Tensor* b, float eps, Tensor& y,
                         Tensor& mean, Tensor& rstd, Tensor* xhat) const override {
    int64_t n = cols_of(x), r = rows_of(x);
    const float *px = x.f32(), *pw = w.f32(), *pb = b ? b->f32() : nullptr;
    float *py = y.f32(), *pm = mean.f32(), *ps = rstd.f32();
    float* pxh = xhat ? xhat->f32() : nullptr;
#pragma omp parallel for if (r > 64)
    for (int64_t i = 0; i < r; ++i) {
      const float* row = px + i * n;
      double mu = 0, var = 0;
      for (int64_t j = 0; j < n; ++j) mu += row[j];
      mu /= static_cast<double>(n);
      for (int64_t j = 0; j < n; ++j) var += (row[j] - mu) * (row[j] - mu);
      var /= static_cast<double>(n);
      float s = static_cast<float>(1.0 / std::sqrt(var + eps));
      pm[i] = static_cast<float>(mu);
      ps[i] = s;
      for (int64_t j = 0; j < n; ++j) {
        const float xh = (row[j] - pm[i]) * s;
        if (pxh) pxh[i * n + j] = xh;
        py[i * n + j] = pb ? xh * pw[j] + pb[j] : xh * pw[j];
      }
    }
  }

  // xhat = (x - mean) rstd (or given);  dxhat = dy w;
  // dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))  (added to dx with `accumulate`);
  // dw += sum dy xhat;  db += sum dy.
  static void layernorm_backward_rows(const Tensor& dy, const Tensor& x, const Tensor& w,
                                      const float* pm, const Tensor& rstd, Tensor& dx, Tensor* dw,
                                      Tensor* db, bool accumulate = false) {
    int64_t n = cols_of(x), r = rows_of(x);
    const float *pdy = dy.f32(), *px = x.f32(), *pw = w.f32(), *ps = rstd.f32();
    float* pdx = dx.f32();
    float* pdw = dw ? dw->f32() : nullptr;
    float* pdb = db ? db->f32() : nullptr;
    for (int64_t i = 0; i < r; ++i) {
      const float* g = pdy + i * n;
      const float* row = px + i * n;
      auto xhat = [&](int64_t j) { return pm ? (row[j] - pm[i]) * ps[i] : row[j]; };
      double a = 0, bsum = 0;
      for (int64_t j = 0; j < n; ++j) {
        float xh = xhat(j);
        float d = g[j] * pw[j];
        a += d;
        bsum += d * xh;
        if (pdw) pdw[j] += g[j] * xh;
        if (pdb) pdb[j] += g[j];
      }
      float ma = static_cast<float>(a / n), mb = static_cast<float>(bsum / n);
      for (int64_t j = 0; j < n; ++j)
        pdx[i * n + j] =
            (accumulate ? pdx[i * n + j] : 0.0f) + ps[i] * (g[j] * pw[j] - ma - xhat(j) * mb);
    }
  }
  void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& mean,
                          const Tensor& rstd, Tensor& dx, Tensor* dw, Tensor* db) const override {
    layernorm_backward_rows(dy, x, w, mean.f32(), rstd, dx, dw, db);
  }
  void layernorm_backward_normalized(const Tensor& dy, const Tensor& xhat, const Tensor& w,
                                     const Tensor& rstd, Tensor& dx, Tensor* dw, Tensor* db,
                                     bool accumulate, Tensor* dx_copy) const override {
    layernorm_backward_rows(dy, xhat, w, nullptr, rstd, dx, dw, db, accumulate);
    if (dx_copy) copy(*dx_copy, dx);
  }

  void rmsnorm_forward(const Tensor& x, const Tensor& w, float offset, float eps, Tensor& y,
                       Tensor& rstd, Tensor* xhat, bool accumulate) const override {
    const int64_t n = w.numel(), r = x.numel() / n;
    ET_CHECK(x.numel() == r * n && y.numel() == x.numel() && rstd.numel() == r,
             "rmsnorm_forward: sizes do not match");
    const float *px = x.f32(), *pw = w.f32();
    float *py = y.f32(), *ps = rstd.f32();
    float* pxh = xhat ? xhat->f32() : nullptr;
#pragma omp parallel for if (r > 64)
    for (int64_t i = 0; i < r; ++i) {
      const float* row = px + i * n;
      double ss = 0;
      for (int64_t j = 0; j < n; ++j) ss += static_cast<double>(row[j]) * row[j];
      float s = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
      ps[i] = s;
      for (int64_t j = 0; j < n; ++j) {
        const float xh = row[j] * s;
        if (pxh) pxh[i * n + j] = xh;
        py[i * n + j] = (accumulate ? py[i * n + j] : 0.0f) + xh * (pw[j] + offset);
      }
    }
  }

  // xhat = x rstd (or given); g = dy (w + offset);
  // dx = rstd (g - xhat mean(g xhat))  (added to dx with `accumulate`);  dw += sum dy xhat.
  static void rmsnorm_backward_rows(const Tensor& dy, const Tensor& x, bool normalized,
                                    const Tensor& w, float offset, const Tensor& rstd, Tensor& dx,
                                    Tensor* dw, bool accumulate = false) {
    const int64_t n = w.numel(), r = x.numel() / n;
    const float *pdy = dy.f32(), *px = x.f32(), *pw = w.f32(), *ps = rstd.f32();
    float* pdx = dx.f32();
    float* pdw = dw ? dw->f32() : nullptr;
    for (int64_t i = 0; i < r; ++i) {
      const float *g = pdy + i * n, *row = px + i * n;
      auto xhat = [&](int64_t j) { return normalized ? row[j] : row[j] * ps[i]; };
      double dot = 0;
      for (int64_t j = 0; j < n; ++j) {
        dot += static_cast<double>(g[j]) * (pw[j] + offset) * xhat(j);
        if (pdw) pdw[j] += g[j] * xhat(j);
      }
      const float c = static_cast<float>(dot / static_cast<double>(n));
      for (int64_t j = 0; j < n; ++j)
        pdx[i * n + j] =
            (accumulate ? pdx[i * n + j] : 0.0f) + ps[i] * (g[j] * (pw[j] + offset) - xhat(j) * c);
    }
  }
  void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, float offset,
                        const Tensor& rstd, Tensor& dx, Tensor* dw) const override {
    rmsnorm_backward_rows(dy, x, false, w, offset, rstd, dx, dw);
  }
  void rmsnorm_backward_normalized(const Tensor& dy, const Tensor& xhat, const Tensor& w,
                                   float offset, const Tensor& rstd, Tensor& dx, Tensor* dw,
                                   bool accumulate, Tensor* dx_copy) const override {
    rmsnorm_backward_rows(dy, xhat, true, w, offset, rstd, dx, dw, accumulate);
    if (dx_copy) copy(*dx_copy, dx);
  }

  void norm_scale_shift(const Tensor& xhat, const Tensor& w, float offset, const Tensor* b,
                        Tensor& y) const override {
    const int64_t n = w.numel(), r = xhat.numel() / n;
    ET_CHECK(xhat.numel() == r * n && y.numel() == xhat.numel() && (!b || b->numel() == n),
             "norm_scale_shift: sizes do not match");
    const float *px = xhat.f32(), *pw = w.f32(), *pb = b ? b->f32() : nullptr;
    float* py = y.f32();
    for (int64_t i = 0; i < r; ++i)
      for (int64_t j = 0; j < n; ++j) {
        const float v = px[i * n + j] * (pw[j] + offset);
        py[i * n + j] = pb ? v + pb[j] : v;
      }
  }

  void rope_columns(const Tensor& src, int64_t src_col, Tensor& dst, int64_t dst_col,
                    const Tensor& positions, int heads, int head_dim, double theta,
                    bool inverse) const override {
    const int64_t T = positions.numel(), half = head_dim / 2;
    const int64_t sc = src.dim(1), dc = dst.dim(1);
    check_rope_columns(src, src_col, dst, dst_col, T, heads, head_dim);
    const int32_t* pos = positions.i32();
    const float* ps = src.f32();
    float* pd = dst.f32();
#pragma omp parallel for if (T > 64)
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t i = 0; i < half; ++i) {
        double a = pos[t] * std::pow(theta, -2.0 * static_cast<double>(i) / head_dim);
        float c = static_cast<float>(std::cos(a)), sn = static_cast<float>(std::sin(a));
        if (inverse) sn = -sn;
        for (int h = 0; h < heads; ++h) {
          const float* x = ps + t * sc + src_col + h * head_dim;
          float* y = pd + t * dc + dst_col + h * head_dim;
          const float x1 = x[i], x2 = x[i + half];
          y[i] = x1 * c - x2 * sn;
          y[i + half] = x2 * c + x1 * sn;
        }
      }
    }
  }

  void glu_forward(Act act, const Tensor& gate, const Tensor& up, Tensor& y) const override {
    check_same(gate, up, "glu_forward");
    check_same(gate, y, "glu_forward");
    const float *pg = gate.f32(), *pu = up.f32();
    float* py = y.f32();
    const int64_t n = y.numel();
#pragma omp parallel for if (n > 65536)
    for (int64_t i = 0; i < n; ++i) py[i] = act_value(act, pg[i]) * pu[i];
  }

  void glu_backward(Act act, const Tensor& gate, const Tensor& up, const Tensor& dy, Tensor& dgate,
                    Tensor& dup) const override {
    check_same(gate, dy, "glu_backward");
    const float *pg = gate.f32(), *pu = up.f32(), *pdy = dy.f32();
    float *pdg = dgate.f32(), *pdu = dup.f32();
    const int64_t n = dy.numel();
#pragma omp parallel for if (n > 65536)
    for (int64_t i = 0; i < n; ++i) {
      const float g = pg[i], u = pu[i], d = pdy[i];
      pdg[i] = act_grad(act, g) * u * d;
      pdu[i] = act_value(act, g) * d;
    }
  }

  void glu_packed_forward(Act act, const Tensor& gu, Tensor& y) const override {
    const int64_t F = y.dim(1), T = y.dim(0);
    check_glu_packed("glu_packed_forward", gu, y);
#pragma omp parallel for if (T * F > 65536)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t f = 0; f < F; ++f)
        y.f32()[t * F + f] = act_value(act, gu.f32()[t * 2 * F + f]) * gu.f32()[t * 2 * F + F + f];
  }

  void glu_packed_backward(Act act, const Tensor& gu, const Tensor& dy,
                           Tensor& dgu) const override {
    const int64_t F = dy.dim(1), T = dy.dim(0);
    check_glu_packed("glu_packed_backward", gu, dy);
    check_glu_packed("glu_packed_backward", dgu, dy);
#pragma omp parallel for if (T * F > 65536)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t f = 0; f < F; ++f) {
        const float g = gu.f32()[t * 2 * F + f], u = gu.f32()[t * 2 * F + F + f];
        const float d = dy.f32()[t * F + f];
        dgu.f32()[t * 2 * F + f] = act_grad(act, g) * u * d;
        dgu.f32()[t * 2 * F + F + f] = act_value(act, g) * d;
      }
  }

  void copy_columns(const Tensor& src, int64_t src_col, Tensor& dst, int64_t dst_col,
                    int64_t width) const override {
    const int64_t rows = src.dim(0), sc = src.dim(1), dc = dst.dim(1);
    check_copy_columns(src, src_col, dst, dst_col, width);
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(dst.f32() + r * dc + dst_col, src.f32() + r * sc + src_col,
                  static_cast<size_t>(width) * sizeof(float));
  }

  void act_forward(Act act, const Tensor& x, Tensor& y) const override {
    check_same(x, y, "act_forward");
    const float* px = x.f32();
    float* py = y.f32();
    int64_t n = x.numel();
#pragma omp parallel for if (n > 65536)
    for (int64_t i = 0; i < n; ++i) py[i] = act_value(act, px[i]);
  }

  void act_backward(Act act, const Tensor& x, const Tensor& dy, Tensor& dx) const override {
    check_same(x, dy, "act_backward");
    check_same(x, dx, "act_backward");
    const float *px = x.f32(), *pdy = dy.f32();
    float* pdx = dx.f32();
    int64_t n = x.numel();
#pragma omp parallel for if (n > 65536)
    for (int64_t i = 0; i < n; ++i) pdx[i] = act_grad(act, px[i]) * pdy[i];
  }

  void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& y,
                         bool accumulate) const override {
    int64_t n = cols_of(table), vocab = rows_of(table), t = ids.numel();
    ET_CHECK(y.numel() == t * n, "embedding_forward: output size mismatch");
    const int32_t* pi = ids.i32();
    const float* pt = table.f32();
    float* py = y.f32();
    for (int64_t i = 0; i < t; ++i) {
      ET_CHECK(pi[i] >= 0 && pi[i] < vocab, "token id ", pi[i], " at position ", i,
               " is outside the embedding table of ", vocab, " rows");
      const float* src = pt + static_cast<int64_t>(pi[i]) * n;
      float* dst = py + i * n;
      if (accumulate) {
        for (int64_t j = 0; j < n; ++j) dst[j] += src[j];
      } else {
        std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      }
    }
  }

  void embedding_backward(const Tensor& ids, const Tensor& dy, Tensor& dtable) const override {
    int64_t n = cols_of(dtable), t = ids.numel();
    const int32_t* pi = ids.i32();
    const float* pd = dy.f32();
    float* pt = dtable.f32();
    for (int64_t i = 0; i < t; ++i)
      for (int64_t j = 0; j < n; ++j) pt[static_cast<int64_t>(pi[i]) * n + j] += pd[i * n + j];
  }

  // Scores of one query row against the keys of its sequence; masked keys get -inf.
  static void scores_row(const AttentionArgs& a, const float* qi, const float* kbase,
                         int64_t kstride, int len, int i, int h, float* s) {
    const int d = a.head_dim;
    const float* bias = a.rel_bias ? a.rel_bias->f32() : nullptr;
    for (int j = 0; j < len; ++j) {
      bool masked = (a.causal && j > i) || (a.window >= 0 && std::abs(i - j) > a.window);
      if (masked) {
        s[j] = -std::numeric_limits<float>::infinity();
        continue;
      }
      const float* kj = kbase + j * kstride;
      float dot = 0;
      for (int c = 0; c < d; ++c) dot += qi[c] * kj[c];
      float v = dot * a.scale;
      if (bias) {
        int bucket = relative_position_bucket(j - i, a.rel_buckets, a.rel_max_distance);
        v += bias[bucket * a.n_heads + h];
      }
      s[j] = v;
    }
  }

  // fp32 data of a tensor or of a 2-D view whose rows lie row_pitch() apart
  static float* f32_rows(const Tensor& t) {
    ET_CHECK(t.dtype == DType::F32, "tensor dtype is ", dtype_name(t.dtype), ", expected F32");
    ET_CHECK(!t.pitch || t.ndim() == 2, "a strided view ", shape_str(t.shape), " of ", t.ndim(),
             " dimensions");
    return static_cast<float*>(t.data);
  }
  // k's and v's row stride (one for both)
  static int64_t kv_stride(const Tensor& k, const Tensor& v) {
    ET_CHECK(k.row_pitch() == v.row_pitch(), "attention: k and v rows ", k.row_pitch(), " and ",
             v.row_pitch(), " apart");
    return k.row_pitch();
  }
  // zeros in every row of a tensor or 2-D view (not in the spare columns between a view's rows)
  static void zero_rows(Tensor& t) {
    const int64_t rows = rows_of(t), cols = cols_of(t), pitch = t.row_pitch();
    float* p = f32_rows(t);
    for (int64_t r = 0; r < rows; ++r) std::fill_n(p + r * pitch, cols, 0.0f);
  }
  void attention_forward(const AttentionArgs& a, const Tensor& q, const Tensor& k, const Tensor& v,
                         Tensor& out, Tensor& lse) const override {
    const int hq = a.n_heads, hk = a.n_kv_heads, d = a.head_dim, group = hq / hk;
    // rows of q, k/v and out (2-D views of wider buffers too: Tensor::pitch)
    const int64_t qs = q.row_pitch(), ks = kv_stride(k, v), os = out.row_pitch();
    const float *pq = f32_rows(q), *pk = f32_rows(k), *pv = f32_rows(v);
    float *po = f32_rows(out), *pl = lse.f32();
    const int nseq = static_cast<int>(a.cu_seqlens.size()) - 1;
    const DropoutMask drop = dropout_mask(a.dropout, "attention");
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (int b = 0; b < nseq; ++b) {
      for (int h = 0; h < hq; ++h) {
        const int64_t start = a.cu_seqlens[b];
        const int len = a.cu_seqlens[b + 1] - a.cu_seqlens[b];
        const int kvh = h / group;
        std::vector<float> s(static_cast<size_t>(len));
        for (int i = 0; i < len; ++i) {
          const float* qi = pq + (start + i) * qs + h * d;
          scores_row(a, qi, pk + start * ks + kvh * d, ks, len, i, h, s.data());
          float m = -std::numeric_limits<float>::infinity();
          for (int j = 0; j < len; ++j) m = std::max(m, s[j]);
          double l = 0;
          for (int j = 0; j < len; ++j) l += (s[j] = std::exp(s[j] - m));
          float* oi = po + (start + i) * os + h * d;
          std::fill(oi, oi + d, 0.0f);
          const uint32_t key = drop.row_key((start + i) * hq + h);
          for (int j = 0; j < len; ++j) {
            float p = static_cast<float>(s[j] / l);
            if (a.dropout.active()) p = drop.apply(key, j, p);
            const float* vj = pv + (start + j) * ks + kvh * d;
            for (int c = 0; c < d; ++c) oi[c] += p * vj[c];
          }
          pl[(start + i) * hq + h] = m + static_cast<float>(std::log(l));
        }
      }
    }
  }

  // P = exp(S - lse); dP = dO V^T; dS = P (dP - rowsum(dO * O)); dQ = scale dS K;
  // dK = scale dS^T Q; dV = P^T dO; d_bias[bucket(j - i), h] += dS.
  // With dropout (Z = keep / (1 - p), O = (P Z) V): dV = (P Z)^T dO, dS = P (dP Z - D) where
  // D = rowsum(dO * O) = rowsum(P Z dP) still.
  void attention_backward(const AttentionArgs& a, const Tensor& q, const Tensor& k, const Tensor& v,
                          const Tensor& out, const Tensor& lse, const Tensor& dout, Tensor& dq,
                          Tensor& dk, Tensor& dv, Tensor* d_rel_bias) const override {
    const int hq = a.n_heads, hk = a.n_kv_heads, d = a.head_dim, group = hq / hk;
    // rows of each operand (2-D views of wider buffers too: Tensor::pitch)
    const int64_t qs = q.row_pitch(), ks = kv_stride(k, v), os = out.row_pitch(),
                  gs = dout.row_pitch(), dqs = dq.row_pitch(), dks = dk.row_pitch(),
                  dvs = dv.row_pitch();
    const float *pq = f32_rows(q), *pk = f32_rows(k), *pv = f32_rows(v), *po = f32_rows(out),
                *pl = lse.f32(), *pdo = f32_rows(dout);
    float *pdq = f32_rows(dq), *pdk = f32_rows(dk), *pdv = f32_rows(dv);
    float* pdb = d_rel_bias ? d_rel_bias->f32() : nullptr;
    for (Tensor* t : {&dq, &dk, &dv}) zero_rows(*t);
    const int nseq = static_cast<int>(a.cu_seqlens.size()) - 1;
    const DropoutMask drop = dropout_mask(a.dropout, "attention");
    // Parallel over sequences only: heads of one group write the same dK/dV rows. The bias
    // gradient is summed per sequence, then over sequences in order (deterministic).
    const size_t nbias = pdb ? static_cast<size_t>(a.rel_buckets) * hq : 0;
    std::vector<double> dbias(nbias * static_cast<size_t>(std::max(nseq, 0)), 0.0);
#pragma omp parallel for schedule(dynamic)
    for (int b = 0; b < nseq; ++b) {
      const int64_t start = a.cu_seqlens[b];
      const int len = a.cu_seqlens[b + 1] - a.cu_seqlens[b];
      std::vector<float> s(static_cast<size_t>(len));
      double* dbias_local = dbias.data() + nbias * b;
      for (int h = 0; h < hq; ++h) {
        const int kvh = h / group;
        for (int i = 0; i < len; ++i) {
          const float* qi = pq + (start + i) * qs + h * d;
          const float* oi = po + (start + i) * os + h * d;
          const float* doi = pdo + (start + i) * gs + h * d;
          scores_row(a, qi, pk + start * ks + kvh * d, ks, len, i, h, s.data());
          const float li = pl[(start + i) * hq + h];
          float dsum = 0;
          for (int c = 0; c < d; ++c) dsum += doi[c] * oi[c];
          float* dqi = pdq + (start + i) * dqs + h * d;
          const uint32_t key = drop.row_key((start + i) * hq + h);
          for (int j = 0; j < len; ++j) {
            if (std::isinf(s[j])) continue;
            float p = std::exp(s[j] - li);
            const float* kj = pk + (start + j) * ks + kvh * d;
            const float* vj = pv + (start + j) * ks + kvh * d;
            float dp = 0;
            for (int c = 0; c < d; ++c) dp += doi[c] * vj[c];
            float z = 1.0f;  // dropout's keep / (1 - p)
            if (a.dropout.active()) z = drop.factor(key, j);
            float ds = p * (dp * z - dsum);
            float* dkj = pdk + (start + j) * dks + kvh * d;
            float* dvj = pdv + (start + j) * dvs + kvh * d;
            for (int c = 0; c < d; ++c) {
              dqi[c] += a.scale * ds * kj[c];
              dkj[c] += a.scale * ds * qi[c];
              dvj[c] += p * z * doi[c];
            }
            if (pdb) {
              int bucket = relative_position_bucket(j - i, a.rel_buckets, a.rel_max_distance);
              dbias_local[static_cast<size_t>(bucket) * hq + h] += ds;
            }
          }
        }
      }
    }
    for (int b = 0; b < nseq; ++b)
      for (size_t x = 0; x < nbias; ++x) pdb[x] += static_cast<float>(dbias[nbias * b + x]);
  }

  void pool_forward(PoolMode mode, const Tensor& x, const std::vector<int32_t>& cu,
                    const std::vector<int32_t>& skip, Tensor& out, Tensor* argmax) const override {
    const int64_t c = cols_of(x);
    const int nseq = static_cast<int>(cu.size()) - 1;
    ET_CHECK(out.numel() == nseq * c, "pool_forward: output size mismatch");
    const float* px = x.f32();
    float* po = out.f32();
    for (int b = 0; b < nseq; ++b) {
      const int start = cu[b], len = cu[b + 1] - cu[b];
      const int first = mode == PoolMode::Cls || mode == PoolMode::LastToken
                            ? 0
                            : std::min(skip.empty() ? 0 : skip[b], len);
      float* o = po + b * c;
      std::fill(o, o + c, 0.0f);
      if (len == 0) continue;
      switch (mode) {
        case PoolMode::Cls:
          std::memcpy(o, px + start * c, c * sizeof(float));
          break;
        case PoolMode::LastToken:
          std::memcpy(o, px + (start + len - 1) * c, c * sizeof(float));
          break;
        case PoolMode::Max: {
          int32_t* am = argmax->i32() + b * c;
          for (int64_t j = 0; j < c; ++j) {
            // masked (prompt) tokens take part with the value -1e9, as sentence-transformers does
            float best = first > 0 ? -1e9f : -std::numeric_limits<float>::infinity();
            int32_t arg = -1;
            for (int t = first; t < len; ++t) {
              float v = px[(start + t) * c + j];
              if (v > best) {
                best = v;
                arg = start + t;
              }
            }
            o[j] = best;
            am[j] = arg;
          }
          break;
        }
        case PoolMode::Mean:
        case PoolMode::MeanSqrtLen:
        case PoolMode::WeightedMean: {
          double wsum = 0;
          for (int t = first; t < len; ++t) {
            float w = mode == PoolMode::WeightedMean ? static_cast<float>(t + 1) : 1.0f;
            wsum += w;
            const float* row = px + (start + t) * c;
            for (int64_t j = 0; j < c; ++j) o[j] += w * row[j];
          }
          double denom = std::max(wsum, 1e-9);
          if (mode == PoolMode::MeanSqrtLen) denom = std::sqrt(denom);
          for (int64_t j = 0; j < c; ++j) o[j] = static_cast<float>(o[j] / denom);
          break;
        }
      }
    }
  }

  void pool_backward(PoolMode mode, const Tensor& dout, const std::vector<int32_t>& cu,
                     const std::vector<int32_t>& skip, const Tensor* argmax,
                     Tensor& dx) const override {
    const int64_t c = cols_of(dx);
    const int nseq = static_cast<int>(cu.size()) - 1;
    const float* pd = dout.f32();
    float* px = dx.f32();
    fill(dx, 0);
    for (int b = 0; b < nseq; ++b) {
      const int start = cu[b], len = cu[b + 1] - cu[b];
      if (len == 0) continue;
      const int first = mode == PoolMode::Cls || mode == PoolMode::LastToken
                            ? 0
                            : std::min(skip.empty() ? 0 : skip[b], len);
      const float* g = pd + b * c;
      switch (mode) {
        case PoolMode::Cls:
          std::memcpy(px + start * c, g, c * sizeof(float));
          break;
        case PoolMode::LastToken:
          std::memcpy(px + (start + len - 1) * c, g, c * sizeof(float));
          break;
        case PoolMode::Max: {
          const int32_t* am = argmax->i32() + b * c;
          for (int64_t j = 0; j < c; ++j)
            if (am[j] >= 0) px[am[j] * c + j] += g[j];
          break;
        }
        case PoolMode::Mean:
        case PoolMode::MeanSqrtLen:
        case PoolMode::WeightedMean: {
          double wsum = 0;
          for (int t = first; t < len; ++t)
            wsum += mode == PoolMode::WeightedMean ? static_cast<double>(t + 1) : 1.0;
          double denom = std::max(wsum, 1e-9);
          if (mode == PoolMode::MeanSqrtLen) denom = std::sqrt(denom);
          for (int t = first; t < len; ++t) {
            float w = static_cast<float>(
                (mode == PoolMode::WeightedMean ? static_cast<double>(t + 1) : 1.0) / denom);
            for (int64_t j = 0; j < c; ++j) px[(start + t) * c + j] = w * g[j];
          }
          break;
        }
      }
    }
  }

  void adamw_step(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int64_t step) const override {
    check_same(p, g, "adamw_step");
    float *pp = p.f32(), *pm = m.f32(), *pv = v.f32();
    const float* pg = g.f32();
    const double bc1 = 1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(step));
    const double bc2 = 1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(step));
    const float step_size = static_cast<float>(lr / bc1);
    const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
    for (int64_t i = 0, n = p.numel(); i < n; ++i) {
      pp[i] *= 1.0f - lr * weight_decay;
      pm[i] = beta1 * pm[i] + (1 - beta1) * pg[i];
      pv[i] = beta2 * pv[i] + (1 - beta2) * pg[i] * pg[i];
      pp[i] -= step_size * pm[i] / (std::sqrt(pv[i]) / bc2_sqrt + eps);
    }
  }

  double sum_squares(const Tensor& t) const override {
    const float* p = t.f32();
    double s = 0;
    for (int64_t i = 0, n = t.numel(); i < n; ++i) s += static_cast<double>(p[i]) * p[i];
    return s;
  }

  void l2norm_forward(const Tensor& x, Tensor& y, Tensor& norms) const override {
    int64_t n = cols_of(x), r = rows_of(x);
    const float* px = x.f32();
    float *py = y.f32(), *pn = norms.f32();
    for (int64_t i = 0; i < r; ++i) {
      double s = 0;
      for (int64_t j = 0; j < n; ++j) s += static_cast<double>(px[i * n + j]) * px[i * n + j];
      float nv = static_cast<float>(std::sqrt(s));
      pn[i] = nv;
      float denom = std::max(nv, 1e-12f);
      for (int64_t j = 0; j < n; ++j) py[i * n + j] = px[i * n + j] / denom;
    }
  }

  // y = x / max(|x|, eps): dx = (dy - y (y . dy)) / |x| when |x| > eps, else dy / eps.
  void l2norm_backward(const Tensor& dy, const Tensor& y, const Tensor& norms,
                       Tensor& dx) const override {
    int64_t n = cols_of(y), r = rows_of(y);
    const float *pdy = dy.f32(), *py = y.f32(), *pn = norms.f32();
    float* pdx = dx.f32();
    for (int64_t i = 0; i < r; ++i) {
      if (pn[i] <= 1e-12f) {
        for (int64_t j = 0; j < n; ++j) pdx[i * n + j] = pdy[i * n + j] / 1e-12f;
        continue;
      }
      double dot = 0;
      for (int64_t j = 0; j < n; ++j) dot += static_cast<double>(py[i * n + j]) * pdy[i * n + j];
      for (int64_t j = 0; j < n; ++j)
        pdx[i * n + j] = (pdy[i * n + j] - py[i * n + j] * static_cast<float>(dot)) / pn[i];
    }
  }

  void diagonal_cross_entropy(const Tensor& logits, float grad_scale, Tensor& loss,
                              Tensor& dlogits) const override {
    check_diagonal_cross_entropy(logits, loss, dlogits);
    const int64_t r = logits.dim(0), c = logits.dim(1);
    const float* x = logits.f32();
    float *pl = loss.f32(), *dx = dlogits.f32();
    for (int64_t i = 0; i < r; ++i) {
      const float* row = x + i * c;
      double mx = row[0];
      for (int64_t j = 1; j < c; ++j) mx = std::max(mx, static_cast<double>(row[j]));
      double z = 0;
      for (int64_t j = 0; j < c; ++j) z += std::exp(row[j] - mx);
      const double lse = mx + std::log(z);
      pl[i] = static_cast<float>(lse - row[i]);
      for (int64_t j = 0; j < c; ++j)
        dx[i * c + j] = static_cast<float>(grad_scale * (std::exp(row[j] - lse) - (j == i)));
    }
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() {
  return std::make_unique<CpuBackend>();
}

}  // namespace et
