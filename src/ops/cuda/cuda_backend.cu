// The CUDA backend (fp32 storage; matrix products on tensor cores through cuBLAS in TF32
// mode, fp32 accumulation everywhere). Elementwise and row-wise kernels are one thread per
// element or one warp per row; see each kernel's comment for its formula.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "ops/cuda/activation.cuh"
#include "ops/cuda/attention.h"
#include "ops/cuda/attention_gemm.h"
#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.h"
#include "ops/cuda/dropout.h"
#include "ops/cuda/gemm_lt.h"
#include "ops/cuda/host_staging.h"
#include "ops/cuda/lora_act.h"
#include "ops/cuda/lora_grad.h"
#include "ops/cuda/norms.h"
#include "ops/cuda/operand.cuh"
#include "ops/cuda/rope.h"
#include "ops/op_checks.h"

namespace et {

namespace cuda {
namespace {

// Sequences at least this long use the cuBLAS attention path for head dims above 128.
constexpr int kGemmMinLen = 128;
// Scratch of the cuBLAS attention path per bucket of sequences (score matrices and padded
// copies); a bucket that would need more is split.
constexpr size_t kGemmBudgetBytes = size_t{512} << 20;

// ---- memory -------------------------------------------------------------------------------

// Caching allocator. Released blocks stay on a free list and a request takes the smallest free
// block that fits when it is at most 1/8 larger (so steps of varying shapes, as in the real
// length mixes, reuse blocks instead of calling cudaMalloc). Sizes are rounded only to 4 KiB
// (up to 1 MiB) or 2 MiB, and `in_use` counts the blocks actually handed out: fixed shapes
// pay no rounding (power-of-two size classes cost up to 11% of a [T, 2304] activation).
struct Pool {
  std::mutex mu;
  std::multimap<size_t, void*> free_blocks;
  size_t reserved = 0, peak_reserved = 0, in_use = 0, peak_in_use = 0;
  int64_t mallocs = 0;  // cudaMalloc calls (none once a repeated step's blocks are cached)

  static size_t round(size_t n) {
    const size_t g = n <= (size_t{1} << 20) ? 4096 : size_t{2} << 20;
    return (std::max<size_t>(n, 1) + g - 1) / g * g;
  }
  // Returns the block and its size (the size to hand back to put).
  std::pair<void*, size_t> get(size_t bytes) {
    size_t n = round(bytes);
    std::lock_guard<std::mutex> g(mu);
    auto it = free_blocks.lower_bound(n);
    void* p = nullptr;
    if (it != free_blocks.end() && it->first <= n + n / 8) {
      n = it->first;
      p = it->second;
      free_blocks.erase(it);
    } else {
      cudaError_t e = cudaMalloc(&p, n);
      if (e != cudaSuccess) {  // release the cache and retry once
        cudaGetLastError();
        for (auto& [sz, q] : free_blocks) {
          cudaFree(q);
          reserved -= sz;
        }
        free_blocks.clear();
        e = cudaMalloc(&p, n);
        if (e != cudaSuccess) {
          size_t fr = 0, tot = 0;
          cudaGetLastError();
          cudaMemGetInfo(&fr, &tot);
          fail("out of GPU memory allocating ", n >> 20, " MiB (", fr >> 20, " MiB free of ",
               tot >> 20, "); lower the batch size or the sequence length");
        }
      }
      reserved += n;
      ++mallocs;
      peak_reserved = std::max(peak_reserved, reserved);
    }
    in_use += n;
    peak_in_use = std::max(peak_in_use, in_use);
    return {p, n};
  }
  void put(void* p, size_t n) {
    std::lock_guard<std::mutex> g(mu);
    in_use -= n;
    free_blocks.emplace(n, p);
  }
  ~Pool() {
    for (auto& [sz, p] : free_blocks) cudaFree(p);
  }
};

// ---- operands --------------------------------------------------------------------------

using bf16 = __nv_bfloat16;

// ---- elementwise kernels -----------------------------------------------------------------

__global__ void fill_kernel(Ptr y, float v, int64_t n) {
  GRID_STRIDE(i, n) y.set(i, v);
}
__global__ void add_kernel(Ptr a, Ptr b, Ptr y, int64_t n) {
  GRID_STRIDE(i, n) y.set(i, a.get(i) + b.get(i));
}
// The same, 8 elements per access, any mix of fp32 and bf16 operands (all bf16 in the BERT
// family; the residual stream is fp32 in the rotary families, their branches bf16).
__global__ void add_vec8_kernel(Ptr a, Ptr b, Ptr y, int64_t n8) {
  GRID_STRIDE(i, n8) {
    float u[8], v[8];
    a.load8(8 * i, u);
    b.load8(8 * i, v);
#pragma unroll
    for (int k = 0; k < 8; ++k) u[k] += v[k];
    y.store8(8 * i, u);
  }
}
__global__ void mul_kernel(Ptr a, Ptr b, Ptr y, int64_t n) {
  GRID_STRIDE(i, n) y.set(i, a.get(i) * b.get(i));
}
__global__ void scale_kernel(Ptr y, float s, int64_t n) {
  GRID_STRIDE(i, n) y.set(i, y.get(i) * s);
}
__global__ void convert_kernel(Ptr src, Ptr dst, int64_t n) {
  GRID_STRIDE(i, n) dst.set(i, src.get(i));
}
// y[r, c] += b[c]: a 2-D grid (columns fastest) avoids a 64-bit modulo per element.
__global__ void add_bias_kernel(Ptr y, const float* b, int64_t rows, int cols) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y)
    y.set(r * cols + c, y.get(r * cols + c) + b[c]);
}

// dbias[c] += sum_r dy[r, c]: blocks take 64-row slabs, one thread per column, then one
// atomic add per (slab, column).
__global__ void bias_backward_kernel(Ptr dy, float* db, int64_t rows, int64_t cols) {
  int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  int64_t r0 = static_cast<int64_t>(blockIdx.y) * 64, r1 = min(rows, r0 + 64);
  float s = 0;
  for (int64_t r = r0; r < r1; ++r) s += dy.get(r * cols + c);
  atomicAdd(&db[c], s);
}

// Vectorised bf16 paths: 8 values (16 bytes) per thread and access, for the common case of
// bf16 operands whose size is a multiple of 8.
struct Vec8 {
  float v[8];
  __device__ __forceinline__ void load(const bf16* p) { load_bf16x8(p, v); }
  __device__ __forceinline__ void store(bf16* p) const { store_bf16x8(p, v); }
};

// The bf16x8 kernels below are compiled per activation (template argument A = Act), so the
// activation's switch folds away instead of running per element.
template <int A>
__global__ void act_forward_bf16x8(const bf16* x, bf16* y, int64_t n8) {
  GRID_STRIDE(i, n8) {
    Vec8 a;
    a.load(x + 8 * i);
#pragma unroll
    for (int k = 0; k < 8; ++k) a.v[k] = act_f(A, a.v[k]);
    a.store(y + 8 * i);
  }
}
template <int A>
__global__ void act_backward_bf16x8(const bf16* x, const bf16* dy, bf16* dx, int64_t n8) {
  GRID_STRIDE(i, n8) {
    Vec8 a, g;
    a.load(x + 8 * i);
    g.load(dy + 8 * i);
#pragma unroll
    for (int k = 0; k < 8; ++k) a.v[k] = act_df(A, a.v[k]) * g.v[k];
    a.store(dx + 8 * i);
  }
}
__global__ void add_bias_bf16x8(bf16* y, const float* b, int64_t n8, int cols8) {
  GRID_STRIDE(i, n8) {
    Vec8 x;
    x.load(y + 8 * i);
    const float* bb = b + 8 * (i % cols8);
#pragma unroll
    for (int k = 0; k < 8; ++k) x.v[k] += bb[k];
    x.store(y + 8 * i);
  }
}
// dst = src in dst's storage type, 8 elements per access on both sides (16-byte aligned).
__global__ void convert_vec8_kernel(Ptr src, Ptr dst, int64_t n8) {
  GRID_STRIDE(i, n8) {
    float v[8];
    src.load8(8 * i, v);
    dst.store8(8 * i, v);
  }
}

// Gated linear units on bf16, 8 values per thread: gate and up at row stride `ld` (ld = F for
// separate tensors, 2F with up starting F columns after gate for a packed gate|up).
template <int A>
__global__ void glu_forward_bf16x8(const bf16* g, const bf16* u, int64_t ld, bf16* y, int64_t ldy,
                                   int64_t F, int64_t n8) {
  GRID_STRIDE(k, n8) {
    const int64_t e = 8 * k, t = e / F, f = e % F;
    Vec8 a, b;
    a.load(g + t * ld + f);
    b.load(u + t * ld + f);
#pragma unroll
    for (int j = 0; j < 8; ++j) a.v[j] = act_f(A, a.v[j]) * b.v[j];
    a.store(y + t * ldy + f);
  }
}
template <int A>
__global__ void glu_backward_bf16x8(const bf16* g, const bf16* u, int64_t ld, const bf16* dy,
                                    bf16* dg, bf16* du, int64_t F, int64_t n8) {
  GRID_STRIDE(k, n8) {
    const int64_t e = 8 * k, t = e / F, f = e % F;
    Vec8 a, b, d, ga, ub;
    a.load(g + t * ld + f);
    b.load(u + t * ld + f);
    d.load(dy + e);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      ga.v[j] = act_df(A, a.v[j]) * b.v[j] * d.v[j];
      ub.v[j] = act_f(A, a.v[j]) * d.v[j];
    }
    ga.store(dg + t * ld + f);
    ub.store(du + t * ld + f);
  }
}

__global__ void act_forward_kernel(int act, Ptr x, Ptr y, int64_t n) {
  GRID_STRIDE(i, n) y.set(i, act_f(act, x.get(i)));
}
__global__ void act_backward_kernel(int act, Ptr x, Ptr dy, Ptr dx, int64_t n) {
  GRID_STRIDE(i, n) dx.set(i, act_df(act, x.get(i)) * dy.get(i));
}

// ---- row-wise kernels (one warp per row) ------------------------------------------------

// xhat.p null: xhat not written. Else xhat = (x - mu) rstd is stored too (y is computed from
// the unrounded value; see Backend::layernorm_forward).
__global__ void layernorm_forward_kernel(Ptr x, const float* w, const float* b, float eps, Ptr y,
                                         float* mean, float* rstd, Ptr xhat, int64_t rows, int n) {
  int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  int lane = threadIdx.x % 32;
  if (r >= rows) return;
  float s = 0;
  for (int c = lane; c < n; c += 32) s += x.get(r * n + c);
  float mu = warp_sum(s) / n;
  float v = 0;
  for (int c = lane; c < n; c += 32) {
    float d = x.get(r * n + c) - mu;
    v += d * d;
  }
  float rs = rsqrtf(warp_sum(v) / n + eps);
  for (int c = lane; c < n; c += 32) {
    const float xh = (x.get(r * n + c) - mu) * rs;
    if (xhat.p) xhat.set(r * n + c, xh);
    // one rounding, as norm_scale_shift computes it
    y.set(r * n + c, __fmaf_rn(xh, w[c], b ? b[c] : 0.0f));
  }
  if (lane == 0) {
    mean[r] = mu;
    rstd[r] = rs;
  }
}

// dx = rstd (dy w - mean(dy w) - xhat mean(dy w xhat)), xhat = (x - mean) rstd, or x itself
// when mean is null (x holds the saved normalized input). dw, db: each lane sums its columns over
// the rows its warp visits in registers (K = columns per lane, n <= 32 K), then once per warp
// into shared memory and once per block into global memory; K = 0 (wide rows) adds every
// row's terms into shared memory directly.
template <int K>
__global__ void layernorm_backward_kernel(Ptr dy, Ptr x, const float* w, const float* mean,
                                          const float* rstd, Ptr dx, float* dw, float* db,
                                          int64_t rows, int n) {
  extern __shared__ float acc[];  // [2n]
  for (int c = threadIdx.x; c < 2 * n; c += blockDim.x) acc[c] = 0;
  __syncthreads();
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  constexpr int KR = K > 0 ? K : 1;
  float wsum[KR] = {}, bsum_c[KR] = {};
  const int kn = K > 0 ? K : (n + 31) / 32;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * warps + warp; r < rows;
       r += static_cast<int64_t>(gridDim.x) * warps) {
    const float mu = mean ? mean[r] : 0.0f, rs = rstd[r], xs = mean ? rs : 1.0f;
    float a = 0, bsum = 0;
#pragma unroll
    for (int k = 0; k < kn; ++k) {
      const int c = lane + 32 * k;
      if (c >= n) continue;
      float g = dy.get(r * n + c);
      float xh = (x.get(r * n + c) - mu) * xs;
      float d = g * w[c];
      a += d;
      bsum += d * xh;
      if constexpr (K > 0) {
        wsum[k] += g * xh;
        bsum_c[k] += g;
      } else {
        if (dw) atomicAdd(&acc[c], g * xh);
        if (db) atomicAdd(&acc[n + c], g);
      }
    }
    a = warp_sum(a) / n;
    bsum = warp_sum(bsum) / n;
    for (int c = lane; c < n; c += 32) {
      float xh = (x.get(r * n + c) - mu) * xs;
      dx.set(r * n + c, rs * (dy.get(r * n + c) * w[c] - a - xh * bsum));
    }
  }
  if constexpr (K > 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int c = lane + 32 * k;
      if (c >= n) continue;
      if (dw) atomicAdd(&acc[c], wsum[k]);
      if (db) atomicAdd(&acc[n + c], bsum_c[k]);
    }
  }
  __syncthreads();
  for (int c = threadIdx.x; c < n; c += blockDim.x) {
    if (dw) atomicAdd(&dw[c], acc[c]);
    if (db) atomicAdd(&db[c], acc[n + c]);
  }
}

