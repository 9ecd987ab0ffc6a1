// Attention through cuBLAS for head dimensions above 128 that the tensor-core kernels do not
// take (EmbeddingGemma's 256 runs on them both ways; EMBEDTUNE_ATTENTION=gemm brings it here, for
// comparisons: at 512-1024 tokens this path's GPU time is lower, but its per-bucket and per-head
// calls leave the GPU waiting on the host, and real batches' many short sequences fall back to
// the fp32 tiles; bench/NOTES.md): the score matrices are materialised ([heads, L, L]
// fp32 per sequence), so memory grows with the square of the longest sequence (bounded by
// max_seq_length) and is capped per bucket by the plan's budget.
//   forward:  S = scale Q K^T (masked) ; P = softmax(S) ; O = P V ; lse = log sum exp S
//   backward: S and P recomputed from lse ; dP = dO V^T ; dS = P (dP - delta) ;
//             dQ = scale dS K ; dK = scale dS^T Q ; dV = P^T dO   (delta = rowsum(dO O))
// Batching: sequences are sorted by length and grouped into buckets whose lengths are within
// 1/8 of the longest; each bucket is gathered into zero-padded [n, L, width] buffers (or read
// in place when all its sequences have the same length and are adjacent), so each product is
// one strided-batched call per head over the bucket's sequences instead of one call per
// sequence (small per-sequence products left the GPU mostly idle). Padded keys are masked,
// padded query rows get P = dS = 0 and are never copied back.
// Row-major [L, D] blocks with row stride `ld` are column-major [D, L] matrices for cuBLAS.
// Grouped-query attention: query head h uses key/value head h / group; dK, dV accumulate over
// the group.
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <numeric>
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

// Rows of the scores of one bucket: [heads, n, L, L]; row r = ((h n) + s) L + i.
struct ScoreRow {
  int h, s, i;
};
__device__ __forceinline__ ScoreRow score_row(int64_t r, int n, int L) {
  return {static_cast<int>(r / (static_cast<int64_t>(n) * L)), static_cast<int>((r / L) % n),
          static_cast<int>(r % L)};
}

// One warp per score row: P = softmax over the sequence's unmasked keys, lse[start + i, h];
// padded rows (i >= len) and padded keys get P = 0.
template <typename T>
__global__ void softmax_rows_kernel(const float* S, T* P, float* lse, int L, int n, int hq,
                                    const int32_t* starts, const int32_t* lens, int causal,
                                    int window) {
  const int lane = threadIdx.x % 32;
  const int64_t rows = static_cast<int64_t>(hq) * n * L;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  for (int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32; r < rows;
       r += warps) {
    const ScoreRow w = score_row(r, n, L);
    const int len = lens[w.s];
    const float* s = S + r * L;
    T* p = P + r * L;
    if (w.i >= len) {
      for (int j = lane; j < L; j += 32) store(p + j, 0.0f);
      continue;
    }
    float m = -INFINITY;
    for (int j = lane; j < len; j += 32)
      if (!masked(w.i, j, causal, window)) m = fmaxf(m, s[j]);
    m = warp_max(m);
    float sum = 0;
    for (int j = lane; j < len; j += 32)
      if (!masked(w.i, j, causal, window)) sum += __expf(s[j] - m);
    sum = warp_sum(sum);
    const float inv = 1.0f / sum;
    for (int j = lane; j < L; j += 32)
      store(p + j, j >= len || masked(w.i, j, causal, window) ? 0.0f : __expf(s[j] - m) * inv);
    if (lane == 0) lse[(starts[w.s] + static_cast<int64_t>(w.i)) * hq + w.h] = m + logf(sum);
  }
}

// P = exp(S - lse) (masked and padded: 0) and dS = P (dP - delta), one warp per score row.
template <typename T>
__global__ void softmax_backward_kernel(const float* S, const float* dP, const float* lse,
                                        const float* delta, T* P, T* dS, int L, int n, int hq,
                                        const int32_t* starts, const int32_t* lens, int causal,
                                        int window) {
  const int lane = threadIdx.x % 32;
  const int64_t rows = static_cast<int64_t>(hq) * n * L;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  for (int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32; r < rows;
       r += warps) {
    const ScoreRow w = score_row(r, n, L);
    const int len = lens[w.s];
    if (w.i >= len) {
      for (int j = lane; j < L; j += 32) {
        store(P + r * L + j, 0.0f);
        store(dS + r * L + j, 0.0f);
      }
      continue;
    }
    const int64_t t = (starts[w.s] + static_cast<int64_t>(w.i)) * hq + w.h;
    const float l = lse[t], dl = delta[t];
    for (int j = lane; j < L; j += 32) {
      const bool off = j >= len || masked(w.i, j, causal, window);
      const float pv = off ? 0.0f : __expf(S[r * L + j] - l);
      store(P + r * L + j, pv);
      store(dS + r * L + j, off ? 0.0f : pv * (dP[r * L + j] - dl));
    }
  }
}

