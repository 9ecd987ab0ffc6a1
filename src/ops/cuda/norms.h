// Row normalisations (LayerNorm, RMSNorm) with one warp per row held in registers: each lane
// owns 8-column chunks c = 8 (lane + 32 k), k < V = ceil(n / 256), read once with 16-byte
// accesses. For rows of n <= 1024 columns, n % 8 == 0 and 16-byte aligned operands
// (norm_rows_vectorised); the generic kernels in cuda_backend.cu take the rest.
//   LayerNorm: xhat = (x - mu) rstd, y = xhat w + b;
//              dx = rstd (dy w - mean(dy w) - xhat mean(dy w xhat)),
//              dw += sum_rows dy xhat, db += sum_rows dy.
//   RMSNorm:   xhat = x rstd, y = xhat (w + offset);  dx = rstd (g - xhat mean(g xhat)),
//              g = dy (w + offset), dw += sum_rows dy xhat.
// Forward writes xhat too when xhat.p is set (y from the unrounded value); backward
// reads x as xhat when mean is null (LayerNorm) or `normalized` (RMSNorm). dw, db accumulate
// (+=) and may be null; dx is written or added to (NormGradOut).
#pragma once

#include <cstdint>

#include "ops/cuda/operand.cuh"
#include "ops/dropout_mask.h"

namespace et::cuda {

bool norm_rows_vectorised(int n, std::initializer_list<const void*> operands);

// Where a backward's dx goes: written, or with `accumulate` added to what dx holds (the gradient
// of a residual stream that the norm's input joined: one pass instead of writing dx and adding
// it after); with copy.p set, the value stored in dx also goes there, in copy's dtype (the bf16
// operand of the products that read the sum next, instead of a conversion pass).
struct NormGradOut {
  Ptr dx;
  int accumulate = 0;
  Ptr copy = {nullptr, 0};
};

// With branch.p set, the forward first sums x += dropout(branch) (the mask of dropout_mask.h,
// rows from 0) into x, and normalises that sum as stored; with dropped.p set, the backward also
// writes dropout(dx) there (model dropout's residual sums folded into the norms next to them).
// The forward's y rows lie ldy >= n apart, as rmsnorm_forward_rows's below.
void layernorm_forward_rows(Ptr x, const float* w, const float* b, float eps, Ptr y, int64_t ldy,
                            float* mean, float* rstd, Ptr xhat, int64_t rows, int n,
                            Ptr branch = {nullptr, 0}, const DropoutSite& d = {});
void layernorm_backward_rows(Ptr dy, Ptr x, const float* w, const float* mean, const float* rstd,
                             NormGradOut dx, float* dw, float* db, int64_t rows, int n,
                             Ptr dropped = {nullptr, 0}, const DropoutSite& d = {});
// y's rows lie ldy >= n elements apart (a Linear's input with spare columns, model/linear.h;
// ldy % 8 == 0 and y 16-byte aligned, as norm_rows_vectorised asks). With `accumulate`,
// y += the output (a residual stream that a post norm's output joins).
void rmsnorm_forward_rows(Ptr x, const float* w, float offset, float eps, Ptr y, int64_t ldy,
                          float* rstd, Ptr xhat, int64_t rows, int n, bool accumulate = false);
void rmsnorm_backward_rows(Ptr dy, Ptr x, bool normalized, const float* w, float offset,
                           const float* rstd, NormGradOut dx, float* dw, int64_t rows, int n);
// A post RMSNorm adding into the residual stream, then the RMSNorm that reads the stream next,
// in one pass: sum += N1(x), y = N2(sum) (xhat1, xhat2 optional; y's rows ldy apart, as for
// rmsnorm_forward_rows); and its backward with frozen norms: dsum += dN2(dy2), dx1 = dN1(dsum).
// Vectorised rows only (norm_rows_vectorised).
void rmsnorm_add_rmsnorm_forward_rows(Ptr x, const float* w1, Ptr sum, float* rstd1, Ptr xhat1,
                                      const float* w2, Ptr y, int64_t ldy, float* rstd2, Ptr xhat2,
                                      float offset, float eps, int64_t rows, int n);
void rmsnorm_add_rmsnorm_backward_rows(Ptr dy2, Ptr xhat2, const float* w2, const float* rstd2,
                                       Ptr dsum, Ptr xhat1, const float* w1, const float* rstd1,
                                       Ptr dx1, float offset, int64_t rows, int n);
// y = xhat (w + offset) + b (b may be null) over rows of n; any n and alignment.
void norm_scale_shift_rows(Ptr xhat, const float* w, float offset, const float* b, Ptr y,
                           int64_t rows, int n);

}  // namespace et::cuda