// RMSNorm: y = xhat (w + offset), xhat = x rstd, rstd = rsqrt(mean(x^2) + eps); one warp per
// row; xhat written as in layernorm_forward_kernel.
__global__ void rmsnorm_forward_kernel(Ptr x, const float* w, float offset, float eps, Ptr y,
                                       float* rstd, Ptr xhat, int64_t rows, int n, int accumulate) {
  int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  int lane = threadIdx.x % 32;
  if (r >= rows) return;
  float s = 0;
  for (int c = lane; c < n; c += 32) {
    float v = x.get(r * n + c);
    s += v * v;
  }
  float rs = rsqrtf(warp_sum(s) / n + eps);
  for (int c = lane; c < n; c += 32) {
    const float xh = x.get(r * n + c) * rs;
    if (xhat.p) xhat.set(r * n + c, xh);
    y.set(r * n + c, (accumulate ? y.get(r * n + c) : 0.0f) + xh * (w[c] + offset));
  }
  if (lane == 0) rstd[r] = rs;
}

// dx = rstd (g - xhat mean(g xhat)), g = dy (w + offset), xhat = x rstd (or x itself when
// `normalized`); dw += sum dy xhat, summed as in layernorm_backward_kernel (registers per lane
// for K > 0, else shared memory per row).
template <int K>
__global__ void rmsnorm_backward_kernel(Ptr dy, Ptr x, bool normalized, const float* w,
                                        float offset, const float* rstd, Ptr dx, float* dw,
                                        int64_t rows, int n) {
  extern __shared__ float acc[];  // [n]
  for (int c = threadIdx.x; c < n; c += blockDim.x) acc[c] = 0;
  __syncthreads();
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  constexpr int KR = K > 0 ? K : 1;
  float wsum[KR] = {};
  const int kn = K > 0 ? K : (n + 31) / 32;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * warps + warp; r < rows;
       r += static_cast<int64_t>(gridDim.x) * warps) {
    const float rs = rstd[r], xs = normalized ? 1.0f : rs;
    float dot = 0;
#pragma unroll
    for (int k = 0; k < kn; ++k) {
      const int c = lane + 32 * k;
      if (c >= n) continue;
      float g = dy.get(r * n + c), xh = x.get(r * n + c) * xs;
      dot += g * (w[c] + offset) * xh;
      if constexpr (K > 0)
        wsum[k] += g * xh;
      else if (dw)
        atomicAdd(&acc[c], g * xh);
    }
    dot = warp_sum(dot) / n;
    for (int c = lane; c < n; c += 32)
      dx.set(r * n + c, rs * (dy.get(r * n + c) * (w[c] + offset) - x.get(r * n + c) * xs * dot));
  }
  if constexpr (K > 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int c = lane + 32 * k;
      if (c < n && dw) atomicAdd(&acc[c], wsum[k]);
    }
  }
  __syncthreads();
  if (dw)
    for (int c = threadIdx.x; c < n; c += blockDim.x) atomicAdd(&dw[c], acc[c]);
}

__global__ void glu_forward_kernel(int act, Ptr g, Ptr u, Ptr y, int64_t n) {
  GRID_STRIDE(i, n) y.set(i, act_f(act, g.get(i)) * u.get(i));
}
__global__ void glu_backward_kernel(int act, Ptr g, Ptr u, Ptr dy, Ptr dg, Ptr du, int64_t n) {
  GRID_STRIDE(i, n) {
    const float gv = g.get(i), uv = u.get(i), d = dy.get(i);
    dg.set(i, act_df(act, gv) * uv * d);
    du.set(i, act_f(act, gv) * d);
  }
}

// gate_up [T, 2F]: gate columns then up columns.
__global__ void glu_packed_forward_kernel(int act, Ptr gu, Ptr y, int64_t T, int64_t F) {
  GRID_STRIDE(k, T * F) {
    const int64_t t = k / F, f = k % F;
    y.set(k, act_f(act, gu.get(t * 2 * F + f)) * gu.get(t * 2 * F + F + f));
  }
}
__global__ void glu_packed_backward_kernel(int act, Ptr gu, Ptr dy, Ptr dgu, int64_t T, int64_t F) {
  GRID_STRIDE(k, T * F) {
    const int64_t t = k / F, f = k % F;
    const float g = gu.get(t * 2 * F + f), u = gu.get(t * 2 * F + F + f), d = dy.get(k);
    dgu.set(t * 2 * F + f, act_df(act, g) * u * d);
    dgu.set(t * 2 * F + F + f, act_f(act, g) * d);
  }
}

__global__ void copy_columns_kernel(Ptr src, int64_t sc, int64_t s0, Ptr dst, int64_t dc,
                                    int64_t d0, int64_t rows, int64_t width) {
  GRID_STRIDE(k, rows * width) {
    const int64_t r = k / width, c = k % width;
    dst.set(r * dc + d0 + c, src.get(r * sc + s0 + c));
  }
}
// The same for bf16 on both sides, 8 columns (16 bytes) per thread: src and dst already offset
// to their first column, row strides and width multiples of 8, 16-byte aligned starts.
__global__ void copy_columns_bf16x8(const bf16* src, int64_t sc, bf16* dst, int64_t dc,
                                    int64_t rows, int64_t w8) {
  GRID_STRIDE(k, rows * w8) {
    const int64_t r = k / w8, c = 8 * (k % w8);
    *reinterpret_cast<uint4*>(dst + r * dc + c) = *reinterpret_cast<const uint4*>(src + r * sc + c);
  }
}

__global__ void l2norm_forward_kernel(Ptr x, Ptr y, float* norms, int64_t rows, int n) {
  int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  int lane = threadIdx.x % 32;
  if (r >= rows) return;
  float s = 0;
  for (int c = lane; c < n; c += 32) s += x.get(r * n + c) * x.get(r * n + c);
  float nv = sqrtf(warp_sum(s));
  float den = fmaxf(nv, 1e-12f);
  for (int c = lane; c < n; c += 32) y.set(r * n + c, x.get(r * n + c) / den);
  if (lane == 0) norms[r] = nv;
}

__global__ void l2norm_backward_kernel(Ptr dy, Ptr y, const float* norms, Ptr dx, int64_t rows,
                                       int n) {
  int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  int lane = threadIdx.x % 32;
  if (r >= rows) return;
  float nv = norms[r];
  if (nv <= 1e-12f) {
    for (int c = lane; c < n; c += 32) dx.set(r * n + c, dy.get(r * n + c) / 1e-12f);
    return;
  }
  float dot = 0;
  for (int c = lane; c < n; c += 32) dot += y.get(r * n + c) * dy.get(r * n + c);
  dot = warp_sum(dot);
  for (int c = lane; c < n; c += 32)
    dx.set(r * n + c, (dy.get(r * n + c) - y.get(r * n + c) * dot) / nv);
}

// One warp per row of logits [rows, cols] (see Backend::diagonal_cross_entropy): the row's max,
// then its sum of exponentials, then the gradient; the diagonal logit is read before any lane
// writes, so dlogits may be logits.
__global__ void diagonal_xent_kernel(const float* logits, float grad_scale, float* loss,
                                     float* dlogits, int64_t rows, int64_t cols) {
  int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const float* x = logits + r * cols;
  float mx = -INFINITY;
  for (int64_t j = lane; j < cols; j += 32) mx = fmaxf(mx, x[j]);
  mx = warp_max(mx);
  float z = 0;
  for (int64_t j = lane; j < cols; j += 32) z += expf(x[j] - mx);
  const float lse = mx + logf(warp_sum(z));
  const float diag = x[r];
  __syncwarp();
  if (lane == 0) loss[r] = lse - diag;
  for (int64_t j = lane; j < cols; j += 32)
    dlogits[r * cols + j] = grad_scale * (expf(x[j] - lse) - (j == r ? 1.0f : 0.0f));
}

// ---- embeddings, pooling, optimizer ------------------------------------------------------

__global__ void embedding_forward_kernel(const int32_t* ids, const float* table, Ptr y, int64_t t,
                                         int n, int accumulate) {
  GRID_STRIDE(i, t * n) {
    float v = table[static_cast<int64_t>(ids[i / n]) * n + i % n];
    y.set(i, accumulate ? y.get(i) + v : v);
  }
}
__global__ void embedding_backward_kernel(const int32_t* ids, Ptr dy, float* dtable, int64_t t,
                                          int n) {
  GRID_STRIDE(i, t * n) atomicAdd(&dtable[static_cast<int64_t>(ids[i / n]) * n + i % n], dy.get(i));
}

// One thread per (sequence, column). mode: PoolMode as int.
__global__ void pool_forward_kernel(int mode, Ptr x, const int32_t* cu, const int32_t* skip,
                                    float* out, int32_t* argmax, int nseq, int c) {
  GRID_STRIDE(idx, static_cast<int64_t>(nseq) * c) {
    int b = static_cast<int>(idx / c), j = static_cast<int>(idx % c);
    int start = cu[b], len = cu[b + 1] - cu[b];
    float* o = out + idx;
    if (len == 0) {
      *o = 0;
      continue;
    }
    if (mode == 0) {  // cls
      *o = x.get(static_cast<int64_t>(start) * c + j);
    } else if (mode == 5) {  // last token
      *o = x.get(static_cast<int64_t>(start + len - 1) * c + j);
    } else {
      int first = skip ? min(skip[b], len) : 0;
      if (mode == 2) {  // max; masked prompt tokens count as -1e9 (sentence-transformers)
        float best = first > 0 ? -1e9f : -INFINITY;
        int arg = -1;
        for (int t = first; t < len; ++t) {
          float v = x.get(static_cast<int64_t>(start + t) * c + j);
          if (v > best) {
            best = v;
            arg = start + t;
          }
        }
        *o = best;
        argmax[idx] = arg;
      } else {
        double s = 0, wsum = 0;
        for (int t = first; t < len; ++t) {
          float w = mode == 4 ? static_cast<float>(t + 1) : 1.0f;
          wsum += w;
          s += w * x.get(static_cast<int64_t>(start + t) * c + j);
        }
        double den = fmax(wsum, 1e-9);
        if (mode == 3) den = sqrt(den);
        *o = static_cast<float>(s / den);
      }
    }
  }
}

__global__ void pool_backward_kernel(int mode, const float* dout, const int32_t* cu,
                                     const int32_t* skip, const int32_t* argmax, Ptr dx, int nseq,
                                     int c) {
  GRID_STRIDE(idx, static_cast<int64_t>(nseq) * c) {
    int b = static_cast<int>(idx / c), j = static_cast<int>(idx % c);
    int start = cu[b], len = cu[b + 1] - cu[b];
    if (len == 0) continue;
    float g = dout[idx];
    if (mode == 0) {
      dx.set(static_cast<int64_t>(start) * c + j, g);
    } else if (mode == 5) {
      dx.set(static_cast<int64_t>(start + len - 1) * c + j, g);
    } else if (mode == 2) {
      if (argmax[idx] >= 0) dx.set(static_cast<int64_t>(argmax[idx]) * c + j, g);
    } else {
      int first = skip ? min(skip[b], len) : 0;
      double wsum = 0;
      for (int t = first; t < len; ++t) wsum += mode == 4 ? t + 1.0 : 1.0;
      double den = fmax(wsum, 1e-9);
      if (mode == 3) den = sqrt(den);
      for (int t = first; t < len; ++t)
        dx.set(static_cast<int64_t>(start + t) * c + j,
               static_cast<float>((mode == 4 ? t + 1.0 : 1.0) / den * g));
    }
  }
}

// AdamW on element i (Backend::adamw_step's formula); step_size = lr / (1 - b1^t),
// bc2_sqrt = sqrt(1 - b2^t).
struct AdamWHyper {
  float lr, b1, b2, eps, wd, step_size, bc2_sqrt;
  const double* clip_sum_sq = nullptr;  // Backend::GradClip, read on the device
  double max_norm = 0;
};
// Backend::clip_coefficient, the same double arithmetic (IEEE sqrt and division on both sides,
// so the same fp32 coefficient as the host would compute).
__device__ __forceinline__ float adamw_grad_scale(const AdamWHyper& h) {
  if (!h.clip_sum_sq) return 1.0f;
  const double c = h.max_norm / (sqrt(*h.clip_sum_sq) + 1e-6);
  return c < 1 ? static_cast<float>(c) : 1.0f;
}
__device__ __forceinline__ void adamw_element(float* p, const float* g, float* m, float* v,
                                              const AdamWHyper& h, float gs, int64_t i) {
  const float gi = g[i] * gs;  // exact when gs = 1
  const float pi = p[i] * (1.0f - h.lr * h.wd);
  const float mi = h.b1 * m[i] + (1 - h.b1) * gi;
  const float vi = h.b2 * v[i] + (1 - h.b2) * gi * gi;
  m[i] = mi;
  v[i] = vi;
  p[i] = pi - h.step_size * mi / (sqrtf(vi) / h.bc2_sqrt + h.eps);
}

// Multi-tensor launches: up to kMultiTensors tensors per launch, passed by value (under the
// 4 KB kernel-parameter limit); blockIdx.y picks the tensor, blocks along x stride over it.
constexpr int kMultiTensors = 48;
struct MultiTensors {
  float* p[kMultiTensors];
  float* g[kMultiTensors];
  float* m[kMultiTensors];
  float* v[kMultiTensors];
  int64_t n[kMultiTensors];
};
#define MULTI_STRIDE(i, n)                                                               \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

__global__ void adamw_multi_kernel(MultiTensors t, AdamWHyper h, int zero_grads) {
  const int k = blockIdx.y;
  const float gs = adamw_grad_scale(h);
  MULTI_STRIDE(i, t.n[k]) {
    adamw_element(t.p[k], t.g[k], t.m[k], t.v[k], h, gs, i);
    if (zero_grads) t.g[k][i] = 0.0f;
  }
}

