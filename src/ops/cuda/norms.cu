#include "ops/cuda/norms.h"

#include <algorithm>

#include "ops/cuda/cuda_common.h"

namespace et::cuda {

namespace {

constexpr int kWarps = 8;  // rows in flight per block
// Backward with parameter gradients: 4 blocks per H100 SM, so there are few partial dw/db sums
// to add; without them every warp takes one row, as in forward.
constexpr int kMaxBackwardBlocks = 528;

// y = xhat (w + offset) + b, 8 columns per thread (n % 8 == 0, aligned operands).
__global__ void norm_scale_shift_vec(Ptr xhat, const float* w, float offset, const float* b, Ptr y,
                                     int64_t n8, int cols8) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n8;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(i % cols8) * 8;
    float v[8], wv[8], bv[8] = {};
    xhat.load8(i * 8, v);
    load_w8(w, c, offset, wv);
    if (b) load_w8(b, c, 0.0f, bv);
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = __fmaf_rn(v[j], wv[j], bv[j]);
    y.store8(i * 8, v);
  }
}

__global__ void norm_scale_shift_kernel(Ptr xhat, const float* w, float offset, const float* b,
                                        Ptr y, int64_t total, int n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(i % n);
    y.set(i, __fmaf_rn(xhat.get(i), w[c] + offset, b ? b[c] : 0.0f));
  }
}

// Model dropout folded into the norms (training): the forward's input x becomes the residual
// sum x + dropout(branch), written back to x; the backward also writes dropout(dx) to
// `dropped`. The mask is dropout_mask.h's, as the standalone dropout kernels draw it.
struct NormDropout {
  Ptr io;  // forward: the branch; backward: where dropout(dx) goes
  DropoutMask mask;
};
__device__ __forceinline__ void apply_dropout8(const NormDropout& d, int64_t row, int c, float* v) {
  const uint32_t key = d.mask.row_key(row);
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] = d.mask.apply(key, c + j, v[j]);
}

// dx of 8 columns from element i into `out` (NormGradOut); v itself is left as it was.
__device__ __forceinline__ void store_grad8(const NormGradOut& out, int64_t i, const float* v) {
  float s[8];
  if (out.accumulate) {
    out.dx.load8(i, s);
#pragma unroll
    for (int j = 0; j < 8; ++j) s[j] += v[j];
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) s[j] = v[j];
  }
  out.dx.store8(i, s);
  if (out.copy.p) out.copy.store8(i, s);
}

template <int V, bool kDrop>
__global__ void layernorm_forward_vec(Ptr x, const float* w, const float* b, float eps, Ptr y,
                                      int64_t ldy, float* mean, float* rstd, Ptr xhat, int64_t rows,
                                      int n, NormDropout drop) {
  const int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  float v[V][8], s = 0;
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const int c = 8 * (lane + 32 * k);
    if (c >= n) continue;
    x.load8(r * n + c, v[k]);
    if constexpr (kDrop) {
      float a[8];
      drop.io.load8(r * n + c, a);
      apply_dropout8(drop, r, c, a);
#pragma unroll
      for (int j = 0; j < 8; ++j)  // the sum as stored (bf16): the norm of the saved tensor
        v[k][j] = x.bf ? __bfloat162float(__float2bfloat16(v[k][j] + a[j])) : v[k][j] + a[j];
      x.store8(r * n + c, v[k]);
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) s += v[k][j];
  }
  const float mu = warp_sum(s) / n;
  float var = 0;
#pragma unroll
  for (int k = 0; k < V; ++k)
    if (8 * (lane + 32 * k) < n)
#pragma unroll
      for (int j = 0; j < 8; ++j) var += (v[k][j] - mu) * (v[k][j] - mu);
  const float rs = rsqrtf(warp_sum(var) / n + eps);
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const int c = 8 * (lane + 32 * k);
    if (c >= n) continue;
    float wv[8], bv[8] = {};
    load_w8(w, c, 0.0f, wv);
    if (b) load_w8(b, c, 0.0f, bv);
