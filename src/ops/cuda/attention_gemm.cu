// Attention through cuBLAS for head dimensions the tensor-core kernel does not cover (> 128,
// e.g. EmbeddingGemma's 256): per sequence, the score matrices of all heads are materialised
// ([heads, L, L] fp32), so memory grows with the square of the longest sequence, which is
// bounded by max_seq_length.
//   forward:  S = scale Q K^T (masked) ; P = softmax(S) ; O = P V ; lse = log sum exp S
//   backward: S and P recomputed from lse ; dP = dO V^T ; dS = P (dP - delta) ;
//             dQ = scale dS K ; dK = scale dS^T Q ; dV = P^T dO   (delta = rowsum(dO O))
// Row-major [L, D] blocks with row stride `ld` are column-major [D, L] matrices for cuBLAS.
// Grouped-query attention: query head h uses key/value head h / group; the products are
// batched over key/value heads, once per position g in the group (dK, dV accumulate over g).
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>

#include "ops/cuda/attention_gemm.h"
#include "ops/cuda/cuda_common.h"

namespace et::cuda {

namespace {

__device__ __forceinline__ bool masked(int i, int j, int causal, int window) {
  return (causal && j > i) || (window >= 0 && abs(i - j) > window);
}

template <typename T>
__device__ __forceinline__ void store(T* p, float v);
template <>
__device__ __forceinline__ void store<float>(float* p, float v) {
  *p = v;
}
template <>
__device__ __forceinline__ void store<__nv_bfloat16>(__nv_bfloat16* p, float v) {
  *p = __float2bfloat16(v);
}

// One warp per (head, query row): P = softmax over the unmasked keys; lse[(start+i), h].
template <typename T>
__global__ void softmax_rows_kernel(const float* S, T* P, float* lse, int L, int hq, int64_t start,
                                    int causal, int window) {
  const int64_t row = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= static_cast<int64_t>(hq) * L) return;
  const int h = static_cast<int>(row / L), i = static_cast<int>(row % L);
  const float* s = S + row * L;
  T* p = P + row * L;
  float m = -INFINITY;
  for (int j = lane; j < L; j += 32)
    if (!masked(i, j, causal, window)) m = fmaxf(m, s[j]);
  m = warp_max(m);
  float sum = 0;
  for (int j = lane; j < L; j += 32)
    if (!masked(i, j, causal, window)) sum += __expf(s[j] - m);
  sum = warp_sum(sum);
  const float inv = 1.0f / sum;
  for (int j = lane; j < L; j += 32)
    store(p + j, masked(i, j, causal, window) ? 0.0f : __expf(s[j] - m) * inv);
  if (lane == 0) lse[(start + i) * hq + h] = m + logf(sum);
}

// P = exp(S - lse) (masked: 0) and dS = P (dP - delta), per (head, query row).
template <typename T>
__global__ void softmax_backward_kernel(const float* S, const float* dP, const float* lse,
                                        const float* delta, T* P, T* dS, int L, int hq,
                                        int64_t start, int causal, int window) {
  const int64_t row = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= static_cast<int64_t>(hq) * L) return;
  const int h = static_cast<int>(row / L), i = static_cast<int>(row % L);
  const float l = lse[(start + i) * hq + h], dl = delta[(start + i) * hq + h];
  for (int j = lane; j < L; j += 32) {
    const float pv = masked(i, j, causal, window) ? 0.0f : __expf(S[row * L + j] - l);
    store(P + row * L + j, pv);
    store(dS + row * L + j, pv * (dP[row * L + j] - dl));
  }
}

struct Gemm {
  cublasHandle_t blas;
  cudaDataType_t io;  // q, k, v, dout and P/dS: CUDA_R_16BF or CUDA_R_32F
  size_t esize;