// dst [n, L, vpr] <- rows start_s .. start_s + len_s of src [T, vpr], zeros below len_s.
template <typename V>
__global__ void gather_padded_kernel(const V* src, V* dst, const int32_t* starts,
                                     const int32_t* lens, int n, int L, int64_t vpr) {
  const int64_t total = static_cast<int64_t>(n) * L * vpr;
  GRID_STRIDE(x, total) {
    const int64_t row = x / vpr, c = x % vpr;
    const int s = static_cast<int>(row / L), i = static_cast<int>(row % L);
    dst[x] = i < lens[s] ? src[(starts[s] + static_cast<int64_t>(i)) * vpr + c] : V{};
  }
}

// The inverse: rows i < len_s of src [n, L, vpr] back to dst [T, vpr].
template <typename V>
__global__ void scatter_padded_kernel(const V* src, V* dst, const int32_t* starts,
                                      const int32_t* lens, int n, int L, int64_t vpr) {
  const int64_t total = static_cast<int64_t>(n) * L * vpr;
  GRID_STRIDE(x, total) {
    const int64_t row = x / vpr, c = x % vpr;
    const int s = static_cast<int>(row / L), i = static_cast<int>(row % L);
    if (i < lens[s]) dst[(starts[s] + static_cast<int64_t>(i)) * vpr + c] = src[x];
  }
}