#pragma unroll
    for (int j = 0; j < 8; ++j) v[k][j] = (v[k][j] - mu) * rs;
    if (xhat.p) xhat.store8(r * n + c, v[k]);
#pragma unroll
    for (int j = 0; j < 8; ++j) v[k][j] = __fmaf_rn(v[k][j], wv[j], bv[j]);
    y.store8(r * ldy + c, v[k]);
  }
  if (lane == 0) mean[r] = mu, rstd[r] = rs;
}

// With kGrads, per-lane column sums (dw, db) over the rows a warp visits stay in registers;
// then once per warp into shared memory and once per block into global memory. Without (frozen
// norms, as under LoRA) each warp takes one row. The row is read twice (the second time from
// L1, just after the first) rather than held across the reductions: holding it and the sums
// took 144 registers at n = 768, one block of 8 warps per SM, and left the kernel at 60% of
// memory bandwidth.
template <int V, bool kGrads, bool kDrop>
__global__ void __launch_bounds__(kWarps * 32, kGrads ? 2 : 4)
    layernorm_backward_vec(Ptr dy, Ptr x, const float* w, const float* mean, const float* rstd,
                           NormGradOut dx, float* dw, float* db, int64_t rows, int n,
                           NormDropout drop) {
  extern __shared__ float acc[];  // [2n] when kGrads
  if constexpr (kGrads) {
    for (int c = threadIdx.x; c < 2 * n; c += blockDim.x) acc[c] = 0;
    __syncthreads();
  }
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float wsum[V][8] = {}, bsum[V][8] = {};
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * warps + warp; r < rows;
       r += static_cast<int64_t>(gridDim.x) * warps) {
    // mean null: x holds the saved xhat
    const float mu = mean ? mean[r] : 0.0f, rs = rstd[r], xs = mean ? rs : 1.0f;
    float a = 0, bb = 0;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int c = 8 * (lane + 32 * k);
      if (c >= n) continue;
      float g[8], xh[8], wv[8];
      dy.load8(r * n + c, g);
      x.load8(r * n + c, xh);
      load_w8(w, c, 0.0f, wv);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        xh[j] = (xh[j] - mu) * xs;
        const float d = g[j] * wv[j];
        a += d;
        bb += d * xh[j];
        if constexpr (kGrads) {
          wsum[k][j] += g[j] * xh[j];
          bsum[k][j] += g[j];
        }
      }
    }
    a = warp_sum(a) / n;
    bb = warp_sum(bb) / n;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int c = 8 * (lane + 32 * k);
      if (c >= n) continue;
      float g[8], xh[8], wv[8];
      dy.load8(r * n + c, g);
      x.load8(r * n + c, xh);
      load_w8(w, c, 0.0f, wv);
#pragma unroll
      for (int j = 0; j < 8; ++j) g[j] = rs * (g[j] * wv[j] - a - (xh[j] - mu) * xs * bb);
      store_grad8(dx, r * n + c, g);
      if constexpr (kDrop) {
        apply_dropout8(drop, r, c, g);
        drop.io.store8(r * n + c, g);
      }
    }
  }
  if constexpr (kGrads) {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int c = 8 * (lane + 32 * k);
      if (c >= n) continue;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        if (dw) atomicAdd(&acc[c + j], wsum[k][j]);
        if (db) atomicAdd(&acc[n + c + j], bsum[k][j]);
      }
    }
    __syncthreads();
    for (int c = threadIdx.x; c < n; c += blockDim.x) {
      if (dw) atomicAdd(&dw[c], acc[c]);
      if (db) atomicAdd(&db[c], acc[n + c]);
    }
  }
}