// dst = bf16(scale * src) over up to kMultiTensors tensors per launch (copy_all); element i of
// src (contiguous, rows of `cols`) goes to row i / cols of dst at its row pitch.
struct MultiConvert {
  const float* src[kMultiTensors];
  bf16* dst[kMultiTensors];
  int64_t n[kMultiTensors], cols[kMultiTensors], pitch[kMultiTensors];
  float scale[kMultiTensors];
};
__global__ void convert_multi_kernel(MultiConvert t) {
  const int k = blockIdx.y;
  const int64_t cols = t.cols[k], pitch = t.pitch[k];
  const float s = t.scale[k];
  MULTI_STRIDE(i, t.n[k]) {
    const int64_t d = pitch == cols ? i : i / cols * pitch + i % cols;
    t.dst[k][d] = __float2bfloat16(s * t.src[k][i]);
  }
}

__global__ void zero_multi_kernel(MultiTensors t) {
  const int k = blockIdx.y;
  MULTI_STRIDE(i, t.n[k]) t.g[k][i] = 0.0f;
}

// out += sum over the launch's tensors of g^2 (fp64 block sums, one atomic per block).
__global__ void sum_squares_multi_kernel(MultiTensors t, double* out) {
  __shared__ double part[32];
  const int k = blockIdx.y;
  double s = 0;
  MULTI_STRIDE(i, t.n[k]) s += static_cast<double>(t.g[k][i]) * t.g[k][i];
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double b = 0;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) b += part[w];
    atomicAdd(out, b);
  }
}

// ---- the backend ------------------------------------------------------------------------

int64_t cols_of(const Tensor& t) {
  return t.shape.empty() ? 1 : t.shape.back();
}
int64_t rows_of(const Tensor& t) {
  return t.numel() / std::max<int64_t>(cols_of(t), 1);
}

void check_device_strided(const Tensor& t) {
  ET_CHECK(t.device == Device::CUDA, "CUDA op: tensor of shape ", shape_str(t.shape),
           " is on the host");
}
// Every op but the matrix products wants contiguous tensors (Tensor::pitch).
void check_contiguous(const Tensor& t) {
  ET_CHECK(t.pitch == 0, "CUDA op: a strided view ", shape_str(t.shape), " (row pitch ", t.pitch,
           ") where a contiguous tensor is expected");
}
void check_device(const Tensor& t) {
  check_device_strided(t);
  check_contiguous(t);
}
// fp32 tensors (parameters, gradients, statistics)
const float* F(const Tensor& t) {
  check_device(t);
  ET_CHECK(t.dtype == DType::F32, "CUDA op: expected an F32 tensor, got ", dtype_name(t.dtype));
  return static_cast<const float*>(t.data);
}
float* W(Tensor& t) {
  return const_cast<float*>(F(t));
}
// fp32 or bf16 tensors (activations)
Ptr P(const Tensor& t) {
  check_device(t);
  ET_CHECK(t.dtype == DType::F32 || t.dtype == DType::BF16,
           "CUDA op: expected an F32 or BF16 tensor, got ", dtype_name(t.dtype));
  return Ptr{t.data, t.dtype == DType::BF16};
}
// An activation whose rows may lie a pitch apart (a 2-D view, Tensor::pitch) with n columns:
// its pointer, and its row pitch in ld.
Ptr P_rows(const Tensor& t, int64_t n, int64_t& ld) {
  check_device_strided(t);
  ET_CHECK(!t.pitch || (t.ndim() == 2 && t.dim(1) == n), "CUDA op: a strided view ",
           shape_str(t.shape), " where rows of ", n, " values are expected");
  ET_CHECK(t.dtype == DType::F32 || t.dtype == DType::BF16,
           "CUDA op: expected an F32 or BF16 tensor, got ", dtype_name(t.dtype));
  ld = t.pitch ? t.pitch : n;
  return Ptr{t.data, t.dtype == DType::BF16};
}
const int32_t* I(const Tensor& t) {
  check_device(t);
  ET_CHECK(t.dtype == DType::I32, "CUDA op: expected an I32 tensor");
  return static_cast<const int32_t*>(t.data);
}

// EMBEDTUNE_PROFILE=1: every op records a CUDA event on each side (no synchronization, so the
// step runs as it would); the GPU time between each pair is summed per op name and printed when
// the backend is destroyed. On one stream that is each op's kernel time plus any idle time while
// the host had not yet queued it, so a small op can be charged time that is not its own (Nsight
// Compute is the reference for single kernels; bench/NOTES.md). Events are recycled, and read
// every 8192 ops, instead of created per op. The host time inside each op is summed beside, and
// so is the GPU time from the previous op's end event to this op's start event: the GPU was
// idle then, waiting for the host to queue this op (or for a synchronizing call between them).
// EMBEDTUNE_MEMTRACE=1: remembers the ops around the last time the pool's peak of in-use bytes
// rose (since the last reset_peak_bytes) and prints them with the peak, to show where in a step
// the peak memory is reached.
struct Profiler {
  bool on = std::getenv("EMBEDTUNE_PROFILE") != nullptr;
  bool mem = std::getenv("EMBEDTUNE_MEMTRACE") != nullptr;
  const Pool* pool = nullptr;
  struct Timed {
    std::string name;
    cudaEvent_t start, stop;
  };
  std::vector<Timed> timed;                                  // recorded, not yet read
  std::vector<cudaEvent_t> spare;                            // read, reusable
  std::map<std::string, std::pair<double, int64_t>> totals;  // ms, calls
  std::map<std::string, double> host_ms;  // host time inside each op (launch cost, or waiting)
  std::map<std::string, double> idle_ms;  // GPU idle before each op (see above)
  cudaEvent_t last_stop = nullptr;        // the previous harvest's last end event
  std::vector<std::string> recent;        // the last ops run, oldest first
  std::vector<std::string> at_peak;       // `recent` when the peak last rose
  size_t peak_seen = 0, in_use_at_peak = 0;
  int64_t ops_since_reset = 0, op_at_peak = 0, mallocs_at_reset = 0;

  bool names() const { return on || mem; }
  // (called from OpScope's destructor: errors are left for the next checked call to report)
  cudaEvent_t event() {
    cudaEvent_t e = nullptr;
    if (spare.empty()) {
      cudaEventCreate(&e);
    } else {
      e = spare.back();
      spare.pop_back();
    }
    cudaEventRecord(e);
    return e;
  }
  void record(std::string name, cudaEvent_t start) {
    timed.push_back({std::move(name), start, event()});
    if (timed.size() >= 8192) harvest();  // one wait per few steps, not per op
  }
  // Waits for the recorded events and adds their intervals to the totals.
  void harvest() {
    if (timed.empty()) return;
    cudaEventSynchronize(timed.back().stop);
    for (const Timed& t : timed) {
      float ms = 0, gap = 0;
      cudaEventElapsedTime(&ms, t.start, t.stop);
      totals[t.name].first += ms;
      totals[t.name].second += 1;
      if (last_stop && cudaEventElapsedTime(&gap, last_stop, t.start) == cudaSuccess)
        idle_ms[t.name] += gap;
      if (last_stop) spare.push_back(last_stop);
      spare.push_back(t.start);
      last_stop = t.stop;
    }
    timed.clear();
  }
  void ran(const std::string& name) {
    ++ops_since_reset;
    recent.push_back(name);
    if (recent.size() > 8) recent.erase(recent.begin());
    if (pool->peak_in_use > peak_seen) {
      peak_seen = pool->peak_in_use;
      in_use_at_peak = pool->in_use;
      op_at_peak = ops_since_reset;
      at_peak = recent;
    }
  }
  // With the peak reset (the bench's timed steps begin): both traces restart.
  void reset() {
    mallocs_at_reset = pool->mallocs;
    peak_seen = 0;
    ops_since_reset = 0;
    at_peak.clear();
    if (!on) return;
    harvest();
    totals.clear();
    host_ms.clear();
    idle_ms.clear();
  }
  // Called by the backend's destructor, while the pool still exists.
  void print_memory_trace() const {
    if (!mem || at_peak.empty()) return;
    std::fprintf(stderr,
                 "memory trace: peak %.1f MiB in use, reached at op %lld since the last peak "
                 "reset (in use after it: %.1f MiB); the ops up to it:\n",
                 peak_seen / 1048576.0, static_cast<long long>(op_at_peak),
                 in_use_at_peak / 1048576.0);
    for (const std::string& n : at_peak) std::fprintf(stderr, "  %s\n", n.c_str());
    std::fprintf(stderr, "memory trace: %lld cudaMalloc calls since the last peak reset\n",
                 static_cast<long long>(pool->mallocs - mallocs_at_reset));
  }
  ~Profiler() {
    if (!on) return;
    harvest();
    if (last_stop) spare.push_back(last_stop);
    for (cudaEvent_t e : spare) cudaEventDestroy(e);
    if (totals.empty()) return;
    double all = 0, idle = 0;
    std::vector<std::pair<double, std::string>> rows;
    for (auto& [k, v] : totals) {
      rows.emplace_back(v.first, k);
      all += v.first;
      idle += idle_ms[k];
    }
    std::sort(rows.rbegin(), rows.rend());
    std::fprintf(stderr,
                 "op profile (GPU time between events around each op; host time inside it; GPU "
                 "idle before it, %.2f ms in all):\n",
                 idle);
    for (auto& [t, k] : rows)
      std::fprintf(stderr, "  %-34s %9.2f ms %6.1f%%  %8lld calls  host %8.2f ms  idle %8.2f ms\n",
                   k.c_str(), t, 100 * t / all, static_cast<long long>(totals[k].second),
                   host_ms[k], idle_ms[k]);
  }
};

struct OpScope {
  Profiler* p;
  std::string name;
  cudaEvent_t start = nullptr;
  std::chrono::steady_clock::time_point t0;
  OpScope(Profiler* prof, std::string n) : p(prof), name(std::move(n)) {
    if (!p->on) return;
    start = p->event();
    t0 = std::chrono::steady_clock::now();
  }
  ~OpScope() {
    if (p->mem) p->ran(name);
    if (!p->on) return;
    p->host_ms[name] +=
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    p->record(std::move(name), start);
  }
};

struct CudaBackend final : Backend {
  std::unique_ptr<Profiler> prof = std::make_unique<Profiler>();
  std::shared_ptr<Pool> pool = std::make_shared<Pool>();
  std::shared_ptr<cuda::HostStaging> staging = std::make_shared<cuda::HostStaging>();
  cublasHandle_t blas = nullptr;
  // cuBLASLt for every bf16 product (gemm_lt.h says why); its workspace comes from the pool
  // (counted in the peak like every other byte).
  std::unique_ptr<cuda::LtGemm> lt = std::make_unique<cuda::LtGemm>();
  Tensor lt_workspace;
  mutable bool lt_fallback_noted = false;
  struct RopeTableEntry {
    float log_theta;
    int half;
    Tensor cs;
  };
  mutable std::vector<RopeTableEntry> rope_tables;
  int device_index = 0;
  DType act = DType::BF16;

  CudaBackend(int dev, DType act_type) : device_index(dev), act(act_type) {
    ET_CUDA(cudaSetDevice(dev));
    prof->pool = pool.get();
    ET_CUBLAS(cublasCreate(&blas));
    // fp32 x fp32 products run as TF32 on tensor cores with fp32 accumulation (torch's
    // allow_tf32); products with a bf16 operand run in bf16 with fp32 accumulation.
    ET_CUBLAS(cublasSetMathMode(blas, CUBLAS_TF32_TENSOR_OP_MATH));
    if (const char* e = std::getenv("EMBEDTUNE_ACT_DTYPE"); e && std::string(e) == "f32")
      act = DType::F32;
    // 32 MiB: with 8 MiB, cuBLASLt offered slower candidates for some new shapes (real-mix
    // steps with fresh token counts 2.5-3.5% slower, bench/NOTES.md); fixed shapes unchanged
    lt_workspace = empty({int64_t{8} << 20}, DType::F32);
    // untimed (the heuristic's first choice) until set_gemm_tuning(true)
    cuda::lt_gemm_init(*lt, lt_workspace.data, lt_workspace.nbytes());
  }
  ~CudaBackend() override {
    prof->print_memory_trace();
    cuda::lt_gemm_destroy(*lt);
    if (blas) cublasDestroy(blas);
  }

  Device device() const override { return Device::CUDA; }
  const char* name() const override { return "cuda"; }
  DType act_dtype() const override { return act; }

