// Variable-length multi-head attention on packed sequences, in the spirit of FlashAttention-2
// (Dao, 2023): scores are never written to memory; the forward keeps a running max and sum
// per query row (online softmax) and stores only the log-sum-exp; the backward recomputes
// P = exp(S - lse) tile by tile.
//
// Work decomposition (one launch for the whole batch): a block takes a tile of 64 rows of one
// sequence and one head (grid = tiles x heads). Each of its 8 warps owns 8 of those rows.
// Key/value (or query) rows of the sequence stream through shared memory 32 at a time; lane
// l scores row l of the chunk against the warp's current row (a full dot product, no
// shuffles), the row's softmax statistics come from warp reductions, and the weighted sum
// over the chunk accumulates into the lanes' slices of the output row (lane owns dims
// l, l+32, ...), with the 32 weights broadcast by shuffles.
//
//   forward:   out_i = sum_j softmax_j(s_ij) v_j,  s_ij = scale q_i.k_j + bias(h, j-i), masked
//   backward:  D_i = dO_i . O_i;  P_ij = exp(s_ij - lse_i);  dS_ij = P_ij (dO_i . v_j - D_i)
//              dQ_i = scale sum_j dS_ij k_j           (kernel over query tiles)
//              dK_j = scale sum_i dS_ij q_i,  dV_j = sum_i P_ij dO_i   (kernel over key tiles)
//   dropout (Z_ij = keep / (1 - p)): out_i = sum_j P_ij Z_ij v_j; dS_ij = P_ij (Z_ij dO_i . v_j
//              - D_i); dV_j = sum_i P_ij Z_ij dO_i.
#include <cfloat>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include <cuda_bf16.h>

#include "ops/cuda/attention.h"
#include "ops/cuda/cuda_common.h"
#include "ops/cuda/operand.cuh"
#include "ops/relative_bucket.h"