// Row r's chunks of this lane (norms.h's layout) into v; chunks past n are left unset.
template <int V>
__device__ __forceinline__ void load_row_chunks(Ptr x, int64_t r, int n, int lane,
                                                float (&v)[V][8]) {
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const int c = 8 * (lane + 32 * k);
    if (c < n) x.load8(r * n + c, v[k]);
  }
}

// 1 / sqrt(mean(v^2) + eps) over the warp's row held in v.
template <int V>
__device__ __forceinline__ float rms_rstd(const float (&v)[V][8], int n, int lane, float eps) {
  float ss = 0;
#pragma unroll
  for (int k = 0; k < V; ++k) {
    if (8 * (lane + 32 * k) >= n) continue;
#pragma unroll
    for (int j = 0; j < 8; ++j) ss += v[k][j] * v[k][j];
  }
  return rsqrtf(warp_sum(ss) / n + eps);
}

// An RMSNorm's outputs from its input row in v (overwritten): xhat = v rstd (when xhat.p is
// set), y = xhat (w + offset), or with `accumulate` y += that; y's rows ldy apart.
template <int V>
__device__ __forceinline__ void store_rmsnorm_row(float (&v)[V][8], float rs, const float* w,
                                                  float offset, Ptr xhat, Ptr y, int64_t ldy,
                                                  bool accumulate, int64_t r, int n, int lane) {
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const int c = 8 * (lane + 32 * k);
    if (c >= n) continue;
    float wv[8];
    load_w8(w, c, offset, wv);
#pragma unroll
    for (int j = 0; j < 8; ++j) v[k][j] *= rs;
    if (xhat.p) xhat.store8(r * n + c, v[k]);
#pragma unroll
    for (int j = 0; j < 8; ++j) v[k][j] *= wv[j];
    if (accumulate) {
      float sum[8];
      y.load8(r * ldy + c, sum);
#pragma unroll
      for (int j = 0; j < 8; ++j) v[k][j] += sum[j];
    }
    y.store8(r * ldy + c, v[k]);
  }
}

template <int V>
__global__ void rmsnorm_forward_vec(Ptr x, const float* w, float offset, float eps, Ptr y,
                                    int64_t ldy, float* rstd, Ptr xhat, int64_t rows, int n,
                                    int accumulate) {
  const int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  float v[V][8];
  load_row_chunks<V>(x, r, n, lane, v);
  const float rs = rms_rstd<V>(v, n, lane, eps);
  store_rmsnorm_row<V>(v, rs, w, offset, xhat, y, ldy, accumulate, r, n, lane);
  if (lane == 0) rstd[r] = rs;
}

// A post norm adding into the residual stream and the pre norm reading the stream next (Gemma3's
// sandwich norms): sum += xhat1 (w1 + offset) with xhat1 = x rstd1, then y = xhat2 (w2 + offset)
// with xhat2 = sum rstd2, the new sum kept in registers between the two (rounded as stored when
// sum is bf16): 16 bytes an element with an fp32 sum instead of 20 in two passes.
template <int V>
__global__ void rmsnorm_add_rmsnorm_forward_vec(Ptr x, const float* w1, Ptr sum, float* rstd1,
                                                Ptr xhat1, const float* w2, Ptr y, int64_t ldy,
                                                float* rstd2, Ptr xhat2, float offset, float eps,
                                                int64_t rows, int n) {
  const int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  float v[V][8];
  load_row_chunks<V>(x, r, n, lane, v);
  const float rs1 = rms_rstd<V>(v, n, lane, eps);
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const int c = 8 * (lane + 32 * k);
    if (c >= n) continue;
    float wv[8], sv[8];
    load_w8(w1, c, offset, wv);
#pragma unroll
    for (int j = 0; j < 8; ++j) v[k][j] *= rs1;
    if (xhat1.p) xhat1.store8(r * n + c, v[k]);
    sum.load8(r * n + c, sv);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      v[k][j] = __fmaf_rn(v[k][j], wv[j], sv[j]);
      if (sum.bf) v[k][j] = __bfloat162float(__float2bfloat16(v[k][j]));
    }
    sum.store8(r * n + c, v[k]);
  }
  const float rs2 = rms_rstd<V>(v, n, lane, eps);
  store_rmsnorm_row<V>(v, rs2, w2, offset, xhat2, y, ldy, false, r, n, lane);
  if (lane == 0) rstd1[r] = rs1, rstd2[r] = rs2;
}