  // C[m, n] (column-major, ldc) = alpha op(A) op(B) + beta C, batched over `batch` with strides
  // (in elements). A, B of type `io`; C of type `ctype`.
  void run(bool ta, bool tb, int m, int n, int k, float alpha, const void* A, int64_t lda,
           int64_t sa, const void* B, int64_t ldb, int64_t sb, float beta, void* C,
           cudaDataType_t ctype, int64_t ldc, int64_t sc, int batch) const {
    ET_CUBLAS(cublasGemmStridedBatchedEx(
        blas, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &alpha, A,
        io, static_cast<int>(lda), sa, B, io, static_cast<int>(ldb), sb, &beta, C, ctype,
        static_cast<int>(ldc), sc, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
};

const char* at(const void* p, int64_t elems, size_t esize) {
  return static_cast<const char*>(p) + elems * static_cast<int64_t>(esize);
}
char* at(void* p, int64_t elems, size_t esize) {
  return static_cast<char*>(p) + elems * static_cast<int64_t>(esize);
}

}  // namespace

bool attention_use_gemm(const AttentionArgs& a) {
  const char* env = std::getenv("EMBEDTUNE_ATTENTION");
  if (env && std::string(env) == "scalar") return false;
  return a.head_dim > 128 && a.rel_bias == nullptr && a.n_kv_heads > 0 &&
         a.n_heads % a.n_kv_heads == 0;
}

// The longest sequence (from the offsets: max_seqlen may be unset).
int64_t longest(const AttentionArgs& a) {
  int64_t m = 0;
  for (size_t b = 0; b + 1 < a.cu_seqlens.size(); ++b)
    m = std::max<int64_t>(m, a.cu_seqlens[b + 1] - a.cu_seqlens[b]);
  return m;
}

size_t attention_gemm_workspace(const AttentionArgs& a) {
  const size_t L = static_cast<size_t>(longest(a)), n = static_cast<size_t>(a.n_heads) * L * L;
  return n * (2 * sizeof(float) + 2 * sizeof(float));  // S, dP (fp32); P, dS (at most fp32)
}

void attention_forward_gemm(cublasHandle_t blas, const AttentionArgs& a, const void* q,
                            const void* k, const void* v, void* out, bool bf16, float* lse,
                            void* workspace, int min_len) {
  const int hq = a.n_heads, hk = a.n_kv_heads, D = a.head_dim, group = hq / hk;
  const int64_t qs = static_cast<int64_t>(hq) * D, ks = static_cast<int64_t>(hk) * D;
  Gemm g{blas, bf16 ? CUDA_R_16BF : CUDA_R_32F, bf16 ? sizeof(__nv_bfloat16) : sizeof(float)};
  const int64_t Lmax = longest(a);
  float* S = static_cast<float*>(workspace);
  void* P = S + static_cast<int64_t>(hq) * Lmax * Lmax;
  for (size_t b = 0; b + 1 < a.cu_seqlens.size(); ++b) {
    const int64_t start = a.cu_seqlens[b];
    const int L = a.cu_seqlens[b + 1] - a.cu_seqlens[b];
    if (L == 0 || L < min_len) continue;
    const int64_t LL = static_cast<int64_t>(L) * L;
    for (int gi = 0; gi < group; ++gi) {
      // S_h (row-major [L, L]) = scale Q_h K_kvh^T, h = kvh * group + gi
      g.run(true, false, L, L, D, a.scale, at(k, start * ks, g.esize), ks, D,
            at(q, start * qs + gi * D, g.esize), qs, static_cast<int64_t>(group) * D, 0.0f,
            S + gi * LL, CUDA_R_32F, L, group * LL, hk);
    }
    const int64_t rows = static_cast<int64_t>(hq) * L;
    const unsigned grid = static_cast<unsigned>((rows * 32 + 255) / 256);
    if (bf16)
      softmax_rows_kernel<<<grid, 256>>>(S, static_cast<__nv_bfloat16*>(P), lse, L, hq, start,
                                         a.causal, a.window);
    else
      softmax_rows_kernel<<<grid, 256>>>(S, static_cast<float*>(P), lse, L, hq, start, a.causal,
                                         a.window);
    ET_LAUNCH_CHECK();
    for (int gi = 0; gi < group; ++gi) {
      // O_h = P_h V_kvh
      g.run(false, false, D, L, L, 1.0f, at(v, start * ks, g.esize), ks, D, at(P, gi * LL, g.esize),
            L, group * LL, 0.0f, at(out, start * qs + gi * D, g.esize), g.io, qs,
            static_cast<int64_t>(group) * D, hk);
    }
  }
}

void attention_backward_gemm(cublasHandle_t blas, const AttentionArgs& a, const void* q,
                             const void* k, const void* v, const void* dout, bool bf16,
                             const float* lse, const float* delta, float* dq, float* dk, float* dv,
                             void* workspace, int min_len) {
  const int hq = a.n_heads, hk = a.n_kv_heads, D = a.head_dim, group = hq / hk;
  const int64_t qs = static_cast<int64_t>(hq) * D, ks = static_cast<int64_t>(hk) * D;
  Gemm g{blas, bf16 ? CUDA_R_16BF : CUDA_R_32F, bf16 ? sizeof(__nv_bfloat16) : sizeof(float)};
  const int64_t Lmax = longest(a), plane = static_cast<int64_t>(hq) * Lmax * Lmax;
  float* S = static_cast<float*>(workspace);
  float* dP = S + plane;
  void* P = dP + plane;
  void* dS = at(P, plane, g.esize);
  for (size_t b = 0; b + 1 < a.cu_seqlens.size(); ++b) {
    const int64_t start = a.cu_seqlens[b];
    const int L = a.cu_seqlens[b + 1] - a.cu_seqlens[b];
    if (L == 0 || L < min_len) continue;
    const int64_t LL = static_cast<int64_t>(L) * L, gD = static_cast<int64_t>(group) * D;
    for (int gi = 0; gi < group; ++gi) {
      g.run(true, false, L, L, D, a.scale, at(k, start * ks, g.esize), ks, D,
            at(q, start * qs + gi * D, g.esize), qs, gD, 0.0f, S + gi * LL, CUDA_R_32F, L,
            group * LL, hk);
      // dP_h = dO_h V_kvh^T (same form as S)
      g.run(true, false, L, L, D, 1.0f, at(v, start * ks, g.esize), ks, D,
            at(dout, start * qs + gi * D, g.esize), qs, gD, 0.0f, dP + gi * LL, CUDA_R_32F, L,
            group * LL, hk);
    }
    const int64_t rows = static_cast<int64_t>(hq) * L;
    const unsigned grid = static_cast<unsigned>((rows * 32 + 255) / 256);
    if (bf16)
      softmax_backward_kernel<<<grid, 256>>>(S, dP, lse, delta, static_cast<__nv_bfloat16*>(P),
                                             static_cast<__nv_bfloat16*>(dS), L, hq, start,
                                             a.causal, a.window);
    else
      softmax_backward_kernel<<<grid, 256>>>(S, dP, lse, delta, static_cast<float*>(P),
                                             static_cast<float*>(dS), L, hq, start, a.causal,
                                             a.window);
    ET_LAUNCH_CHECK();
    for (int gi = 0; gi < group; ++gi) {
      const float beta = gi == 0 ? 0.0f : 1.0f;
      // dQ_h = scale dS_h K_kvh (same form as O = P V)
      g.run(false, false, D, L, L, a.scale, at(k, start * ks, g.esize), ks, D,
            at(dS, gi * LL, g.esize), L, group * LL, 0.0f, dq + start * qs + gi * D, CUDA_R_32F, qs,
            gD, hk);
      // dK_kvh += scale dS_h^T Q_h ; dV_kvh += P_h^T dO_h
      g.run(false, true, D, L, L, a.scale, at(q, start * qs + gi * D, g.esize), qs, gD,
            at(dS, gi * LL, g.esize), L, group * LL, beta, dk + start * ks, CUDA_R_32F, ks, D, hk);
      g.run(false, true, D, L, L, 1.0f, at(dout, start * qs + gi * D, g.esize), qs, gD,
            at(P, gi * LL, g.esize), L, group * LL, beta, dv + start * ks, CUDA_R_32F, ks, D, hk);
    }
  }
}

}  // namespace et::cuda