namespace et::cuda {

namespace {

constexpr int kWarps = 8;
constexpr int kRowsPerWarp = kAttnTileRows / kWarps;
constexpr int kChunk = 32;
constexpr int kMaxHeadDim = 256;

using Params = AttnParams;

// Score of query row i (position in sequence) and key row j, or -inf when masked.
__device__ __forceinline__ float score(const Params& p, float dot, int i, int j, int h, int len) {
  if (j >= len || (p.causal && j > i) || (p.window >= 0 && abs(i - j) > p.window)) return -INFINITY;
  float s = dot * p.scale;
  if (p.bias) s += p.bias[relative_position_bucket(j - i, p.buckets, p.max_distance) * p.hq + h];
  return s;
}

// Dropout's factor keep / (1 - p) for query row i (packed row `row`) of head h and key j; 1 when
// dropout is off.
__device__ __forceinline__ float dropout_factor(const Params& p, int64_t row, int h, int j) {
  if (!p.dropout) return 1.0f;
  return p.drop.factor(p.drop.row_key(row * p.hq + h), j);
}

// Loads rows [r0, r0 + kChunk) (clamped to len) of a [len, stride] slice at column `col` into
// shared memory with a padded row pitch (d + 1) so that lanes reading different rows hit
// different banks.
__device__ __forceinline__ void load_chunk(float* dst, const float* src, int64_t stride, int col,
                                           int r0, int len, int d) {
  for (int idx = threadIdx.x; idx < kChunk * d; idx += blockDim.x) {
    int r = idx / d, c = idx % d;
    dst[r * (d + 1) + c] = (r0 + r < len) ? src[(r0 + r) * stride + col + c] : 0.0f;
  }
}

template <int kMaxDimPerLane>  // head_dim <= 32 * kMaxDimPerLane
__global__ void attn_fwd_kernel(Params p, const float* __restrict__ q, const float* __restrict__ k,
                                const float* __restrict__ v, float* __restrict__ out,
                                float* __restrict__ lse, const int32_t* __restrict__ tiles,
                                const int32_t* __restrict__ cu) {
  extern __shared__ float smem[];
  const int d = p.d, h = blockIdx.y, kvh = h / p.group;
  const int seq = tiles[2 * blockIdx.x], row0 = tiles[2 * blockIdx.x + 1];
  const int64_t start = cu[seq];
  const int len = cu[seq + 1] - cu[seq];
  float* qs = smem;                    // [64][d]
  float* ks = qs + kAttnTileRows * d;  // [32][d+1]
  float* vs = ks + kChunk * (d + 1);   // [32][d+1]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int idx = threadIdx.x; idx < kAttnTileRows * d; idx += blockDim.x) {
    int r = idx / d, c = idx % d;
    qs[idx] = row0 + r < len ? q[(start + row0 + r) * p.qs + h * d + c] : 0.0f;
  }
  float m[kRowsPerWarp], l[kRowsPerWarp], o[kRowsPerWarp][kMaxDimPerLane];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    m[r] = -INFINITY;
    l[r] = 0;
#pragma unroll
    for (int t = 0; t < kMaxDimPerLane; ++t) o[r][t] = 0;
  }
  int kv_begin = 0, kv_end = len;
  if (p.causal) kv_end = min(len, row0 + kAttnTileRows);
  if (p.window >= 0) {
    kv_begin = max(0, row0 - p.window);
    kv_end = min(kv_end, row0 + kAttnTileRows + p.window);
  }
  kv_begin = kv_begin / kChunk * kChunk;
  for (int c0 = kv_begin; c0 < kv_end; c0 += kChunk) {
    __syncthreads();
    load_chunk(ks, k + start * p.ks, p.ks, kvh * d, c0, len, d);
    load_chunk(vs, v + start * p.ks, p.ks, kvh * d, c0, len, d);
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int i = row0 + warp * kRowsPerWarp + r;
      if (i >= len) break;
      const float* qi = qs + (warp * kRowsPerWarp + r) * d;
      const float* kj = ks + lane * (d + 1);
      float dot = 0;
      for (int c = 0; c < d; ++c) dot += qi[c] * kj[c];
      float s = score(p, dot, i, c0 + lane, h, len);
      float cmax = warp_max(s);
      float m_new = fmaxf(m[r], cmax);
      if (m_new == -INFINITY) continue;  // the whole chunk is masked for this row
      float pj = __expf(s - m_new);
      float corr = __expf(m[r] - m_new);
      l[r] = l[r] * corr + warp_sum(pj);
      m[r] = m_new;
#pragma unroll
      for (int t = 0; t < kMaxDimPerLane; ++t) o[r][t] *= corr;
      // the normaliser sums P before dropout; the output sums the dropped P
      const float pd = pj * dropout_factor(p, start + i, h, c0 + lane);
      for (int j = 0; j < kChunk; ++j) {
        float pjj = __shfl_sync(0xffffffffu, pd, j);
        const float* vj = vs + j * (d + 1);
#pragma unroll
        for (int t = 0; t < kMaxDimPerLane; ++t) {
          int c = lane + 32 * t;
          if (c < d) o[r][t] += pjj * vj[c];
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int i = row0 + warp * kRowsPerWarp + r;
    if (i >= len) break;
    float inv = l[r] > 0 ? 1.0f / l[r] : 0.0f;
#pragma unroll
    for (int t = 0; t < kMaxDimPerLane; ++t) {
      int c = lane + 32 * t;
      if (c < d) out[(start + i) * p.qs + h * d + c] = o[r][t] * inv;
    }
    if (lane == 0) lse[(start + i) * p.hq + h] = m[r] + logf(l[r]);
  }
}

// delta[t, h] = dO[t, h, :] . O[t, h, :]
template <typename T>
__global__ void attn_delta_kernel(const T* __restrict__ out, int64_t ldo,
                                  const T* __restrict__ dout, float* __restrict__ delta,
                                  int64_t rows, int hq, int d) {
  int64_t w = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  int lane = threadIdx.x % 32;
  if (w >= rows * hq) return;
  const T* o = out + w / hq * ldo + w % hq * d;
  const T* g = dout + w * d;
  float s = 0;
  for (int c = lane; c < d; c += 32) s += static_cast<float>(o[c]) * static_cast<float>(g[c]);
  s = warp_sum(s);
  if (lane == 0) delta[w] = s;
}

// The same for bf16 rows with 16-byte loads: each thread takes 8 consecutive elements of O
// and dO, and the G = d / 8 lanes of one (row, head) sum their partial dot products with
// shuffles (G a power of two <= 32, so groups never straddle a warp). One scalar load of 2
// bytes per lane (the kernel above) kept the memory system at about 45% of bandwidth.
template <int G>
__global__ void attn_delta_bf16x8_kernel(const __nv_bfloat16* __restrict__ out, int64_t ldo,
                                         int64_t width, const __nv_bfloat16* __restrict__ dout,
                                         float* __restrict__ delta, int64_t vecs) {
  // grid-stride with a block-uniform base, so every lane of a warp takes the same trips (the
  // shuffles need all 32)
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x; base < vecs; base += stride) {
    const int64_t i = base + threadIdx.x;
    float s = 0;
    if (i < vecs) {
      float o[8], g[8];
      load_bf16x8(out + 8 * i / width * ldo + 8 * i % width, o);
      load_bf16x8(dout + 8 * i, g);
#pragma unroll
      for (int j = 0; j < 8; ++j) s += o[j] * g[j];
    }
#pragma unroll
    for (int off = G / 2; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (i < vecs && threadIdx.x % G == 0) delta[i / G] = s;
  }
}

// dQ over query tiles (like the forward, streaming key/value chunks).
template <int kMaxDimPerLane>  // head_dim <= 32 * kMaxDimPerLane
__global__ void attn_bwd_dq_kernel(Params p, const float* __restrict__ q,
                                   const float* __restrict__ k, const float* __restrict__ v,
                                   const float* __restrict__ lse, const float* __restrict__ dout,
                                   const float* __restrict__ delta, float* __restrict__ dq,
                                   float* __restrict__ d_bias, const int32_t* __restrict__ tiles,
                                   const int32_t* __restrict__ cu) {
  extern __shared__ float smem[];
  const int d = p.d, h = blockIdx.y, kvh = h / p.group;
  const int seq = tiles[2 * blockIdx.x], row0 = tiles[2 * blockIdx.x + 1];
  const int64_t start = cu[seq];
  const int len = cu[seq + 1] - cu[seq];
  float* qs = smem;                         // [64][d]
  float* gs = qs + kAttnTileRows * d;       // dO rows [64][d]
  float* ks = gs + kAttnTileRows * d;       // [32][d+1]
  float* vs = ks + kChunk * (d + 1);        // [32][d+1]
  float* bias_acc = vs + kChunk * (d + 1);  // [buckets] when the bias is on
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int idx = threadIdx.x; idx < kAttnTileRows * d; idx += blockDim.x) {
    int r = idx / d, c = idx % d;
    bool in = row0 + r < len;
    qs[idx] = in ? q[(start + row0 + r) * p.qs + h * d + c] : 0.0f;
    gs[idx] = in ? dout[(start + row0 + r) * p.qs + h * d + c] : 0.0f;
  }
  if (d_bias)
    for (int b = threadIdx.x; b < p.buckets; b += blockDim.x) bias_acc[b] = 0;
  float acc[kRowsPerWarp][kMaxDimPerLane];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int t = 0; t < kMaxDimPerLane; ++t) acc[r][t] = 0;
  int kv_begin = 0, kv_end = len;
  if (p.causal) kv_end = min(len, row0 + kAttnTileRows);
  if (p.window >= 0) {
    kv_begin = max(0, row0 - p.window);
    kv_end = min(kv_end, row0 + kAttnTileRows + p.window);
  }
  kv_begin = kv_begin / kChunk * kChunk;
  for (int c0 = kv_begin; c0 < kv_end; c0 += kChunk) {
    __syncthreads();
    load_chunk(ks, k + start * p.ks, p.ks, kvh * d, c0, len, d);
    load_chunk(vs, v + start * p.ks, p.ks, kvh * d, c0, len, d);
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int i = row0 + warp * kRowsPerWarp + r;
      if (i >= len) break;
      const float* qi = qs + (warp * kRowsPerWarp + r) * d;
      const float* gi = gs + (warp * kRowsPerWarp + r) * d;
      const float* kj = ks + lane * (d + 1);
      const float* vj = vs + lane * (d + 1);
      float dot = 0, dp = 0;
      for (int c = 0; c < d; ++c) {
        dot += qi[c] * kj[c];
        dp += gi[c] * vj[c];
      }
      const int j = c0 + lane;
      float s = score(p, dot, i, j, h, len);
      float pij = s == -INFINITY ? 0.0f : __expf(s - lse[(start + i) * p.hq + h]);
      float ds = pij * (dp * dropout_factor(p, start + i, h, j) - delta[(start + i) * p.hq + h]);
      if (d_bias && pij != 0.0f)
        atomicAdd(&bias_acc[relative_position_bucket(j - i, p.buckets, p.max_distance)], ds);
      for (int jj = 0; jj < kChunk; ++jj) {
        float dsj = __shfl_sync(0xffffffffu, ds, jj);
        const float* kr = ks + jj * (d + 1);
#pragma unroll
        for (int t = 0; t < kMaxDimPerLane; ++t) {
          int c = lane + 32 * t;
          if (c < d) acc[r][t] += dsj * kr[c];
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int i = row0 + warp * kRowsPerWarp + r;
    if (i >= len) break;
#pragma unroll
    for (int t = 0; t < kMaxDimPerLane; ++t) {
      int c = lane + 32 * t;
      if (c < d) dq[(start + i) * p.qs + h * d + c] = acc[r][t] * p.scale;
    }
  }
  if (d_bias) {
    __syncthreads();
    for (int b = threadIdx.x; b < p.buckets; b += blockDim.x)
      if (bias_acc[b] != 0.0f) atomicAdd(&d_bias[b * p.hq + h], bias_acc[b]);
  }
}

// dK, dV over key tiles, streaming query rows (with their dO, lse, delta). With grouped-query
// attention several query heads share a key head: their contributions are added atomically.
template <int kMaxDimPerLane>  // head_dim <= 32 * kMaxDimPerLane
__global__ void attn_bwd_dkv_kernel(Params p, const float* __restrict__ q,
                                    const float* __restrict__ k, const float* __restrict__ v,
                                    const float* __restrict__ lse, const float* __restrict__ dout,
                                    const float* __restrict__ delta, float* __restrict__ dk,
                                    float* __restrict__ dv, const int32_t* __restrict__ tiles,
                                    const int32_t* __restrict__ cu) {
  extern __shared__ float smem[];
  const int d = p.d, h = blockIdx.y, kvh = h / p.group;
  const int seq = tiles[2 * blockIdx.x], row0 = tiles[2 * blockIdx.x + 1];
  const int64_t start = cu[seq];
  const int len = cu[seq + 1] - cu[seq];
  float* ks = smem;                    // key rows of the tile [64][d]
  float* vs = ks + kAttnTileRows * d;  // [64][d]
  float* qs = vs + kAttnTileRows * d;  // streamed query rows [32][d+1]
  float* gs = qs + kChunk * (d + 1);   // their dO rows [32][d+1]
  float* ls = gs + kChunk * (d + 1);   // their lse [32]
  float* ds_ = ls + kChunk;            // their delta [32]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int idx = threadIdx.x; idx < kAttnTileRows * d; idx += blockDim.x) {
    int r = idx / d, c = idx % d;
    bool in = row0 + r < len;
    ks[idx] = in ? k[(start + row0 + r) * p.ks + kvh * d + c] : 0.0f;
    vs[idx] = in ? v[(start + row0 + r) * p.ks + kvh * d + c] : 0.0f;
  }
  float dk_acc[kRowsPerWarp][kMaxDimPerLane], dv_acc[kRowsPerWarp][kMaxDimPerLane];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int t = 0; t < kMaxDimPerLane; ++t) dk_acc[r][t] = dv_acc[r][t] = 0;
  int q_begin = 0, q_end = len;
  if (p.causal) q_begin = row0;
  if (p.window >= 0) {
    q_begin = max(q_begin, row0 - p.window);
    q_end = min(len, row0 + kAttnTileRows + p.window);
  }
  q_begin = q_begin / kChunk * kChunk;
  for (int c0 = q_begin; c0 < q_end; c0 += kChunk) {
    __syncthreads();
    load_chunk(qs, q + start * p.qs, p.qs, h * d, c0, len, d);
    load_chunk(gs, dout + start * p.qs, p.qs, h * d, c0, len, d);
    if (threadIdx.x < kChunk) {
      int i = c0 + threadIdx.x;
      ls[threadIdx.x] = i < len ? lse[(start + i) * p.hq + h] : 0.0f;
      ds_[threadIdx.x] = i < len ? delta[(start + i) * p.hq + h] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int j = row0 + warp * kRowsPerWarp + r;  // key row
      if (j >= len) break;
      const float* kj = ks + (warp * kRowsPerWarp + r) * d;
      const float* vj = vs + (warp * kRowsPerWarp + r) * d;
      const float* qi = qs + lane * (d + 1);
      const float* gi = gs + lane * (d + 1);
      float dot = 0, dp = 0;
      for (int c = 0; c < d; ++c) {
        dot += qi[c] * kj[c];
        dp += gi[c] * vj[c];
      }
      const int i = c0 + lane;  // query row
      float s = i < len ? score(p, dot, i, j, h, len) : -INFINITY;
      float pij = s == -INFINITY ? 0.0f : __expf(s - ls[lane]);
      const float z = i < len ? dropout_factor(p, start + i, h, j) : 0.0f;
      float dsv = pij * (dp * z - ds_[lane]);
      const float pd = pij * z;  // dV sums the dropped P
      for (int ii = 0; ii < kChunk; ++ii) {
        float pi = __shfl_sync(0xffffffffu, pd, ii);
        float di = __shfl_sync(0xffffffffu, dsv, ii);
        const float* qr = qs + ii * (d + 1);
        const float* gr = gs + ii * (d + 1);
#pragma unroll
        for (int t = 0; t < kMaxDimPerLane; ++t) {
          int c = lane + 32 * t;
          if (c < d) {
            dv_acc[r][t] += pi * gr[c];
            dk_acc[r][t] += di * qr[c];
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int j = row0 + warp * kRowsPerWarp + r;
    if (j >= len) break;
#pragma unroll
    for (int t = 0; t < kMaxDimPerLane; ++t) {
      int c = lane + 32 * t;
      if (c >= d) continue;
      float* pk = &dk[(start + j) * p.ks + kvh * d + c];
      float* pv = &dv[(start + j) * p.ks + kvh * d + c];
      if (p.group == 1) {
        *pk = dk_acc[r][t] * p.scale;
        *pv = dv_acc[r][t];
      } else {
        atomicAdd(pk, dk_acc[r][t] * p.scale);
        atomicAdd(pv, dv_acc[r][t]);
      }
    }
  }
}

// Calls f with std::integral_constant<int, dims per lane> for the head dimension.
template <typename F>
void dispatch_dim(int d, F&& f) {
  if (d <= 64)
    f(std::integral_constant<int, 2>{});
  else if (d <= 128)
    f(std::integral_constant<int, 4>{});
  else
    f(std::integral_constant<int, 8>{});
}

}  // namespace

AttnParams make_attn_params(const AttentionArgs& a) {
  ET_CHECK(a.n_kv_heads > 0 && a.n_heads % a.n_kv_heads == 0, "attention: ", a.n_heads,
           " heads are not a multiple of ", a.n_kv_heads, " key/value heads");
  AttnParams p;
  p.hq = a.n_heads;
  p.hk = a.n_kv_heads;
  p.d = a.head_dim;
  p.group = a.n_heads / a.n_kv_heads;
  p.qs = static_cast<int64_t>(p.hq) * p.d;
  p.ks = static_cast<int64_t>(p.hk) * p.d;
  p.os = p.qs;
  p.dks = p.dvs = p.ks;
  p.scale = a.scale;
  p.causal = a.causal;
  p.window = a.window;
  p.bias = a.rel_bias ? a.rel_bias->f32() : nullptr;
  p.buckets = a.rel_buckets;
  p.max_distance = a.rel_max_distance;
  p.dkv_atomic = p.group > 1;
  p.dropout = a.dropout.active();
  p.drop = dropout_mask(a.dropout, "attention");
  return p;
}

void attention_delta(const void* out, int64_t ldo, const void* dout, bool bf16, float* delta,
                     int64_t rows, int heads, int head_dim) {
  const int64_t width = static_cast<int64_t>(heads) * head_dim, vecs = rows * width / 8;
  const int lanes = head_dim / 8;  // per (row, head) in the vectorised kernel
  if (bf16 && head_dim % 8 == 0 && lanes >= 1 && lanes <= 32 && (lanes & (lanes - 1)) == 0 &&
      vec8_aligned(out) && vec8_aligned(dout) && ldo % 8 == 0) {
    const auto* o = static_cast<const __nv_bfloat16*>(out);
    const auto* g = static_cast<const __nv_bfloat16*>(dout);
    const unsigned vgrid = blocks_for(vecs, 256);
    // the kernel for G = lanes (a power of two in [1, 32], checked above)
    const auto take = [&](auto group) {
      if (decltype(group)::value != lanes) return false;
      attn_delta_bf16x8_kernel<decltype(group)::value>
          <<<vgrid, 256>>>(o, ldo, width, g, delta, vecs);
      return true;
    };
    take(std::integral_constant<int, 1>{}) || take(std::integral_constant<int, 2>{}) ||
        take(std::integral_constant<int, 4>{}) || take(std::integral_constant<int, 8>{}) ||
        take(std::integral_constant<int, 16>{}) || take(std::integral_constant<int, 32>{});
    ET_LAUNCH_CHECK();
    return;
  }
  const unsigned grid = blocks_for(rows * heads * 32, 256);
  if (bf16)
    attn_delta_kernel<<<grid, 256>>>(static_cast<const __nv_bfloat16*>(out), ldo,
                                     static_cast<const __nv_bfloat16*>(dout), delta, rows, heads,
                                     head_dim);
  else
    attn_delta_kernel<<<grid, 256>>>(static_cast<const float*>(out), ldo,
                                     static_cast<const float*>(dout), delta, rows, heads, head_dim);
  ET_LAUNCH_CHECK();
}

bool attention_use_tc(const AttentionArgs& a) {
  const char* env = std::getenv("EMBEDTUNE_ATTENTION");
  if (env && std::string(env) == "scalar") return false;
  if (env && std::string(env) == "gemm" && a.head_dim > 128) return false;
  return attention_tc_supported(a);
}

void attention_forward(const AttentionArgs& a, const float* q, const float* k, const float* v,
                       float* out, float* lse, const int32_t* tiles, int n_tiles,
                       const int32_t* cu) {
  if (n_tiles == 0) return;
  ET_CHECK(a.head_dim > 0 && a.head_dim <= kMaxHeadDim, "attention: head_dim ", a.head_dim,
           " not supported (at most ", kMaxHeadDim, ")");
  Params p = make_attn_params(a);
  size_t smem = sizeof(float) * (kAttnTileRows * p.d + 2 * kChunk * (p.d + 1));
  dispatch_dim(p.d, [&](auto dpl) {
    constexpr int D = decltype(dpl)::value;
    allow_dynamic_smem(attn_fwd_kernel<D>, smem);
    attn_fwd_kernel<D><<<dim3(n_tiles, p.hq), kWarps * 32, smem>>>(p, q, k, v, out, lse, tiles, cu);
  });
  ET_LAUNCH_CHECK();
}

void attention_backward(const AttentionArgs& a, const float* q, const float* k, const float* v,
                        const float* out, const float* lse, const float* dout, float* dq, float* dk,
                        float* dv, float* d_rel_bias, float* delta, const int32_t* tiles,
                        int n_tiles, const int32_t* cu) {
  if (n_tiles == 0) return;
  ET_CHECK(a.head_dim > 0 && a.head_dim <= kMaxHeadDim, "attention: head_dim ", a.head_dim,
           " not supported (at most ", kMaxHeadDim, ")");
  Params p = make_attn_params(a);
  const int64_t rows = a.cu_seqlens.back();
  attention_delta(out, p.qs, dout, false, delta, rows, p.hq, p.d);
  size_t smem_q = sizeof(float) *
                  (2 * kAttnTileRows * p.d + 2 * kChunk * (p.d + 1) + (d_rel_bias ? p.buckets : 0));
  dispatch_dim(p.d, [&](auto dpl) {
    constexpr int D = decltype(dpl)::value;
    allow_dynamic_smem(attn_bwd_dq_kernel<D>, smem_q);
    attn_bwd_dq_kernel<D><<<dim3(n_tiles, p.hq), kWarps * 32, smem_q>>>(
        p, q, k, v, lse, dout, delta, dq, d_rel_bias, tiles, cu);
  });
  ET_LAUNCH_CHECK();
  if (p.group > 1) {
    ET_CUDA(cudaMemsetAsync(dk, 0, sizeof(float) * rows * p.ks));
    ET_CUDA(cudaMemsetAsync(dv, 0, sizeof(float) * rows * p.ks));
  }
  size_t smem_kv = sizeof(float) * (2 * kAttnTileRows * p.d + 2 * kChunk * (p.d + 1) + 2 * kChunk);
  dispatch_dim(p.d, [&](auto dpl) {
    constexpr int D = decltype(dpl)::value;
    allow_dynamic_smem(attn_bwd_dkv_kernel<D>, smem_kv);
    attn_bwd_dkv_kernel<D><<<dim3(n_tiles, p.hq), kWarps * 32, smem_kv>>>(p, q, k, v, lse, dout,
                                                                          delta, dk, dv, tiles, cu);
  });
  ET_LAUNCH_CHECK();
}

}  // namespace et::cuda