// Its backward with frozen norms (no dw): dsum += rstd2 (g2 - xhat2 mean(g2 xhat2)),
// g2 = dy2 (w2 + offset); then dx1 = rstd1 (g1 - xhat1 mean(g1 xhat1)), g1 = dsum (w1 + offset),
// from the new dsum held in registers: 16 bytes an element with an fp32 dsum instead of 20.
template <int V>
__global__ void __launch_bounds__(kWarps * 32)
    rmsnorm_add_rmsnorm_backward_vec(Ptr dy2, Ptr xhat2, const float* w2, const float* rstd2,
                                     Ptr dsum, Ptr xhat1, const float* w1, const float* rstd1,
                                     Ptr dx1, float offset, int64_t rows, int n) {
  const int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  float g[V][8], xh[V][8], dot = 0;
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const int c = 8 * (lane + 32 * k);
    if (c >= n) continue;
    float wv[8];
    dy2.load8(r * n + c, g[k]);
    xhat2.load8(r * n + c, xh[k]);
    load_w8(w2, c, offset, wv);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      g[k][j] *= wv[j];
      dot += g[k][j] * xh[k][j];
    }
  }
  dot = warp_sum(dot) / n;
  const float rs2 = rstd2[r], rs1 = rstd1[r];
  float dot1 = 0;
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const int c = 8 * (lane + 32 * k);
    if (c >= n) continue;
    float sv[8], wv[8];
    dsum.load8(r * n + c, sv);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      sv[j] += rs2 * (g[k][j] - xh[k][j] * dot);
      if (dsum.bf) sv[j] = __bfloat162float(__float2bfloat16(sv[j]));
    }
    dsum.store8(r * n + c, sv);
    xhat1.load8(r * n + c, xh[k]);
    load_w8(w1, c, offset, wv);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      g[k][j] = sv[j] * wv[j];
      dot1 += g[k][j] * xh[k][j];
    }
  }
  dot1 = warp_sum(dot1) / n;
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const int c = 8 * (lane + 32 * k);
    if (c >= n) continue;
#pragma unroll
    for (int j = 0; j < 8; ++j) g[k][j] = rs1 * (g[k][j] - xh[k][j] * dot1);
    dx1.store8(r * n + c, g[k]);
  }
}

// Same layout as layernorm_backward_vec (dw sums in registers, the row read twice).
template <int V, bool kGrads>
__global__ void __launch_bounds__(kWarps * 32, kGrads ? 2 : 4)
    rmsnorm_backward_vec(Ptr dy, Ptr x, bool normalized, const float* w, float offset,
                         const float* rstd, NormGradOut dx, float* dw, int64_t rows, int n) {
  extern __shared__ float acc[];  // [n] when kGrads
  if constexpr (kGrads) {
    for (int c = threadIdx.x; c < n; c += blockDim.x) acc[c] = 0;
    __syncthreads();
  }
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float wsum[V][8] = {};
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * warps + warp; r < rows;
       r += static_cast<int64_t>(gridDim.x) * warps) {
    const float rs = rstd[r], xs = normalized ? 1.0f : rs;
    float dot = 0;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int c = 8 * (lane + 32 * k);
      if (c >= n) continue;
      float g[8], xv[8], wv[8];  // xv: xhat
      dy.load8(r * n + c, g);
      x.load8(r * n + c, xv);
      load_w8(w, c, offset, wv);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        xv[j] *= xs;
        dot += g[j] * wv[j] * xv[j];
        if constexpr (kGrads) wsum[k][j] += g[j] * xv[j];
      }
    }
    dot = warp_sum(dot) / n;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int c = 8 * (lane + 32 * k);
      if (c >= n) continue;
      float g[8], xv[8], wv[8];
      dy.load8(r * n + c, g);
      x.load8(r * n + c, xv);
      load_w8(w, c, offset, wv);