// Rows of `row_bytes` bytes, moved 16, 4 or 1 bytes at a time as alignment allows.
template <bool kGather>
void move_padded_rows(const void* src, void* dst, const int32_t* starts, const int32_t* lens, int n,
                      int L, size_t row_bytes) {
  const auto aligned = [&](size_t a) {
    return row_bytes % a == 0 && reinterpret_cast<uintptr_t>(src) % a == 0 &&
           reinterpret_cast<uintptr_t>(dst) % a == 0;
  };
  auto launch = [&](auto zero) {
    using V = decltype(zero);
    const int64_t vpr = static_cast<int64_t>(row_bytes / sizeof(V));
    const unsigned grid = blocks_for(static_cast<int64_t>(n) * L * vpr, 256);
    if (kGather)
      gather_padded_kernel<<<grid, 256>>>(static_cast<const V*>(src), static_cast<V*>(dst), starts,
                                          lens, n, L, vpr);
    else
      scatter_padded_kernel<<<grid, 256>>>(static_cast<const V*>(src), static_cast<V*>(dst), starts,
                                           lens, n, L, vpr);
    ET_LAUNCH_CHECK();
  };
  if (aligned(16))
    launch(uint4{});
  else if (aligned(4))
    launch(uint32_t{});
  else
    launch(uint8_t{});
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

// Scratch of one bucket, carved from the workspace (or only measured, with a null base).
struct Scratch {
  char* base = nullptr;
  size_t used = 0;
  void* take(size_t bytes) {
    used = (used + 255) / 256 * 256;
    void* p = base ? base + used : nullptr;
    used += bytes;
    return p;
  }
};

// The scratch buffers of a bucket of n sequences padded to L tokens.
struct BucketScratch {
  float *S = nullptr, *dP = nullptr;                  // [hq, n, L, L] fp32
  void *P = nullptr, *dS = nullptr;                   // [hq, n, L, L] io
  void *q = nullptr, *k = nullptr, *v = nullptr;      // gathered inputs (io)
  void* o = nullptr;                                  // forward: O; backward: dO (io)
  float *dq = nullptr, *dk = nullptr, *dv = nullptr;  // backward, gathered (fp32)
};

BucketScratch carve(Scratch& sc, const AttentionArgs& a, int n, int L, bool direct, bool backward,
                    size_t esize) {
  const size_t plane = static_cast<size_t>(a.n_heads) * n * L * L;
  const size_t rows = static_cast<size_t>(n) * L;
  const size_t qs = static_cast<size_t>(a.n_heads) * a.head_dim;
  const size_t ks = static_cast<size_t>(a.n_kv_heads) * a.head_dim;
  BucketScratch b;
  b.S = static_cast<float*>(sc.take(plane * sizeof(float)));
  b.P = sc.take(plane * esize);
  if (backward) {
    b.dP = static_cast<float*>(sc.take(plane * sizeof(float)));
    b.dS = sc.take(plane * esize);
  }
  if (direct) return b;
  b.q = sc.take(rows * qs * esize);
  b.k = sc.take(rows * ks * esize);
  b.v = sc.take(rows * ks * esize);
  b.o = sc.take(rows * qs * esize);
  if (backward) {
    b.dq = static_cast<float*>(sc.take(rows * qs * sizeof(float)));
    b.dk = static_cast<float*>(sc.take(rows * ks * sizeof(float)));
    b.dv = static_cast<float*>(sc.take(rows * ks * sizeof(float)));
  }
  return b;
}

size_t scratch_bytes(const AttentionArgs& a, int n, int L, bool direct, bool backward,
                     size_t esize) {
  Scratch sc;
  carve(sc, a, n, L, direct, backward, esize);
  return sc.used;
}

// Where a bucket's operands live: in the tensors (direct) or in the gathered buffers.
struct BucketView {
  const void *q, *k, *v;
  int n, L;
  const int32_t *starts, *lens;  // device, this bucket's
};

BucketView view_of(const GemmAttentionPlan& plan, const GemmBucket& b, const int32_t* seq,
                   const AttentionArgs& a, size_t esize, const void* q, const void* k,
                   const void* v) {
  const int64_t qs = static_cast<int64_t>(a.n_heads) * a.head_dim;
  const int64_t ks = static_cast<int64_t>(a.n_kv_heads) * a.head_dim;
  const int64_t start = plan.starts[b.first];
  const int total = static_cast<int>(plan.starts.size());
  BucketView w{q, k, v, b.count, b.len, seq + b.first, seq + total + b.first};
  if (b.direct) {
    w.q = at(q, start * qs, esize);
    w.k = at(k, start * ks, esize);
    w.v = at(v, start * ks, esize);
  }
  return w;
}

// Gathers q, k, v of a bucket that is not read in place into its padded buffers and points
// the view at them.
void gather_qkv(BucketView& w, const BucketScratch& b, const AttentionArgs& a, size_t esize,
                const void* q, const void* k, const void* v) {
  const size_t qs = static_cast<size_t>(a.n_heads) * a.head_dim * esize;
  const size_t ks = static_cast<size_t>(a.n_kv_heads) * a.head_dim * esize;
  move_padded_rows<true>(q, b.q, w.starts, w.lens, w.n, w.L, qs);
  move_padded_rows<true>(k, b.k, w.starts, w.lens, w.n, w.L, ks);
  move_padded_rows<true>(v, b.v, w.starts, w.lens, w.n, w.L, ks);
  w.q = b.q, w.k = b.k, w.v = b.v;
}

}  // namespace

bool attention_use_gemm(const AttentionArgs& a) {
  const char* env = std::getenv("EMBEDTUNE_ATTENTION");
  if (env && std::string(env) == "scalar") return false;
  // no dropout on this path: with dropout the fp32 tile kernels take the long sequences too
  return a.head_dim > 128 && a.rel_bias == nullptr && !a.dropout.active() && a.n_kv_heads > 0 &&
         a.n_heads % a.n_kv_heads == 0;
}