  Tensor empty(const Shape& shape, DType dtype) const override {
    Tensor t;
    t.shape = shape;
    t.dtype = dtype;
    t.device = Device::CUDA;
    const std::pair<void*, size_t> got = pool->get(t.nbytes());
    void* p = got.first;
    const size_t block = got.second;
    auto pl = pool;
    t.owner = std::shared_ptr<void>(p, [pl, block](void* q) { pl->put(q, block); });
    t.data = p;
    return t;
  }
  Tensor zeros(const Shape& shape, DType dtype) const override {
    Tensor t = empty(shape, dtype);
    ET_CUDA(cudaMemsetAsync(t.data, 0, t.nbytes()));
    return t;
  }
  Tensor convert(const Tensor& t, DType to) const {
    if (t.dtype == to) return t;
    Tensor out = empty(t.shape, to);
    convert_into(t, out);
    return out;
  }
  // out = t in out's dtype (same number of elements).
  void convert_into(const Tensor& t, Tensor& out) const {
    const int64_t n = t.numel();
    if (n % 8 == 0 && vec8_aligned(t.data) && vec8_aligned(out.data))
      convert_vec8_kernel<<<blocks_for(n / 8, 256), 256>>>(P(t), P(out), n / 8);
    else
      convert_kernel<<<blocks_for(n, 256), 256>>>(P(t), P(out), n);
    ET_LAUNCH_CHECK();
  }
  static bool bf16x8(std::initializer_list<const Tensor*> ts) {
    for (const Tensor* t : ts)
      if (t->dtype != DType::BF16 || t->numel() % 8 != 0) return false;
    return true;
  }
  static bf16* B16(const Tensor& t) { return static_cast<bf16*>(t.data); }
  Tensor upload(const Tensor& host) const override {
    OpScope scope_(prof.get(),
                   prof->names() ? "upload " + shape_str(host.shape) + " " + dtype_name(host.dtype)
                                 : std::string());
    ET_CHECK(host.device == Device::CPU, "upload: tensor is not on the host");
    Tensor t = empty(host.shape, host.dtype);
    cuda::upload_bytes(*staging, t.data, host.data, host.nbytes());
    return t;
  }
  Tensor download(const Tensor& dev) const override {
    OpScope scope_(prof.get(), "download");
    if (dev.device == Device::CPU) return cpu_clone(dev);
    check_contiguous(dev);
    Tensor src = dev.dtype == DType::BF16 ? convert(dev, DType::F32) : dev;
    Tensor h = cpu_empty(src.shape, src.dtype);
    if (src.nbytes()) ET_CUDA(cudaMemcpy(h.data, src.data, src.nbytes(), cudaMemcpyDeviceToHost));
    return h;
  }
  HostRead download_async(const Tensor& dev) const override {
    if (dev.device == Device::CPU) return Backend::download_async(dev);
    OpScope scope_(prof.get(), "download_async");
    check_contiguous(dev);
    Tensor src = dev.dtype == DType::BF16 ? convert(dev, DType::F32) : dev;
    std::shared_ptr<cuda::PendingRead> r = cuda::read_bytes_async(staging, src.data, src.nbytes());
    if (!r) return Backend::download_async(src);  // too large, or every slot held
    return [r, shape = src.shape, dtype = src.dtype] {
      Tensor h = cpu_empty(shape, dtype);
      r->read(h.data);
      return h;
    };
  }
  void fill(Tensor& t, float value) const override {
    OpScope scope_(prof.get(), "fill");
    check_contiguous(t);
    int64_t n = t.numel();
    if (value == 0.0f) {
      ET_CUDA(cudaMemsetAsync(t.data, 0, t.nbytes()));
      return;
    }
    fill_kernel<<<blocks_for(n, 256), 256>>>(P(t), value, n);
    ET_LAUNCH_CHECK();
  }
  void copy(Tensor& dst, const Tensor& src) const override {
    // named apart in profiles: storage conversions are kernels, same-type copies cudaMemcpy
    OpScope scope_(prof.get(), dst.dtype != src.dtype ? "convert" : "copy");
    ET_CHECK(dst.numel() == src.numel(), "copy: size mismatch ", shape_str(dst.shape), " vs ",
             shape_str(src.shape));
    check_contiguous(dst);
    check_contiguous(src);
    if (dst.dtype != src.dtype) {
      convert_into(src, dst);
      return;
    }
    if (dst.data != src.data && src.nbytes())
      ET_CUDA(cudaMemcpyAsync(dst.data, src.data, src.nbytes(), cudaMemcpyDeviceToDevice));
  }