#pragma unroll
      for (int j = 0; j < 8; ++j) g[j] = rs * (g[j] * wv[j] - xv[j] * xs * dot);
      store_grad8(dx, r * n + c, g);
    }
  }
  if constexpr (kGrads) {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int c = 8 * (lane + 32 * k);
      if (c >= n) continue;
#pragma unroll
      for (int j = 0; j < 8; ++j) atomicAdd(&acc[c + j], wsum[k][j]);
    }
    __syncthreads();
    for (int c = threadIdx.x; c < n; c += blockDim.x) atomicAdd(&dw[c], acc[c]);
  }
}

// V = ceil(n / 256) chunks of 8 columns per lane, 1..4.
template <typename F>
void dispatch_chunks(int n, F&& f) {
  with_constant_in<1, 2, 3, 4>(std::min((n + 255) / 256, 4), f);
}

unsigned forward_blocks(int64_t rows) {
  return static_cast<unsigned>((rows + kWarps - 1) / kWarps);
}
unsigned backward_blocks(int64_t rows, bool grads) {
  return grads ? static_cast<unsigned>(
                     std::min<int64_t>((rows + kWarps - 1) / kWarps, kMaxBackwardBlocks))
               : forward_blocks(rows);
}

}  // namespace

bool norm_rows_vectorised(int n, std::initializer_list<const void*> operands) {
  if (n <= 0 || n > 1024 || n % 8 != 0) return false;
  for (const void* p : operands)
    if (p && !vec8_aligned(p)) return false;
  return true;
}

void layernorm_forward_rows(Ptr x, const float* w, const float* b, float eps, Ptr y, int64_t ldy,
                            float* mean, float* rstd, Ptr xhat, int64_t rows, int n, Ptr branch,
                            const DropoutSite& d) {
  if (rows == 0) return;
  const NormDropout drop{branch, dropout_mask(d, "dropout_add_layernorm_forward")};
  dispatch_chunks(n, [&](auto v) {
    constexpr int kV = decltype(v)::value;
    if (branch.p)
      layernorm_forward_vec<kV, true><<<forward_blocks(rows), kWarps * 32>>>(
          x, w, b, eps, y, ldy, mean, rstd, xhat, rows, n, drop);
    else
      layernorm_forward_vec<kV, false><<<forward_blocks(rows), kWarps * 32>>>(
          x, w, b, eps, y, ldy, mean, rstd, xhat, rows, n, drop);
  });
  ET_LAUNCH_CHECK();
}

void layernorm_backward_rows(Ptr dy, Ptr x, const float* w, const float* mean, const float* rstd,
                             NormGradOut dx, float* dw, float* db, int64_t rows, int n, Ptr dropped,
                             const DropoutSite& d) {
  if (rows == 0) return;
  const NormDropout drop{dropped, dropout_mask(d, "layernorm_backward_dropout")};
  dispatch_chunks(n, [&](auto v) {
    constexpr int kV = decltype(v)::value;
    auto launch = [&](auto kernel, bool grads) {
      kernel<<<backward_blocks(rows, grads), kWarps * 32, grads ? 2 * sizeof(float) * n : 0>>>(
          dy, x, w, mean, rstd, dx, dw, db, rows, n, drop);
    };
    const bool grads = dw || db;
    if (grads && dropped.p)
      launch(layernorm_backward_vec<kV, true, true>, true);
    else if (grads)
      launch(layernorm_backward_vec<kV, true, false>, true);
    else if (dropped.p)
      launch(layernorm_backward_vec<kV, false, true>, false);
    else
      launch(layernorm_backward_vec<kV, false, false>, false);
  });
  ET_LAUNCH_CHECK();
}