GemmAttentionPlan plan_attention_gemm(const AttentionArgs& a, int min_len, bool backward,
                                      size_t esize, size_t budget_bytes) {
  const auto& cu = a.cu_seqlens;
  std::vector<int> order;
  for (size_t b = 0; b + 1 < cu.size(); ++b)
    if (cu[b + 1] - cu[b] >= std::max(min_len, 1)) order.push_back(static_cast<int>(b));
  // Longest first; equal lengths keep their order, so runs of equal adjacent sequences stay
  // adjacent (and can be read in place).
  const auto len = [&](int b) { return cu[b + 1] - cu[b]; };
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return len(x) > len(y); });
  GemmAttentionPlan plan;
  for (size_t i = 0; i < order.size();) {
    GemmBucket bk;
    bk.first = static_cast<int>(i);
    bk.len = len(order[i]);
    size_t j = i + 1;
    // Padding at most 1/8 of the bucket's length per sequence, scratch within the budget.
    while (j < order.size() && static_cast<int64_t>(len(order[j])) * 8 >= 7LL * bk.len &&
           scratch_bytes(a, static_cast<int>(j - i + 1), bk.len, false, backward, esize) <=
               budget_bytes)
      ++j;
    bk.count = static_cast<int>(j - i);
    bk.direct = true;
    for (size_t x = i; x < j; ++x)
      bk.direct = bk.direct && len(order[x]) == bk.len &&
                  cu[order[x]] == cu[order[i]] + static_cast<int64_t>(x - i) * bk.len;
    for (size_t x = i; x < j; ++x) {
      plan.starts.push_back(cu[order[x]]);
      plan.lens.push_back(len(order[x]));
    }
    plan.workspace_bytes = std::max(plan.workspace_bytes,
                                    scratch_bytes(a, bk.count, bk.len, bk.direct, backward, esize));
    plan.buckets.push_back(bk);
    i = j;
  }
  return plan;
}

void attention_forward_gemm(cublasHandle_t blas, const AttentionArgs& a,
                            const GemmAttentionPlan& plan, const int32_t* seq, const void* q,
                            const void* k, const void* v, void* out, bool bf16, float* lse,
                            void* workspace) {
  const int hq = a.n_heads, D = a.head_dim, group = hq / a.n_kv_heads;
  const int64_t qs = static_cast<int64_t>(hq) * D, ks = static_cast<int64_t>(a.n_kv_heads) * D;
  Gemm g{blas, bf16 ? CUDA_R_16BF : CUDA_R_32F, bf16 ? sizeof(__nv_bfloat16) : sizeof(float)};
  for (const GemmBucket& bk : plan.buckets) {
    Scratch sc{static_cast<char*>(workspace)};
    BucketScratch b = carve(sc, a, bk.count, bk.len, bk.direct, false, g.esize);
    BucketView w = view_of(plan, bk, seq, a, g.esize, q, k, v);
    const int n = w.n, L = w.L;
    void* o = bk.direct ? at(out, plan.starts[bk.first] * qs, g.esize) : b.o;
    if (!bk.direct) gather_qkv(w, b, a, g.esize, q, k, v);
    const int64_t LL = static_cast<int64_t>(L) * L, plane = n * LL;
    for (int h = 0; h < hq; ++h) {  // S_h = scale Q_h K_kvh^T, per sequence of the bucket
      const int kh = h / group;
      g.run(true, false, L, L, D, a.scale, at(w.k, kh * D, g.esize), ks, L * ks,
            at(w.q, h * D, g.esize), qs, L * qs, 0.0f, b.S + h * plane, CUDA_R_32F, L, LL, n);
    }
    const unsigned grid = blocks_for(static_cast<int64_t>(hq) * n * L * 32, 256);
    if (bf16)
      softmax_rows_kernel<<<grid, 256>>>(b.S, static_cast<__nv_bfloat16*>(b.P), lse, L, n, hq,
                                         w.starts, w.lens, a.causal, a.window);
    else
      softmax_rows_kernel<<<grid, 256>>>(b.S, static_cast<float*>(b.P), lse, L, n, hq, w.starts,
                                         w.lens, a.causal, a.window);
    ET_LAUNCH_CHECK();
    for (int h = 0; h < hq; ++h) {  // O_h = P_h V_kvh
      const int kh = h / group;
      g.run(false, false, D, L, L, 1.0f, at(w.v, kh * D, g.esize), ks, L * ks,
            at(b.P, h * plane, g.esize), L, LL, 0.0f, at(o, h * D, g.esize), g.io, qs, L * qs, n);
    }
    if (!bk.direct) move_padded_rows<false>(b.o, out, w.starts, w.lens, n, L, qs * g.esize);
  }
}