  // Row-major C[m,n] = op(A) op(B) is column-major C^T = op(B)^T op(A)^T. All fp32: TF32
  // tensor cores. Any bf16 operand: both inputs in bf16 (an fp32 one is rounded first), C in
  // its own type, fp32 accumulation.
  void matmul(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c, float alpha,
              float beta, const Tensor* bias) const override {
    ET_CHECK(a.ndim() == 2 && b.ndim() == 2 && c.ndim() == 2, "matmul: operands must be 2-D");
    int64_t m = ta ? a.dim(1) : a.dim(0), k = ta ? a.dim(0) : a.dim(1);
    int64_t kb = tb ? b.dim(1) : b.dim(0), n = tb ? b.dim(0) : b.dim(1);
    OpScope scope_(prof.get(), prof->names()
                                   ? "matmul " + std::to_string(m) + "x" + std::to_string(n) + "x" +
                                         std::to_string(k) + (ta ? " T" : " N") + (tb ? "T" : "N")
                                   : std::string());
    ET_CHECK(k == kb && c.dim(0) == m && c.dim(1) == n, "matmul: shapes ", shape_str(a.shape),
             (ta ? "^T" : ""), " x ", shape_str(b.shape), (tb ? "^T" : ""), " -> ",
             shape_str(c.shape), " do not match");
    if (m == 0 || n == 0) return;
    if (bias)
      ET_CHECK(bias->numel() == n, "matmul: bias has ", bias->numel(), " values for ", n,
               " columns");
    for (const Tensor* t : {&a, &b, static_cast<const Tensor*>(&c)}) check_device_strided(*t);
    // leading dimensions: strided views (Tensor::pitch) are taken as they are
    const int64_t lda = a.row_pitch(), ldb = b.row_pitch(), ldc = c.row_pitch();
    const bool all_f32 = a.dtype == DType::F32 && b.dtype == DType::F32 && c.dtype == DType::F32;
    if (all_f32) {  // TF32 tensor cores (see the constructor)
      ET_CUBLAS(cublasSgemm(blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                            static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha,
                            static_cast<const float*>(b.data), static_cast<int>(ldb),
                            static_cast<const float*>(a.data), static_cast<int>(lda), &beta,
                            static_cast<float*>(c.data), static_cast<int>(ldc)));
      if (bias) add_bias(c, *bias);
      return;
    }
    ET_CHECK(c.dtype == DType::F32 || c.dtype == DType::BF16, "matmul: C must be F32 or BF16, got ",
             dtype_name(c.dtype));
    Tensor a16 = convert(a, DType::BF16), b16 = convert(b, DType::BF16);
    // as torch's bf16 addmm: the bias rounded to bf16, added to the fp32 accumulator
    Tensor bias16 = bias && c.dtype == DType::BF16 ? convert(*bias, DType::BF16) : Tensor{};
    const bool lt_case = k > 0 && (!bias || bias16.defined());
    if (lt_case &&
        cuda::lt_gemm(*lt, a16.data, ta, lda, b16.data, tb, ldb, c.data, ldc, c.dtype == DType::F32,
                      m, n, k, alpha, beta, bias ? bias16.data : nullptr))
      return;
    if (lt_case && !lt_fallback_noted) {
      lt_fallback_noted = true;
      std::fprintf(stderr,
                   "note: cuBLASLt has no algorithm for a %lldx%lldx%lld bf16 product%s; using "
                   "cublasGemmEx\n",
                   static_cast<long long>(m), static_cast<long long>(n), static_cast<long long>(k),
                   bias ? " with a bias epilogue" : "");
    }
    ET_CUBLAS(cublasGemmEx(blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                           static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha,
                           b16.data, CUDA_R_16BF, static_cast<int>(ldb), a16.data, CUDA_R_16BF,
                           static_cast<int>(lda), &beta, c.data,
                           c.dtype == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F, static_cast<int>(ldc),
                           CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (bias) add_bias(c, *bias);
  }
  void lora_output_grad(const Tensor& g, const Tensor& b, const Tensor& xa, bool xa_transposed,
                        float scale, Tensor& dxa, bool dxa_transposed, Tensor* db) const override {
    const bool bf16 = g.dtype == DType::BF16 && b.dtype == DType::BF16 && xa.dtype == DType::BF16 &&
                      dxa.dtype == DType::BF16 && (!db || db->dtype == DType::F32);
    if (!bf16 || g.ndim() != 2 || b.ndim() != 2) {
      Backend::lora_output_grad(g, b, xa, xa_transposed, scale, dxa, dxa_transposed, db);
      return;
    }
    const int64_t n = g.dim(0), out = g.dim(1), r = b.dim(1);
    // [n, r], or [r, n] when transposed; 2-D when strided (g, xa and dxa may be views: a group's
    // shares of its buffers)
    auto fits = [&](const Tensor& t, bool transposed) {
      if (transposed) return t.ndim() == 2 && t.dim(0) == r && t.dim(1) == n;
      return t.pitch ? t.ndim() == 2 && t.dim(0) == n && t.dim(1) == r : t.numel() == n * r;
    };
    ET_CHECK(b.dim(0) == out && fits(xa, xa_transposed) && fits(dxa, dxa_transposed) &&
                 (!db || db->numel() == out * r),
             "lora_output_grad: g ", shape_str(g.shape), ", B ", shape_str(b.shape), ", xa ",
             shape_str(xa.shape), ", dxa ", shape_str(dxa.shape), " do not match");
    check_device(b);
    for (const Tensor* t : {&g, &xa, static_cast<const Tensor*>(&dxa)}) check_device_strided(*t);
    cuda::LoraOutputGradArgs a;
    a.g = B16(g);
    a.b = B16(b);
    a.xa = B16(xa);
    a.dxa = B16(dxa);
    a.db = db ? W(*db) : nullptr;
    a.n = n;
    a.out = static_cast<int>(out);
    a.r = static_cast<int>(r);
    a.scale = scale;
    a.xa_transposed = xa_transposed;
    a.dxa_transposed = dxa_transposed;
    a.g_ld = g.row_pitch();
    a.xa_ld = xa_transposed || xa.pitch ? xa.row_pitch() : r;
    a.dxa_ld = dxa_transposed || dxa.pitch ? dxa.row_pitch() : r;
    if (!cuda::lora_output_grad_supported(a)) {
      Backend::lora_output_grad(g, b, xa, xa_transposed, scale, dxa, dxa_transposed, db);
      return;
    }
    OpScope scope_(prof.get(), "lora_output_grad");
    cuda::lora_output_grad(a);
  }
  void lora_act_input_grad(Act act, const Tensor& x, const Tensor* up, bool packed,
                           const Tensor& dxa, Tensor& da) const override {
    const bool bf16 = x.dtype == DType::BF16 && (!up || up->dtype == DType::BF16) &&
                      dxa.dtype == DType::BF16 && da.dtype == DType::F32;
    if (!bf16 || x.ndim() != 2 || da.ndim() != 2) {
      Backend::lora_act_input_grad(act, x, up, packed, dxa, da);
      return;
    }
    const int64_t n = x.dim(0), in = packed ? x.dim(1) / 2 : x.dim(1), r = da.dim(0);
    ET_CHECK(da.dim(1) == in && dxa.numel() == n * r && (!packed || x.dim(1) == 2 * in) &&
                 (!up || up->shape == x.shape),
             "lora_act_input_grad: x ", shape_str(x.shape), up ? ", up " : "",
             up ? shape_str(up->shape) : "", packed ? " (packed gate | up)" : "", ", dxa ",
             shape_str(dxa.shape), ", dA ", shape_str(da.shape), " do not match");
    for (const Tensor* t : {&x, &dxa, static_cast<const Tensor*>(&da)}) check_device(*t);
    if (up) check_device(*up);
    cuda::LoraActGradArgs a;
    a.x = B16(x);
    a.up = packed ? a.x + in : up ? B16(*up) : nullptr;
    a.dxa = B16(dxa);
    a.da = W(da);
    a.n = n;
    a.ld = x.dim(1);
    a.in = static_cast<int>(in);
    a.r = static_cast<int>(r);
    a.act = static_cast<int>(act);
    if (!cuda::lora_act_grad_supported(a)) {
      Backend::lora_act_input_grad(act, x, up, packed, dxa, da);
      return;
    }
    OpScope scope_(prof.get(), "lora_act_input_grad");
    cuda::lora_act_grad(a);
  }
  // The fused pass (ops/cuda/lora_act.h) when the kernel takes the operands: a.pre, a.up, a.y,
  // a.y2 and a.dy set from `wide` (all bf16 and 2-D [n, ...], checked against n x f at row pitch
  // a.ld by the caller); false, running nothing, otherwise.
  bool lora_act(cuda::LoraActArgs a, std::initializer_list<const Tensor*> wide, const Tensor& xr,
                const Tensor& w, const char* op) const {
    bool bf16 = xr.dtype == DType::BF16 && w.dtype == DType::BF16 && w.ndim() == 2;
    for (const Tensor* t : wide) bf16 = bf16 && t->dtype == DType::BF16 && t->ndim() == 2;
    if (!bf16) return false;
    const bool forward = a.mode == cuda::LoraActMode::Forward;
    a.r = static_cast<int>(forward ? w.dim(1) : w.dim(0));
    ET_CHECK(xr.numel() == a.n * a.r && (forward ? w.dim(0) : w.dim(1)) == a.f, op, ": the rank-r ",
             forward ? "xa " : "dxa ", shape_str(xr.shape), " and ", forward ? "B " : "A ",
             shape_str(w.shape), " do not match ", a.n, " rows of ", a.f);
    for (const Tensor* t : wide) check_device(*t);
    check_device(xr);
    check_device(w);
    a.xr = B16(xr);
    a.w = B16(w);
    if (!cuda::lora_act_supported(a)) return false;
    OpScope scope_(prof.get(), op);
    cuda::lora_act(a);
    return true;
  }
  bool fuses_lora_act(Act act, int64_t r) const override {
    return cuda::lora_act_takes(static_cast<int>(act), static_cast<int>(r));
  }
  void lora_act_forward(Act act, Tensor& pre, const Tensor& xa, const Tensor& b, float scale,
                        Tensor& y) const override {
    ET_CHECK(pre.ndim() == 2 && y.shape == pre.shape, "lora_act_forward: pre ",
             shape_str(pre.shape), " and y ", shape_str(y.shape), " must be one [n, f] shape");
    cuda::LoraActArgs a;
    a.pre = B16(pre);
    a.n = pre.dim(0);
    a.f = static_cast<int>(pre.dim(1));
    a.ld = a.f;
    // y's rows may lie a pitch apart (the next Linear's input with spare columns, linear_input)
    P_rows(y, a.f, a.ldy);
    a.y = y.dtype == DType::BF16 ? static_cast<bf16*>(y.data) : nullptr;
    a.scale = scale;
    a.act = static_cast<int>(act);
    a.mode = cuda::LoraActMode::Forward;
    if (lora_act(a, {&pre}, xa, b, "lora_act_forward")) return;
    if (y.pitch)
      via_contiguous(y, [&](Tensor& t) { Backend::lora_act_forward(act, pre, xa, b, scale, t); });
    else
      Backend::lora_act_forward(act, pre, xa, b, scale, y);
  }
  void lora_act_backward(Act act, const Tensor& x, Tensor& dy, const Tensor& dxa, const Tensor& am,
                         Tensor& dx) const override {
    ET_CHECK(x.ndim() == 2 && dy.shape == x.shape && dx.shape == x.shape, "lora_act_backward: x ",
             shape_str(x.shape), ", dy ", shape_str(dy.shape), " and dx ", shape_str(dx.shape),
             " must be one [n, f] shape");
    cuda::LoraActArgs a;
    a.pre = B16(x);
    a.dy = B16(dy);
    a.y = B16(dx);
    a.n = x.dim(0);
    a.f = static_cast<int>(x.dim(1));
    a.ld = a.f;
    a.act = static_cast<int>(act);
    a.mode = cuda::LoraActMode::Backward;
    if (!lora_act(a, {&x, &dy, &dx}, dxa, am, "lora_act_backward"))
      Backend::lora_act_backward(act, x, dy, dxa, am, dx);
  }
  void lora_glu_backward(Act act, const Tensor& gate, const Tensor* up, Tensor& dy,
                         const Tensor& dxa, const Tensor& am, Tensor& dgate,
                         Tensor* dup) const override {
    const int64_t n = dy.ndim() == 2 ? dy.dim(0) : 0, f = dy.ndim() == 2 ? dy.dim(1) : 0;
    const Shape wide = up ? Shape{n, f} : Shape{n, 2 * f};
    ET_CHECK(dy.ndim() == 2 && gate.shape == wide && dgate.shape == wide &&
                 (!up || (up->shape == wide && dup && dup->shape == wide)),
             "lora_glu_backward: dy ", shape_str(dy.shape), ", gate", up ? " " : " | up ",
             shape_str(gate.shape), up ? ", up " : "", up ? shape_str(up->shape) : "", ", d(gate",
             up ? ") " : " | up) ", shape_str(dgate.shape), " do not match");
    cuda::LoraActArgs a;
    a.pre = B16(gate);
    a.up = up ? B16(*up) : a.pre + f;
    a.dy = B16(dy);
    a.y = B16(dgate);
    a.y2 = up ? B16(*dup) : a.y + f;
    a.n = n;
    a.f = static_cast<int>(f);
    a.ld = up ? f : 2 * f;
    a.act = static_cast<int>(act);
    a.mode = cuda::LoraActMode::GluBackward;
    const bool fused = up ? lora_act(a, {&gate, up, &dy, &dgate, dup}, dxa, am, "lora_glu_backward")
                          : lora_act(a, {&gate, &dy, &dgate}, dxa, am, "lora_glu_backward");
    if (!fused) Backend::lora_glu_backward(act, gate, up, dy, dxa, am, dgate, dup);
  }
  void add_bias(Tensor& y, const Tensor& bias) const override {
    OpScope scope_(prof.get(), "add_bias");
    int64_t rows = rows_of(y), cols = cols_of(y);
    ET_CHECK(bias.numel() == cols, "add_bias: bias size mismatch");
    if (rows == 0) return;
    if (y.dtype == DType::BF16 && cols % 8 == 0) {
      add_bias_bf16x8<<<blocks_for(y.numel() / 8, 256), 256>>>(B16(y), F(bias), y.numel() / 8,
                                                               static_cast<int>(cols / 8));
      ET_LAUNCH_CHECK();
      return;
    }
    dim3 grid(static_cast<unsigned>((cols + 255) / 256),
              static_cast<unsigned>(std::min<int64_t>(rows, 8192)));
    add_bias_kernel<<<grid, 256>>>(P(y), F(bias), rows, static_cast<int>(cols));
    ET_LAUNCH_CHECK();
  }
  void bias_backward(const Tensor& dy, Tensor& db) const override {
    OpScope scope_(prof.get(), "bias_backward");
    int64_t rows = rows_of(dy), cols = cols_of(dy);
    ET_CHECK(db.numel() == cols, "bias_backward: size mismatch");
    dim3 grid(static_cast<unsigned>((cols + 255) / 256), static_cast<unsigned>((rows + 63) / 64));
    if (rows > 0) bias_backward_kernel<<<grid, 256>>>(P(dy), W(db), rows, cols);
    ET_LAUNCH_CHECK();
  }
  void add(const Tensor& a, const Tensor& b, Tensor& y) const override {
    OpScope scope_(prof.get(), "add");
    ET_CHECK(a.numel() == b.numel() && a.numel() == y.numel(), "add: size mismatch");
    if (a.numel() % 8 == 0 && vec8_aligned(a.data) && vec8_aligned(b.data) &&
        vec8_aligned(y.data)) {
      add_vec8_kernel<<<blocks_for(a.numel() / 8, 256), 256>>>(P(a), P(b), P(y), a.numel() / 8);
      ET_LAUNCH_CHECK();
      return;
    }
    add_kernel<<<blocks_for(a.numel(), 256), 256>>>(P(a), P(b), P(y), a.numel());
    ET_LAUNCH_CHECK();
  }
  void mul(const Tensor& a, const Tensor& b, Tensor& y) const override {
    OpScope scope_(prof.get(), "mul");
    ET_CHECK(a.numel() == b.numel() && a.numel() == y.numel(), "mul: size mismatch");
    mul_kernel<<<blocks_for(a.numel(), 256), 256>>>(P(a), P(b), P(y), a.numel());
    ET_LAUNCH_CHECK();
  }
  void scale(Tensor& y, float s) const override {
    OpScope scope_(prof.get(), "scale");
    scale_kernel<<<blocks_for(y.numel(), 256), 256>>>(P(y), s, y.numel());
    ET_LAUNCH_CHECK();
  }
  void dropout(const Tensor& x, const DropoutSite& d, int64_t first_row, Tensor& y) const override {
    OpScope scope_(prof.get(), "dropout");
    ET_CHECK(x.numel() == y.numel(), "dropout: size mismatch");
    dropout_rows(P(x), d, first_row, P(y), false, rows_of(x), cols_of(x));
  }
  void dropout_add(const Tensor& x, const DropoutSite& d, int64_t first_row,
                   Tensor& y) const override {
    OpScope scope_(prof.get(), "dropout_add");
    ET_CHECK(x.numel() == y.numel(), "dropout_add: size mismatch");
    dropout_rows(P(x), d, first_row, P(y), true, rows_of(x), cols_of(x));
  }
  static Ptr optional_ptr(const Tensor* t) { return t ? P(*t) : Ptr{nullptr, 0}; }
  void layernorm_forward(const Tensor& x, const Tensor& w, const Tensor* b, float eps, Tensor& y,
                         Tensor& mean, Tensor& rstd, Tensor* xhat) const override {
    OpScope scope_(prof.get(), "layernorm_forward");
    int64_t rows = rows_of(x);
    int n = static_cast<int>(cols_of(x));
    ET_CHECK(!xhat || xhat->numel() == x.numel(), "layernorm_forward: xhat size mismatch");
    const Ptr xh = optional_ptr(xhat);
    int64_t ldy = 0;
    const Ptr yp = P_rows(y, n, ldy);
    if (ldy % 8 == 0 &&
        norm_rows_vectorised(n, {x.data, y.data, w.data, b ? b->data : nullptr, xh.p})) {
      layernorm_forward_rows(P(x), F(w), b ? F(*b) : nullptr, eps, yp, ldy, W(mean), W(rstd), xh,
                             rows, n);
      return;
    }
    if (y.pitch) {  // a Linear's input with spare columns (model/linear.h)
      via_contiguous(y, [&](Tensor& t) { layernorm_forward(x, w, b, eps, t, mean, rstd, xhat); });
      return;
    }
    layernorm_forward_kernel<<<blocks_for(rows * 32, 256), 256>>>(
        P(x), F(w), b ? F(*b) : nullptr, eps, P(y), W(mean), W(rstd), xh, rows, n);
    ET_LAUNCH_CHECK();
  }
  void dropout_add_layernorm_forward(const Tensor& branch, const DropoutSite& d, Tensor& res,
                                     const Tensor& w, const Tensor* b, float eps, Tensor& y,
                                     Tensor& mean, Tensor& rstd) const override {
    const int n = static_cast<int>(cols_of(res));
    if (!norm_rows_vectorised(n, {branch.data, res.data, y.data, w.data, b ? b->data : nullptr})) {
      Backend::dropout_add_layernorm_forward(branch, d, res, w, b, eps, y, mean, rstd);
      return;
    }
    OpScope scope_(prof.get(), "dropout_add_layernorm_forward");
    ET_CHECK(branch.numel() == res.numel() && y.numel() == res.numel(),
             "dropout_add_layernorm_forward: size mismatch");
    layernorm_forward_rows(P(res), F(w), b ? F(*b) : nullptr, eps, P(y), n, W(mean), W(rstd),
                           Ptr{nullptr, 0}, rows_of(res), n, P(branch), d);
  }
  void layernorm_backward_dropout(const Tensor& dy, const Tensor& x, const Tensor& w,
                                  const Tensor& mean, const Tensor& rstd, Tensor& dx, Tensor* dw,
                                  Tensor* db, const DropoutSite& d,
                                  Tensor& dropped) const override {
    const int n = static_cast<int>(cols_of(x));
    if (!norm_rows_vectorised(n, {dy.data, x.data, dx.data, w.data, dropped.data})) {
      Backend::layernorm_backward_dropout(dy, x, w, mean, rstd, dx, dw, db, d, dropped);
      return;
    }
    OpScope scope_(prof.get(), "layernorm_backward_dropout");
    ET_CHECK(dropped.numel() == dx.numel(), "layernorm_backward_dropout: size mismatch");
    layernorm_backward_rows(P(dy), P(x), F(w), F(mean), F(rstd), {P(dx)}, dw ? W(*dw) : nullptr,
                            db ? W(*db) : nullptr, rows_of(x), n, P(dropped), d);
  }
  // A norm backward's dx for the vectorised kernels: written, or added to with a copy
  // (layernorm_backward_normalized).
  NormGradOut grad_out(Tensor& dx, bool accumulate, Tensor* dx_copy) const {
    if (dx_copy)
      ET_CHECK(dx_copy->numel() == dx.numel(), "norm backward: the copy of dx has ",
               dx_copy->numel(), " values, dx ", dx.numel());
    return {P(dx), accumulate ? 1 : 0, optional_ptr(dx_copy)};
  }
  // Other widths: the gradient into a temporary, then the sum and the copy as passes of their own.
  template <typename F>
  void norm_grad_by_passes(Tensor& dx, bool accumulate, Tensor* dx_copy, F&& backward) const {
    if (!accumulate) {
      backward(dx);
    } else {
      Tensor t = empty(dx.shape, dx.dtype);
      backward(t);
      add(dx, t, dx);
    }
    if (dx_copy) copy(*dx_copy, dx);
  }
  // mean null: x is the saved xhat
  void layernorm_backward_any(const Tensor& dy, const Tensor& x, const Tensor& w, const float* mean,
                              const Tensor& rstd, Tensor& dx, Tensor* dw, Tensor* db,
                              bool accumulate = false, Tensor* dx_copy = nullptr) const {
    OpScope scope_(prof.get(), "layernorm_backward");
    int64_t rows = rows_of(x);
    int n = static_cast<int>(cols_of(x));
    if (norm_rows_vectorised(
            n, {dy.data, x.data, dx.data, w.data, dx_copy ? dx_copy->data : nullptr})) {
      layernorm_backward_rows(P(dy), P(x), F(w), mean, F(rstd), grad_out(dx, accumulate, dx_copy),
                              dw ? W(*dw) : nullptr, db ? W(*db) : nullptr, rows, n);
      return;
    }
    if (accumulate || dx_copy) {
      norm_grad_by_passes(dx, accumulate, dx_copy, [&](Tensor& out) {
        layernorm_backward_any(dy, x, w, mean, rstd, out, dw, db);
      });
      return;
    }
    unsigned blocks = static_cast<unsigned>(std::min<int64_t>((rows + 7) / 8, 1024));
    size_t smem = 2 * sizeof(float) * n;
    auto launch = [&](auto kernel) {
      allow_dynamic_smem(kernel, smem);
      if (rows > 0)
        kernel<<<blocks, 256, smem>>>(P(dy), P(x), F(w), mean, F(rstd), P(dx),
                                      dw ? W(*dw) : nullptr, db ? W(*db) : nullptr, rows, n);
    };
    if (n <= 128)
      launch(layernorm_backward_kernel<4>);
    else if (n <= 1024)
      launch(layernorm_backward_kernel<32>);
    else
      launch(layernorm_backward_kernel<0>);
    ET_LAUNCH_CHECK();
  }
  void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& mean,
                          const Tensor& rstd, Tensor& dx, Tensor* dw, Tensor* db) const override {
    layernorm_backward_any(dy, x, w, F(mean), rstd, dx, dw, db);
  }
  void layernorm_backward_normalized(const Tensor& dy, const Tensor& xhat, const Tensor& w,
                                     const Tensor& rstd, Tensor& dx, Tensor* dw, Tensor* db,
                                     bool accumulate, Tensor* dx_copy) const override {
    layernorm_backward_any(dy, xhat, w, nullptr, rstd, dx, dw, db, accumulate, dx_copy);
  }
  // y may be a strided view (a Linear's input with spare columns, linear.h), written at its pitch
  void rmsnorm_forward(const Tensor& x, const Tensor& w, float offset, float eps, Tensor& y,
                       Tensor& rstd, Tensor* xhat, bool accumulate) const override {
    OpScope scope_(prof.get(), "rmsnorm_forward");
    const int n = static_cast<int>(w.numel());
    const int64_t rows = x.numel() / n;
    ET_CHECK(rows * n == x.numel() && y.numel() == x.numel() && rstd.numel() == rows &&
                 (!xhat || xhat->numel() == x.numel()),
             "rmsnorm_forward: sizes do not match");
    const Ptr xh = optional_ptr(xhat);
    int64_t ldy = 0;
    const Ptr yp = P_rows(y, n, ldy);
    if (ldy % 8 == 0 && norm_rows_vectorised(n, {x.data, y.data, w.data, xh.p})) {
      rmsnorm_forward_rows(P(x), F(w), offset, eps, yp, ldy, W(rstd), xh, rows, n, accumulate);
      return;
    }
    if (y.pitch) {
      via_contiguous(y, [&](Tensor& t) {
        if (accumulate) copy_columns(y.pitch_rows(), 0, t, 0, n);
        rmsnorm_forward(x, w, offset, eps, t, rstd, xhat, accumulate);
      });
      return;
    }
    if (rows > 0)
      rmsnorm_forward_kernel<<<blocks_for(rows * 32, 256), 256>>>(P(x), F(w), offset, eps, P(y),
                                                                  W(rstd), xh, rows, n, accumulate);
    ET_LAUNCH_CHECK();
  }
  void rmsnorm_backward_any(const Tensor& dy, const Tensor& x, bool normalized, const Tensor& w,
                            float offset, const Tensor& rstd, Tensor& dx, Tensor* dw,
                            bool accumulate = false, Tensor* dx_copy = nullptr) const {
    OpScope scope_(prof.get(), "rmsnorm_backward");
    const int n = static_cast<int>(w.numel());
    const int64_t rows = x.numel() / n;
    if (norm_rows_vectorised(
            n, {dy.data, x.data, dx.data, w.data, dx_copy ? dx_copy->data : nullptr})) {
      rmsnorm_backward_rows(P(dy), P(x), normalized, F(w), offset, F(rstd),
                            grad_out(dx, accumulate, dx_copy), dw ? W(*dw) : nullptr, rows, n);
      return;
    }
    if (accumulate || dx_copy) {
      norm_grad_by_passes(dx, accumulate, dx_copy, [&](Tensor& out) {
        rmsnorm_backward_any(dy, x, normalized, w, offset, rstd, out, dw);
      });
      return;
    }
    unsigned blocks = static_cast<unsigned>(std::min<int64_t>((rows + 7) / 8, 1024));
    size_t smem = sizeof(float) * n;
    auto launch = [&](auto kernel) {
      allow_dynamic_smem(kernel, smem);
      if (rows > 0)
        kernel<<<blocks, 256, smem>>>(P(dy), P(x), normalized, F(w), offset, F(rstd), P(dx),
                                      dw ? W(*dw) : nullptr, rows, n);
    };
    if (n <= 128)
      launch(rmsnorm_backward_kernel<4>);
    else if (n <= 1024)
      launch(rmsnorm_backward_kernel<32>);
    else
      launch(rmsnorm_backward_kernel<0>);
    ET_LAUNCH_CHECK();
  }
  void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, float offset,
                        const Tensor& rstd, Tensor& dx, Tensor* dw) const override {
    rmsnorm_backward_any(dy, x, false, w, offset, rstd, dx, dw);
  }
  void rmsnorm_backward_normalized(const Tensor& dy, const Tensor& xhat, const Tensor& w,
                                   float offset, const Tensor& rstd, Tensor& dx, Tensor* dw,
                                   bool accumulate, Tensor* dx_copy) const override {
    rmsnorm_backward_any(dy, xhat, true, w, offset, rstd, dx, dw, accumulate, dx_copy);
  }
  void rmsnorm_add_rmsnorm_forward(const Tensor& x, const Tensor& w1, Tensor& sum, Tensor& rstd1,
                                   Tensor* xhat1, const Tensor& w2, Tensor& y, Tensor& rstd2,
                                   Tensor* xhat2, float offset, float eps) const override {
    const int n = static_cast<int>(w1.numel());
    const int64_t rows = x.numel() / n;
    ET_CHECK(w2.numel() == n && rows * n == x.numel() && sum.numel() == x.numel() &&
                 y.numel() == x.numel() && rstd1.numel() == rows && rstd2.numel() == rows &&
                 (!xhat1 || xhat1->numel() == x.numel()) && (!xhat2 || xhat2->numel() == x.numel()),
             "rmsnorm_add_rmsnorm_forward: sizes do not match");
    const Ptr xh1 = optional_ptr(xhat1), xh2 = optional_ptr(xhat2);
    int64_t ldy = 0;
    const Ptr yp = P_rows(y, n, ldy);  // y may be a strided view, as for rmsnorm_forward
    if (ldy % 8 != 0 ||
        !norm_rows_vectorised(n, {x.data, sum.data, y.data, w1.data, w2.data, xh1.p, xh2.p})) {
      Backend::rmsnorm_add_rmsnorm_forward(x, w1, sum, rstd1, xhat1, w2, y, rstd2, xhat2, offset,
                                           eps);
      return;
    }
    OpScope scope_(prof.get(), "rmsnorm_add_rmsnorm_forward");
    rmsnorm_add_rmsnorm_forward_rows(P(x), F(w1), P(sum), W(rstd1), xh1, F(w2), yp, ldy, W(rstd2),
                                     xh2, offset, eps, rows, n);
  }
  void rmsnorm_add_rmsnorm_backward(const Tensor& dy2, const Tensor& xhat2, const Tensor& w2,
                                    const Tensor& rstd2, Tensor* dw2, Tensor& dsum,
                                    const Tensor& xhat1, const Tensor& w1, const Tensor& rstd1,
                                    Tensor* dw1, Tensor& dx1, float offset) const override {
    const int n = static_cast<int>(w1.numel());
    const int64_t rows = dy2.numel() / n;
    ET_CHECK(w2.numel() == n && rows * n == dy2.numel() && xhat2.numel() == dy2.numel() &&
                 dsum.numel() == dy2.numel() && xhat1.numel() == dy2.numel() &&
                 dx1.numel() == dy2.numel() && rstd1.numel() == rows && rstd2.numel() == rows,
             "rmsnorm_add_rmsnorm_backward: sizes do not match");
    // trainable norm weights take the two passes (their column sums live in those kernels)
    if (dw1 || dw2 ||
        !norm_rows_vectorised(
            n, {dy2.data, xhat2.data, dsum.data, xhat1.data, dx1.data, w1.data, w2.data})) {
      Backend::rmsnorm_add_rmsnorm_backward(dy2, xhat2, w2, rstd2, dw2, dsum, xhat1, w1, rstd1, dw1,
                                            dx1, offset);
      return;
    }
    OpScope scope_(prof.get(), "rmsnorm_add_rmsnorm_backward");
    rmsnorm_add_rmsnorm_backward_rows(P(dy2), P(xhat2), F(w2), F(rstd2), P(dsum), P(xhat1), F(w1),
                                      F(rstd1), P(dx1), offset, rows, n);
  }
  void norm_scale_shift(const Tensor& xhat, const Tensor& w, float offset, const Tensor* b,
                        Tensor& y) const override {
    OpScope scope_(prof.get(), "norm_scale_shift");
    const int n = static_cast<int>(w.numel());
    const int64_t rows = xhat.numel() / n;
    ET_CHECK(rows * n == xhat.numel() && y.numel() == xhat.numel() && (!b || b->numel() == n),
             "norm_scale_shift: sizes do not match");
    norm_scale_shift_rows(P(xhat), F(w), offset, b ? F(*b) : nullptr, P(y), rows, n);
  }
  void rope_columns(const Tensor& src, int64_t src_col, Tensor& dst, int64_t dst_col,
                    const Tensor& positions, int heads, int head_dim, double theta,
                    bool inverse) const override {
    OpScope scope_(prof.get(), "rope");
    const int64_t T = positions.numel();
    check_rope_columns(src, src_col, dst, dst_col, T, heads, head_dim);
    const float log_theta = static_cast<float>(std::log(theta));
    cuda::rope_columns_rows(P(src), src.dim(1), src_col, P(dst), dst.dim(1), dst_col, I(positions),
                            T, heads, head_dim / 2, log_theta, rope_table(log_theta, head_dim / 2),
                            inverse ? -1.0f : 1.0f);
  }
  // The (cos, sin) table of one theta and head dim, built on first use and kept (at most a
  // few per model: one theta per layer type).
  cuda::RopeTable rope_table(float log_theta, int half) const {
    for (const RopeTableEntry& e : rope_tables)
      if (e.log_theta == log_theta && e.half == half)
        return {static_cast<const float2*>(e.cs.data), cuda::kRopeTableRows};
    Tensor cs = empty({int64_t{cuda::kRopeTableRows} * half * 2}, DType::F32);
    cuda::rope_table_fill(static_cast<float2*>(cs.data), cuda::kRopeTableRows, half, log_theta);
    rope_tables.push_back({log_theta, half, cs});
    return {static_cast<const float2*>(cs.data), cuda::kRopeTableRows};
  }
  void rmsnorm_rope_forward(const Tensor& x, const Tensor& w, float offset, float eps,
                            const Tensor& positions, int heads, double theta, Tensor& y,
                            Tensor& rstd) const override {
    const int D = static_cast<int>(w.numel()), half = D / 2;
    const int64_t rows = positions.numel() * heads;
    if (D % 2 != 0 || x.numel() != rows * D || y.numel() != x.numel() ||
        !cuda::rmsnorm_rope_fused(half, {x.data, y.data, w.data})) {
      Backend::rmsnorm_rope_forward(x, w, offset, eps, positions, heads, theta, y, rstd);
      return;
    }
    OpScope scope_(prof.get(), "rmsnorm_rope_forward");
    const float log_theta = static_cast<float>(std::log(theta));
    cuda::rmsnorm_rope_forward_rows(P(x), F(w), offset, eps, I(positions), heads, half, log_theta,
                                    rope_table(log_theta, half), P(y), W(rstd), rows);
  }
  void rmsnorm_rope_backward(const Tensor& dy, const Tensor& x, const Tensor& w, float offset,
                             const Tensor& rstd, const Tensor& positions, int heads, double theta,
                             Tensor& dx, Tensor* dw) const override {
    const int D = static_cast<int>(w.numel()), half = D / 2;
    const int64_t rows = positions.numel() * heads;
    int64_t ldx = 0;  // dx may be a strided view [T, heads D] (a group's share, linear.h)
    const Ptr dxp = P_rows(dx, int64_t{heads} * D, ldx);
    if (D % 2 != 0 || x.numel() != rows * D || dy.numel() != x.numel() || dx.numel() != x.numel() ||
        ldx % 8 != 0 || !cuda::rmsnorm_rope_fused(half, {dy.data, x.data, dx.data, w.data})) {
      if (dx.pitch) {
        via_contiguous(dx, [&](Tensor& t) {
          rmsnorm_rope_backward(dy, x, w, offset, rstd, positions, heads, theta, t, dw);
        });
        return;
      }
      Backend::rmsnorm_rope_backward(dy, x, w, offset, rstd, positions, heads, theta, dx, dw);
      return;
    }
    OpScope scope_(prof.get(), "rmsnorm_rope_backward");
    const float log_theta = static_cast<float>(std::log(theta));
    cuda::rmsnorm_rope_backward_rows(P(dy), P(x), F(w), offset, F(rstd), I(positions), heads, half,
                                     log_theta, rope_table(log_theta, half), dxp, ldx,
                                     dw ? W(*dw) : nullptr, rows);
  }
  // y may be a strided view (a Linear's input with spare columns, linear.h), written at its pitch
  void glu_packed_forward(Act a, const Tensor& gu, Tensor& y) const override {
    OpScope scope_(prof.get(), "glu_forward");
    const int64_t T = y.dim(0), F = y.dim(1), ldy = y.row_pitch();
    check_glu_packed("glu_packed_forward", gu, y);
    check_device_strided(y);
    if (F % 8 == 0 && ldy % 8 == 0 && bf16x8({&gu, &y}) && cuda::vec8_aligned(y.data)) {
      with_act_code(static_cast<int>(a), [&](auto A) {
        glu_forward_bf16x8<A><<<blocks_for(T * F / 8, 256), 256>>>(B16(gu), B16(gu) + F, 2 * F,
                                                                   B16(y), ldy, F, T * F / 8);
      });
      ET_LAUNCH_CHECK();
      return;
    }
    if (y.pitch) {
      via_contiguous(y, [&](Tensor& t) { glu_packed_forward(a, gu, t); });
      return;
    }
    if (T * F > 0)
      glu_packed_forward_kernel<<<blocks_for(T * F, 256), 256>>>(static_cast<int>(a), P(gu), P(y),
                                                                 T, F);
    ET_LAUNCH_CHECK();
  }
  void glu_packed_backward(Act a, const Tensor& gu, const Tensor& dy, Tensor& dgu) const override {
    OpScope scope_(prof.get(), "glu_backward");
    const int64_t T = dy.dim(0), F = dy.dim(1);
    check_glu_packed("glu_packed_backward", gu, dy);
    check_glu_packed("glu_packed_backward", dgu, dy);
    if (F % 8 == 0 && bf16x8({&gu, &dy, &dgu})) {
      with_act_code(static_cast<int>(a), [&](auto A) {
        glu_backward_bf16x8<A><<<blocks_for(T * F / 8, 256), 256>>>(
            B16(gu), B16(gu) + F, 2 * F, B16(dy), B16(dgu), B16(dgu) + F, F, T * F / 8);
      });
      ET_LAUNCH_CHECK();
      return;
    }
    if (T * F > 0)
      glu_packed_backward_kernel<<<blocks_for(T * F, 256), 256>>>(static_cast<int>(a), P(gu), P(dy),
                                                                  P(dgu), T, F);
    ET_LAUNCH_CHECK();
  }
  // y may be a strided view, as for glu_packed_forward
  void glu_forward(Act a, const Tensor& gate, const Tensor& up, Tensor& y) const override {
    OpScope scope_(prof.get(), "glu_forward");
    ET_CHECK(gate.numel() == up.numel() && gate.numel() == y.numel(), "glu_forward: size mismatch");
    if (y.pitch) {  // rows of F values, y's a pitch apart
      const int64_t F = y.dim(1), ldy = y.pitch;
      check_device(gate);
      check_device(up);
      check_device_strided(y);
      if (F % 8 == 0 && ldy % 8 == 0 && bf16x8({&gate, &up, &y}) && cuda::vec8_aligned(y.data)) {
        with_act_code(static_cast<int>(a), [&](auto A) {
          glu_forward_bf16x8<A><<<blocks_for(y.numel() / 8, 256), 256>>>(
              B16(gate), B16(up), F, B16(y), ldy, F, y.numel() / 8);
        });
        ET_LAUNCH_CHECK();
      } else {
        via_contiguous(y, [&](Tensor& t) { glu_forward(a, gate, up, t); });
      }
      return;
    }
    if (bf16x8({&gate, &up, &y})) {  // as one row of n values
      with_act_code(static_cast<int>(a), [&](auto A) {
        glu_forward_bf16x8<A><<<blocks_for(y.numel() / 8, 256), 256>>>(
            B16(gate), B16(up), 0, B16(y), y.numel(), y.numel(), y.numel() / 8);
      });
      ET_LAUNCH_CHECK();
      return;
    }
    glu_forward_kernel<<<blocks_for(y.numel(), 256), 256>>>(static_cast<int>(a), P(gate), P(up),
                                                            P(y), y.numel());
    ET_LAUNCH_CHECK();
  }
  void glu_backward(Act a, const Tensor& gate, const Tensor& up, const Tensor& dy, Tensor& dgate,
                    Tensor& dup) const override {
    OpScope scope_(prof.get(), "glu_backward");
    ET_CHECK(gate.numel() == dy.numel() && up.numel() == dy.numel(), "glu_backward: size mismatch");
    if (bf16x8({&gate, &up, &dy, &dgate, &dup})) {
      with_act_code(static_cast<int>(a), [&](auto A) {
        glu_backward_bf16x8<A><<<blocks_for(dy.numel() / 8, 256), 256>>>(
            B16(gate), B16(up), 0, B16(dy), B16(dgate), B16(dup), dy.numel(), dy.numel() / 8);
      });
      ET_LAUNCH_CHECK();
      return;
    }
    glu_backward_kernel<<<blocks_for(dy.numel(), 256), 256>>>(static_cast<int>(a), P(gate), P(up),
                                                              P(dy), P(dgate), P(dup), dy.numel());
    ET_LAUNCH_CHECK();
  }
  // An op whose kernel writes contiguous rows, given a strided output view y: into a contiguous
  // temporary, then its columns into the view.
  template <typename F>
  void via_contiguous(Tensor& y, F&& op) const {
    Tensor t = empty(y.shape, y.dtype);
    op(t);
    copy_into_view(t, y);
  }
  // A contiguous tensor's values into a 2-D view of the same shape (rows a pitch apart).
  void copy_into_view(const Tensor& t, Tensor& view) const {
    Tensor rows = view.pitch_rows();
    copy_columns(t, 0, rows, 0, view.dim(1));
  }
  void copy_columns(const Tensor& src, int64_t src_col, Tensor& dst, int64_t dst_col,
                    int64_t width) const override {
    OpScope scope_(prof.get(), "copy_columns");
    const int64_t rows = src.dim(0), sc = src.dim(1), dc = dst.dim(1);
    check_copy_columns(src, src_col, dst, dst_col, width);
    if (rows * width == 0) return;
    const bf16* s0 = src.dtype == DType::BF16 ? B16(src) + src_col : nullptr;
    bf16* d0 = dst.dtype == DType::BF16 ? B16(dst) + dst_col : nullptr;
    if (s0 && d0 && sc % 8 == 0 && dc % 8 == 0 && width % 8 == 0 && cuda::vec8_aligned(s0) &&
        cuda::vec8_aligned(d0))
      copy_columns_bf16x8<<<blocks_for(rows * width / 8, 256), 256>>>(s0, sc, d0, dc, rows,
                                                                      width / 8);
    else
      copy_columns_kernel<<<blocks_for(rows * width, 256), 256>>>(P(src), sc, src_col, P(dst), dc,
                                                                  dst_col, rows, width);
    ET_LAUNCH_CHECK();
  }
  void act_forward(Act a, const Tensor& x, Tensor& y) const override {
    if (y.pitch) {  // the next Linear's input with spare columns (linear_input)
      via_contiguous(y, [&](Tensor& t) { act_forward(a, x, t); });
      return;
    }
    OpScope scope_(prof.get(), "act_forward");
    if (bf16x8({&x, &y})) {
      with_act_code(static_cast<int>(a), [&](auto A) {
        act_forward_bf16x8<A>
            <<<blocks_for(x.numel() / 8, 256), 256>>>(B16(x), B16(y), x.numel() / 8);
      });
      ET_LAUNCH_CHECK();
      return;
    }
    act_forward_kernel<<<blocks_for(x.numel(), 256), 256>>>(static_cast<int>(a), P(x), P(y),
                                                            x.numel());
    ET_LAUNCH_CHECK();
  }
  void act_backward(Act a, const Tensor& x, const Tensor& dy, Tensor& dx) const override {
    OpScope scope_(prof.get(), "act_backward");
    if (bf16x8({&x, &dy, &dx})) {
      with_act_code(static_cast<int>(a), [&](auto A) {
        act_backward_bf16x8<A>
            <<<blocks_for(x.numel() / 8, 256), 256>>>(B16(x), B16(dy), B16(dx), x.numel() / 8);
      });
      ET_LAUNCH_CHECK();
      return;
    }
    act_backward_kernel<<<blocks_for(x.numel(), 256), 256>>>(static_cast<int>(a), P(x), P(dy),
                                                             P(dx), x.numel());
    ET_LAUNCH_CHECK();
  }
  void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& y,
                         bool accumulate) const override {
    OpScope scope_(prof.get(), "embedding_forward");
    int64_t t = ids.numel();
    int n = static_cast<int>(cols_of(table));
    embedding_forward_kernel<<<blocks_for(t * n, 256), 256>>>(I(ids), F(table), P(y), t, n,
                                                              accumulate);
    ET_LAUNCH_CHECK();
  }
  void embedding_backward(const Tensor& ids, const Tensor& dy, Tensor& dtable) const override {
    OpScope scope_(prof.get(), "embedding_backward");
    int64_t t = ids.numel();
    int n = static_cast<int>(cols_of(dtable));
    embedding_backward_kernel<<<blocks_for(t * n, 256), 256>>>(I(ids), P(dy), W(dtable), t, n);
    ET_LAUNCH_CHECK();
  }

  // (sequence, first row) of every tile of `rows` rows, for the attention kernels' grids.
  // Sequences shorter than `below` only (the others go through the cuBLAS path).
  Tensor tiles_of(const AttentionArgs& a, int* n, int below = INT32_MAX,
                  int rows = kAttnTileRows) const {
    std::vector<int32_t> tiles;
    for (size_t b = 0; b + 1 < a.cu_seqlens.size(); ++b)
      for (int r = 0, len = a.cu_seqlens[b + 1] - a.cu_seqlens[b]; len < below && r < len;
           r += rows) {
        tiles.push_back(static_cast<int32_t>(b));
        tiles.push_back(r);
      }
    *n = static_cast<int>(tiles.size() / 2);
    return upload(cpu_from_i32(tiles, {static_cast<int64_t>(tiles.size())}));
  }
  // A cuBLAS attention plan with what its passes need on the device: the scratch and the
  // sequence table (starts, then lengths).
  struct GemmRun {
    GemmAttentionPlan plan;
    Tensor workspace, seq;
  };
  GemmRun gemm_run(const AttentionArgs& a, bool backward, DType io) const {
    GemmRun r{plan_attention_gemm(a, kGemmMinLen, backward, dtype_size(io), kGemmBudgetBytes)};
    r.workspace = empty({static_cast<int64_t>(r.plan.workspace_bytes)}, DType::U8);
    std::vector<int32_t> seq = r.plan.starts;
    seq.insert(seq.end(), r.plan.lens.begin(), r.plan.lens.end());
    r.seq = upload(cpu_from_i32(seq, {static_cast<int64_t>(seq.size())}));
    return r;
  }
  Tensor cu_of(const AttentionArgs& a) const {
    if (a.cu_seqlens_dev.defined()) return a.cu_seqlens_dev;
    return upload(cpu_from_i32(a.cu_seqlens, {static_cast<int64_t>(a.cu_seqlens.size())}));
  }
  // A contiguous copy of a 2-D view (Tensor::pitch), or the tensor itself when it is contiguous.
  Tensor dense(const Tensor& t) const {
    if (!t.pitch) return t;
    Tensor c = empty(t.shape, t.dtype);
    copy_columns(t.pitch_rows(), 0, c, 0, t.dim(1));
    return c;
  }
  // Whether the tensor-core attention kernels take these operands as they lie: rows a multiple
  // of 8 elements apart from 16-byte aligned starts (their 16-byte tile copies), k and v (ins
  // 1 and 2) one row stride.
  static bool attention_tc_views(std::initializer_list<const Tensor*> ins,
                                 std::initializer_list<const Tensor*> outs) {
    for (auto list : {ins, outs})
      for (const Tensor* t : list)
        if (t->row_pitch() % 8 != 0 || !cuda::vec8_aligned(t->data) || (t->pitch && t->ndim() != 2))
          return false;
    return ins.begin()[1]->row_pitch() == ins.begin()[2]->row_pitch();
  }
  // q's and k/v's row strides (the operands checked as views of rows of their own width)
  static AttnStrides attention_strides(const Tensor& q, const Tensor& k, const Tensor& v) {
    AttnStrides st{};
    int64_t ldv = 0;
    P_rows(q, cols_of(q), st.q);
    P_rows(k, cols_of(k), st.kv);
    P_rows(v, cols_of(v), ldv);
    ET_CHECK(ldv == st.kv, "attention: k and v rows ", st.kv, " and ", ldv, " apart");
    st.out = st.q;  // the callers set the output-side strides
    st.dk = st.dv = st.kv;
    return st;
  }
  void attention_forward(const AttentionArgs& a, const Tensor& q, const Tensor& k, const Tensor& v,
                         Tensor& out, Tensor& lse) const override {
    const bool tc = attention_use_tc(a);
    const bool views = q.pitch || k.pitch || v.pitch || out.pitch;
    if (views && !(tc && attention_tc_views({&q, &k, &v}, {&out}))) {
      // the other paths read and write contiguous tensors
      const Tensor qc = dense(q), kc = dense(k), vc = dense(v);
      if (out.pitch)
        via_contiguous(out, [&](Tensor& t) { attention_forward(a, qc, kc, vc, t, lse); });
      else
        attention_forward(a, qc, kc, vc, out, lse);
      return;
    }
    OpScope scope_(prof.get(), "attention_forward");
    int n = 0;
    Tensor tiles = tiles_of(a, &n, INT32_MAX,
                            tc ? attention_tc_forward_rows(a.head_dim) : kAttnTileRows),
           cu = cu_of(a);
    if (n == 0) return;
    const bool bf = q.dtype == DType::BF16;
    ET_CHECK(k.dtype == q.dtype && v.dtype == q.dtype && out.dtype == q.dtype,
             "attention: q, k, v and out must share a dtype");
    if (tc) {
      AttnStrides st = attention_strides(q, k, v);
      P_rows(out, cols_of(q), st.out);
      attention_forward_tc(a, st, q.data, k.data, v.data, out.data, bf, W(lse), I(tiles), n, I(cu));
      return;
    }
    // Other head dims above 128 (256 has the tensor-core forward): sequences of kGemmMinLen
    // tokens or more through cuBLAS (batched products per bucket of similar lengths), shorter
    // ones through the fp32 tile kernels, which need no launch per sequence.
    const bool gemm = attention_use_gemm(a);
    if (gemm) {
      GemmRun r = gemm_run(a, false, q.dtype);
      attention_forward_gemm(blas, a, r.plan, I(r.seq), q.data, k.data, v.data, out.data, bf,
                             W(lse), r.workspace.data);
      tiles = tiles_of(a, &n, kGemmMinLen);
      if (n == 0) return;
    }
    // fp32 CUDA-core kernels for other head sizes
    Tensor q32 = convert(q, DType::F32), k32 = convert(k, DType::F32), v32 = convert(v, DType::F32);
    Tensor o32 = bf ? empty(out.shape, DType::F32) : out;
    if (bf && gemm) copy(o32, out);  // keep the rows the cuBLAS path wrote
    cuda::attention_forward(a, F(q32), F(k32), F(v32), W(o32), W(lse), I(tiles), n, I(cu));
    if (bf) copy(out, o32);
  }
  void attention_backward(const AttentionArgs& a, const Tensor& q, const Tensor& k, const Tensor& v,
                          const Tensor& out, const Tensor& lse, const Tensor& dout, Tensor& dq,
                          Tensor& dk, Tensor& dv, Tensor* d_rel_bias) const override {
    const bool tc = attention_use_tc(a);
    const bool views = q.pitch || k.pitch || v.pitch || out.pitch || dout.pitch || dq.pitch ||
                       dk.pitch || dv.pitch;
    // The tensor-core kernels take q, k, v, out, dK and dV as views (dK and dV in q's dtype:
    // they are stored as they are); dO and dQ contiguous.
    const bool tc_views = tc && !dout.pitch && !dq.pitch && (!dk.pitch || dk.dtype == q.dtype) &&
                          (!dv.pitch || dv.dtype == q.dtype) &&
                          attention_tc_views({&q, &k, &v}, {&out, &dk, &dv});
    if (views && !tc_views) {  // the other paths read and write contiguous tensors
      auto dense_out = [&](Tensor& t) { return t.pitch ? empty(t.shape, t.dtype) : t; };
      Tensor dqc = dense_out(dq), dkc = dense_out(dk), dvc = dense_out(dv);
      attention_backward(a, dense(q), dense(k), dense(v), dense(out), lse, dense(dout), dqc, dkc,
                         dvc, d_rel_bias);
      for (auto [from, to] : {std::pair{&dqc, &dq}, std::pair{&dkc, &dk}, std::pair{&dvc, &dv}})
        if (to->pitch) copy_into_view(*from, *to);
      return;
    }
    OpScope scope_(prof.get(), "attention_backward");
    int n = 0;
    Tensor tiles = tiles_of(a, &n), cu = cu_of(a);
    if (n == 0) return;
    const bool bf = q.dtype == DType::BF16;
    Tensor delta = empty({lse.numel()}, DType::F32);
    float* dbias = d_rel_bias ? W(*d_rel_bias) : nullptr;
    // fp32 gradient buffers (the kernels accumulate in fp32), copied into bf16 outputs at the end
    auto f32_out = [&](Tensor& t) {
      return t.dtype == DType::F32 ? t : empty(t.shape, DType::F32);
    };
    if (tc) {
      ET_CHECK(out.dtype == q.dtype && dout.dtype == q.dtype,
               "attention: out, dout dtype mismatch");
      // dk, dv come out of the kernel in the activation dtype (plain stores); dq accumulates
      // in fp32 (atomic adds) and is converted after.
      auto io_out = [&](Tensor& t) { return t.dtype == q.dtype ? t : empty(t.shape, q.dtype); };
      Tensor dq32 = f32_out(dq), dkt = io_out(dk), dvt = io_out(dv);
      AttnStrides st = attention_strides(q, k, v);
      st.out = cols_of(dout);  // dO's and dQ's rows (contiguous)
      P_rows(dkt, cols_of(dkt), st.dk);
      P_rows(dvt, cols_of(dvt), st.dv);
      int64_t ldo = 0;
      P_rows(out, cols_of(out), ldo);
      P(dout);
      attention_delta(out.data, ldo, dout.data, bf, W(delta), rows_of(out), a.n_heads, a.head_dim);
      ET_CUDA(cudaMemsetAsync(W(dq32), 0, dq32.nbytes()));  // dq takes atomic adds
      attention_backward_tc(a, st, q.data, k.data, v.data, dout.data, bf, F(lse), F(delta), W(dq32),
                            dkt.data, dvt.data, dbias, I(tiles), n, I(cu));
      if (dq.dtype != DType::F32) copy(dq, dq32);
      if (dkt.data != dk.data) copy(dk, dkt);
      if (dvt.data != dv.data) copy(dv, dvt);
      return;
    }
    // Head dims above 128 without the tensor-core kernels: long sequences through cuBLAS, short
    // ones through the tile kernels (which run first: with grouped heads they clear all of dk,
    // dv).
    Tensor dq32 = f32_out(dq), dk32 = f32_out(dk), dv32 = f32_out(dv);
    const bool gemm = attention_use_gemm(a);
    if (gemm) tiles = tiles_of(a, &n, kGemmMinLen);
    if (n > 0) {
      auto f32 = [&](const Tensor& t) { return convert(t, DType::F32); };
      Tensor q32 = f32(q), k32 = f32(k), v32 = f32(v), o32 = f32(out), g32 = f32(dout);
      cuda::attention_backward(a, F(q32), F(k32), F(v32), F(o32), F(lse), F(g32), W(dq32), W(dk32),
                               W(dv32), dbias, W(delta), I(tiles), n, I(cu));
    }
    if (gemm) {
      attention_delta(out.data, cols_of(out), dout.data, bf, W(delta), rows_of(out), a.n_heads,
                      a.head_dim);
      GemmRun r = gemm_run(a, true, q.dtype);
      attention_backward_gemm(blas, a, r.plan, I(r.seq), q.data, k.data, v.data, dout.data, bf,
                              F(lse), F(delta), W(dq32), W(dk32), W(dv32), r.workspace.data);
    }
    if (dq.dtype != DType::F32) copy(dq, dq32);
    if (dk.dtype != DType::F32) copy(dk, dk32);
    if (dv.dtype != DType::F32) copy(dv, dv32);
  }

  void pool_forward(PoolMode mode, const Tensor& x, const std::vector<int32_t>& cu,
                    const std::vector<int32_t>& skip, Tensor& out, Tensor* argmax) const override {
    OpScope scope_(prof.get(), "pool_forward");
    const int nseq = static_cast<int>(cu.size()) - 1;
    const int c = static_cast<int>(cols_of(x));
    Tensor dcu = upload(cpu_from_i32(cu, {nseq + 1}));
    Tensor dskip;
    if (!skip.empty()) dskip = upload(cpu_from_i32(skip, {nseq}));
    pool_forward_kernel<<<blocks_for(static_cast<int64_t>(nseq) * c, 256), 256>>>(
        static_cast<int>(mode), P(x), I(dcu), skip.empty() ? nullptr : I(dskip), W(out),
        argmax ? static_cast<int32_t*>(argmax->data) : nullptr, nseq, c);
    ET_LAUNCH_CHECK();
  }
  void pool_backward(PoolMode mode, const Tensor& dout, const std::vector<int32_t>& cu,
                     const std::vector<int32_t>& skip, const Tensor* argmax,
                     Tensor& dx) const override {
    OpScope scope_(prof.get(), "pool_backward");
    const int nseq = static_cast<int>(cu.size()) - 1;
    const int c = static_cast<int>(cols_of(dx));
    fill(dx, 0);
    Tensor dcu = upload(cpu_from_i32(cu, {nseq + 1}));
    Tensor dskip;
    if (!skip.empty()) dskip = upload(cpu_from_i32(skip, {nseq}));
    pool_backward_kernel<<<blocks_for(static_cast<int64_t>(nseq) * c, 256), 256>>>(
        static_cast<int>(mode), F(dout), I(dcu), skip.empty() ? nullptr : I(dskip),
        argmax ? I(*argmax) : nullptr, P(dx), nseq, c);
    ET_LAUNCH_CHECK();
  }
  // The single-tensor ops are the multi-tensor ones on one tensor (g is only read when the
  // gradient is not zeroed).
  void adamw_step(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int64_t step) const override {
    adamw_step_all({{&p, const_cast<Tensor*>(&g), &m, &v}}, lr, beta1, beta2, eps, weight_decay,
                   step, false, nullptr);
  }
  double sum_squares(const Tensor& t) const override { return sum_squares_all({&t}); }
  static AdamWHyper adamw_hyper(float lr, float beta1, float beta2, float eps, float weight_decay,
                                int64_t step) {
    const double bc1 = 1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(step));
    const double bc2 = 1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(step));
    return {lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            static_cast<float>(lr / bc1),
            static_cast<float>(std::sqrt(bc2))};
  }
  // Runs `launch(group, grid)` for groups of up to kMultiTensors tensors (filled by `set`).
  template <typename Multi = MultiTensors, typename Set, typename Launch>
  static void for_groups(size_t count, Set&& set, Launch&& launch) {
    for (size_t first = 0; first < count; first += kMultiTensors) {
      Multi t{};
      int64_t longest = 0;
      const size_t k = std::min<size_t>(kMultiTensors, count - first);
      for (size_t j = 0; j < k; ++j) {
        set(t, j, first + j);
        longest = std::max(longest, t.n[j]);
      }
      if (longest == 0) continue;
      const dim3 grid(std::min(blocks_for(longest, 256), 1024u), static_cast<unsigned>(k));
      launch(t, grid);
      ET_LAUNCH_CHECK();
    }
  }
  void adamw_step_all(const std::vector<AdamWSlot>& slots, float lr, float beta1, float beta2,
                      float eps, float weight_decay, int64_t step, bool zero_grads,
                      const GradClip* clip) const override {
    OpScope scope_(prof.get(), "adamw_step_all");
    if (clip)
      ET_CHECK(clip->sum_sq->dtype == DType::F64 && clip->sum_sq->numel() == 1 &&
                   clip->sum_sq->device == Device::CUDA,
               "adamw_step_all: the clip's sum of squares must be a [1] F64 device tensor");
    for (const AdamWSlot& s : slots) {
      ET_CHECK(s.p->dtype == DType::F32 && s.g->dtype == DType::F32 && s.m->dtype == DType::F32 &&
                   s.v->dtype == DType::F32 && s.g->numel() == s.p->numel() &&
                   s.m->numel() == s.p->numel() && s.v->numel() == s.p->numel(),
               "adamw_step_all: parameter, gradient and moments must be fp32 of one size, got ",
               shape_str(s.p->shape), " ", shape_str(s.g->shape));
    }
    AdamWHyper h = adamw_hyper(lr, beta1, beta2, eps, weight_decay, step);
    if (clip) {
      h.clip_sum_sq = static_cast<const double*>(clip->sum_sq->data);
      h.max_norm = clip->max_norm;
    }
    for_groups(
        slots.size(),
        [&](MultiTensors& t, size_t j, size_t i) {
          t.p[j] = W(*slots[i].p), t.g[j] = W(*slots[i].g), t.m[j] = W(*slots[i].m);
          t.v[j] = W(*slots[i].v), t.n[j] = slots[i].p->numel();
        },
        [&](const MultiTensors& t, dim3 grid) {
          adamw_multi_kernel<<<grid, 256>>>(t, h, zero_grads ? 1 : 0);
        });
  }
  double sum_squares_all(const std::vector<const Tensor*>& ts) const override {
    const Tensor acc = sum_squares_all_dev(ts);
    double out = 0;
    ET_CUDA(cudaMemcpy(&out, acc.data, sizeof(double), cudaMemcpyDeviceToHost));
    return out;
  }
  Tensor sum_squares_all_dev(const std::vector<const Tensor*>& ts) const override {
    OpScope scope_(prof.get(), "sum_squares_all");
    Tensor acc = zeros({1}, DType::F64);
    for (const Tensor* x : ts)
      ET_CHECK(x->dtype == DType::F32, "sum_squares_all: fp32 tensors only");
    for_groups(
        ts.size(),
        [&](MultiTensors& t, size_t j, size_t i) {
          t.g[j] = const_cast<float*>(F(*ts[i])), t.n[j] = ts[i]->numel();
        },
        [&](const MultiTensors& t, dim3 grid) {
          sum_squares_multi_kernel<<<grid, 256>>>(t, static_cast<double*>(acc.data));
        });
    return acc;
  }
  void zero_all(const std::vector<Tensor*>& ts) const override {
    OpScope scope_(prof.get(), "zero_all");
    for (const Tensor* x : ts) ET_CHECK(x->dtype == DType::F32, "zero_all: fp32 tensors only");
    for_groups(
        ts.size(),
        [&](MultiTensors& t, size_t j, size_t i) { t.g[j] = W(*ts[i]), t.n[j] = ts[i]->numel(); },
        [&](const MultiTensors& t, dim3 grid) { zero_multi_kernel<<<grid, 256>>>(t); });
  }
  void copy_all(const std::vector<CopySlot>& slots) const override {
    OpScope scope_(prof.get(), "copy_all");
    std::vector<const CopySlot*> convert;
    std::vector<CopySlot> others;  // copies and other conversions, one op each
    for (const CopySlot& s : slots) {
      ET_CHECK(
          s.src->shape == s.dst->shape || (s.dst->pitch == 0 && s.src->numel() == s.dst->numel()),
          "copy_all: size mismatch ", shape_str(s.src->shape), " vs ", shape_str(s.dst->shape));
      if (s.src->dtype == DType::F32 && s.dst->dtype == DType::BF16)
        convert.push_back(&s);
      else
        others.push_back(s);
    }
    Backend::copy_all(others);
    for_groups<MultiConvert>(
        convert.size(),
        [&](MultiConvert& t, size_t j, size_t i) {
          const CopySlot& c = *convert[i];
          Tensor& dst = *c.dst;
          check_device_strided(dst);
          t.src[j] = F(*c.src), t.dst[j] = static_cast<bf16*>(dst.data);
          t.n[j] = c.src->numel();
          t.cols[j] = std::max<int64_t>(cols_of(dst), 1);
          t.pitch[j] = dst.pitch ? dst.pitch : t.cols[j];
          t.scale[j] = c.scale;
        },
        [&](const MultiConvert& t, dim3 grid) { convert_multi_kernel<<<grid, 256>>>(t); });
  }
  void l2norm_forward(const Tensor& x, Tensor& y, Tensor& norms) const override {
    OpScope scope_(prof.get(), "l2norm_forward");
    int64_t rows = rows_of(x);
    l2norm_forward_kernel<<<blocks_for(rows * 32, 256), 256>>>(P(x), P(y), W(norms), rows,
                                                               static_cast<int>(cols_of(x)));
    ET_LAUNCH_CHECK();
  }
  void l2norm_backward(const Tensor& dy, const Tensor& y, const Tensor& norms,
                       Tensor& dx) const override {
    OpScope scope_(prof.get(), "l2norm_backward");
    int64_t rows = rows_of(y);
    l2norm_backward_kernel<<<blocks_for(rows * 32, 256), 256>>>(P(dy), P(y), F(norms), P(dx), rows,
                                                                static_cast<int>(cols_of(y)));
    ET_LAUNCH_CHECK();
  }
  void diagonal_cross_entropy(const Tensor& logits, float grad_scale, Tensor& loss,
                              Tensor& dlogits) const override {
    OpScope scope_(prof.get(), "diagonal_cross_entropy");
    check_diagonal_cross_entropy(logits, loss, dlogits);
    const int64_t r = logits.dim(0), c = logits.dim(1);
    if (r == 0) return;
    diagonal_xent_kernel<<<blocks_for(r * 32, 256), 256>>>(F(logits), grad_scale, W(loss),
                                                           W(dlogits), r, c);
    ET_LAUNCH_CHECK();
  }
  size_t peak_bytes() const override { return pool->peak_in_use; }
  void reset_peak_bytes() const override {
    std::lock_guard<std::mutex> g(pool->mu);
    pool->peak_in_use = pool->in_use;
    prof->reset();
  }
  void synchronize() const override { ET_CUDA(cudaDeviceSynchronize()); }
  void profiler_capture(bool on) const override {
    ET_CUDA(on ? cudaProfilerStart() : cudaProfilerStop());
  }
  void set_gemm_tuning(bool on) const override {
    const char* env = std::getenv("EMBEDTUNE_GEMM_TUNE");  // "0": never
    std::lock_guard<std::mutex> g(lt->mu);
    lt->tune = on && !(env && std::string(env) == "0");
  }
};

}  // namespace
}  // namespace cuda

std::unique_ptr<Backend> make_cuda_backend(int device, DType act) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    cudaGetLastError();
    fail("no CUDA device is available");
  }
  ET_CHECK(device >= 0 && device < n, "CUDA device ", device, " does not exist (", n, " present)");
  return std::make_unique<cuda::CudaBackend>(device, act);
}

}  // namespace et