void rmsnorm_forward_rows(Ptr x, const float* w, float offset, float eps, Ptr y, int64_t ldy,
                          float* rstd, Ptr xhat, int64_t rows, int n, bool accumulate) {
  if (rows == 0) return;
  dispatch_chunks(n, [&](auto v) {
    rmsnorm_forward_vec<decltype(v)::value><<<forward_blocks(rows), kWarps * 32>>>(
        x, w, offset, eps, y, ldy, rstd, xhat, rows, n, accumulate);
  });
  ET_LAUNCH_CHECK();
}

void rmsnorm_backward_rows(Ptr dy, Ptr x, bool normalized, const float* w, float offset,
                           const float* rstd, NormGradOut dx, float* dw, int64_t rows, int n) {
  if (rows == 0) return;
  dispatch_chunks(n, [&](auto v) {
    if (dw)
      rmsnorm_backward_vec<decltype(v)::value, true>
          <<<backward_blocks(rows, true), kWarps * 32, sizeof(float) * n>>>(
              dy, x, normalized, w, offset, rstd, dx, dw, rows, n);
    else
      rmsnorm_backward_vec<decltype(v)::value, false>
          <<<backward_blocks(rows, false), kWarps * 32>>>(dy, x, normalized, w, offset, rstd, dx,
                                                          dw, rows, n);
  });
  ET_LAUNCH_CHECK();
}

void rmsnorm_add_rmsnorm_forward_rows(Ptr x, const float* w1, Ptr sum, float* rstd1, Ptr xhat1,
                                      const float* w2, Ptr y, int64_t ldy, float* rstd2, Ptr xhat2,
                                      float offset, float eps, int64_t rows, int n) {
  if (rows == 0) return;
  dispatch_chunks(n, [&](auto v) {
    rmsnorm_add_rmsnorm_forward_vec<decltype(v)::value><<<forward_blocks(rows), kWarps * 32>>>(
        x, w1, sum, rstd1, xhat1, w2, y, ldy, rstd2, xhat2, offset, eps, rows, n);
  });
  ET_LAUNCH_CHECK();
}

void rmsnorm_add_rmsnorm_backward_rows(Ptr dy2, Ptr xhat2, const float* w2, const float* rstd2,
                                       Ptr dsum, Ptr xhat1, const float* w1, const float* rstd1,
                                       Ptr dx1, float offset, int64_t rows, int n) {
  if (rows == 0) return;
  dispatch_chunks(n, [&](auto v) {
    rmsnorm_add_rmsnorm_backward_vec<decltype(v)::value><<<forward_blocks(rows), kWarps * 32>>>(
        dy2, xhat2, w2, rstd2, dsum, xhat1, w1, rstd1, dx1, offset, rows, n);
  });
  ET_LAUNCH_CHECK();
}

void norm_scale_shift_rows(Ptr xhat, const float* w, float offset, const float* b, Ptr y,
                           int64_t rows, int n) {
  const int64_t total = rows * n;
  if (total == 0) return;
  const unsigned threads = 256;
  if (norm_rows_vectorised(n, {xhat.p, y.p, w, b})) {
    const int64_t n8 = total / 8;
    norm_scale_shift_vec<<<
        static_cast<unsigned>(std::min<int64_t>((n8 + threads - 1) / threads, 65535)), threads>>>(
        xhat, w, offset, b, y, n8, n / 8);
  } else {
    norm_scale_shift_kernel<<<static_cast<unsigned>(
                                  std::min<int64_t>((total + threads - 1) / threads, 65535)),
                              threads>>>(xhat, w, offset, b, y, total, n);
  }
  ET_LAUNCH_CHECK();
}

}  // namespace et::cuda