void attention_backward_gemm(cublasHandle_t blas, const AttentionArgs& a,
                             const GemmAttentionPlan& plan, const int32_t* seq, const void* q,
                             const void* k, const void* v, const void* dout, bool bf16,
                             const float* lse, const float* delta, float* dq, float* dk, float* dv,
                             void* workspace) {
  const int hq = a.n_heads, D = a.head_dim, group = hq / a.n_kv_heads;
  const int64_t qs = static_cast<int64_t>(hq) * D, ks = static_cast<int64_t>(a.n_kv_heads) * D;
  Gemm g{blas, bf16 ? CUDA_R_16BF : CUDA_R_32F, bf16 ? sizeof(__nv_bfloat16) : sizeof(float)};
  for (const GemmBucket& bk : plan.buckets) {
    Scratch sc{static_cast<char*>(workspace)};
    BucketScratch b = carve(sc, a, bk.count, bk.len, bk.direct, true, g.esize);
    BucketView w = view_of(plan, bk, seq, a, g.esize, q, k, v);
    const int n = w.n, L = w.L;
    const int64_t start = plan.starts[bk.first];
    const void* o = bk.direct ? at(dout, start * qs, g.esize) : b.o;  // dO
    float* gq = bk.direct ? dq + start * qs : b.dq;
    float* gk = bk.direct ? dk + start * ks : b.dk;
    float* gv = bk.direct ? dv + start * ks : b.dv;
    if (!bk.direct) {
      gather_qkv(w, b, a, g.esize, q, k, v);
      move_padded_rows<true>(dout, b.o, w.starts, w.lens, n, L, qs * g.esize);
    }
    const int64_t LL = static_cast<int64_t>(L) * L, plane = n * LL;
    for (int h = 0; h < hq; ++h) {
      const int kh = h / group;
      g.run(true, false, L, L, D, a.scale, at(w.k, kh * D, g.esize), ks, L * ks,
            at(w.q, h * D, g.esize), qs, L * qs, 0.0f, b.S + h * plane, CUDA_R_32F, L, LL, n);
      // dP_h = dO_h V_kvh^T (same form as S)
      g.run(true, false, L, L, D, 1.0f, at(w.v, kh * D, g.esize), ks, L * ks, at(o, h * D, g.esize),
            qs, L * qs, 0.0f, b.dP + h * plane, CUDA_R_32F, L, LL, n);
    }
    const unsigned grid = blocks_for(static_cast<int64_t>(hq) * n * L * 32, 256);
    if (bf16)
      softmax_backward_kernel<<<grid, 256>>>(
          b.S, b.dP, lse, delta, static_cast<__nv_bfloat16*>(b.P),
          static_cast<__nv_bfloat16*>(b.dS), L, n, hq, w.starts, w.lens, a.causal, a.window);
    else
      softmax_backward_kernel<<<grid, 256>>>(b.S, b.dP, lse, delta, static_cast<float*>(b.P),
                                             static_cast<float*>(b.dS), L, n, hq, w.starts, w.lens,
                                             a.causal, a.window);
    ET_LAUNCH_CHECK();
    for (int h = 0; h < hq; ++h) {
      const int kh = h / group;
      const float beta = h % group == 0 ? 0.0f : 1.0f;
      // dQ_h = scale dS_h K_kvh (same form as O = P V)
      g.run(false, false, D, L, L, a.scale, at(w.k, kh * D, g.esize), ks, L * ks,
            at(b.dS, h * plane, g.esize), L, LL, 0.0f, gq + h * D, CUDA_R_32F, qs, L * qs, n);
      // dK_kvh += scale dS_h^T Q_h ; dV_kvh += P_h^T dO_h
      g.run(false, true, D, L, L, a.scale, at(w.q, h * D, g.esize), qs, L * qs,
            at(b.dS, h * plane, g.esize), L, LL, beta, gk + kh * D, CUDA_R_32F, ks, L * ks, n);
      g.run(false, true, D, L, L, 1.0f, at(o, h * D, g.esize), qs, L * qs,
            at(b.P, h * plane, g.esize), L, LL, beta, gv + kh * D, CUDA_R_32F, ks, L * ks, n);
    }
    if (!bk.direct) {
      move_padded_rows<false>(b.dq, dq, w.starts, w.lens, n, L, qs * sizeof(float));
      move_padded_rows<false>(b.dk, dk, w.starts, w.lens, n, L, ks * sizeof(float));
      move_padded_rows<false>(b.dv, dv, w.starts, w.lens, n, L, ks * sizeof(float));
    }
  }
}

}  // namespace et::cuda
