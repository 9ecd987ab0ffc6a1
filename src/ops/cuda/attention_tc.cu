// Tensor-core variable-length attention (head_dim a multiple of 16, at most 128): the same
// algorithm as attention.cu (FlashAttention-2: online softmax forward, recomputing backward),
// with the four matrix products of each tile on bf16 tensor cores (WMMA 16x16x16, fp32
// accumulation). Inputs are fp32 in memory and rounded to bf16 as tiles enter shared memory;
// softmax statistics, accumulators and outputs stay fp32.
//
// Forward: a block = 4 warps = 64 query rows of one (sequence, head); key/value tiles of 64
// rows stream through shared memory. Each warp computes its 16 x 64 score tile S = Q K^T,
// turns it into probabilities with the running max/sum of each row (two lanes per row), and
// accumulates O += P V into a 16 x D fp32 tile kept in shared memory (so that rows can be
// rescaled when their max grows).
//
// Backward: a block owns 64 key rows (16 per warp) and streams query tiles of 64 rows:
//   S^T = K Q^T, P^T = exp(scale S^T + bias - lse), dP^T = V dO^T, dS^T = P^T (dP^T - D),
//   dV += P^T dO, dK += dS^T Q (register accumulators), dQ += dS K (fp32 atomics, since every
//   key tile contributes to every query row).
#include <cuda_bf16.h>
#include <mma.h>

#include "ops/cuda/attention.h"
#include "ops/cuda/cuda_common.h"

namespace et::cuda {

namespace {

using namespace nvcuda;
using bf16 = __nv_bfloat16;

constexpr int BM = 64, BN = 64, NW = 4;

struct TcParams {
  int hq, group;
  int64_t qs, ks;
  float scale;
  int causal, window;
  const float* bias;
  int buckets, max_distance;
  int dkv_atomic;  // dK/dV rows receive several heads' contributions (grouped-query attention)
};

__device__ __forceinline__ int tc_bucket(int rel, int num_buckets, int max_distance) {
  int ret = 0, n = -rel;
  num_buckets /= 2;
  if (n < 0) ret += num_buckets;
  n = abs(n);
  int max_exact = num_buckets / 2;
  if (n < max_exact) return ret + n;
  float scaled = logf(static_cast<float>(n) / static_cast<float>(max_exact)) /
                 static_cast<float>(log(static_cast<double>(max_distance) / max_exact)) *
                 static_cast<float>(num_buckets - max_exact);
  return ret + min(max_exact + static_cast<int>(scaled), num_buckets - 1);
}

__device__ __forceinline__ bool masked(const TcParams& p, int i, int j, int len) {
  return i >= len || j >= len || (p.causal && j > i) || (p.window >= 0 && abs(i - j) > p.window);
}

// rows [r0, r0 + 64) of a [len, stride] slice at column col -> bf16 [64][D + 8] (zeros past
// len); 16-byte loads (4 floats or 8 bf16 values).
template <int D>
__device__ __forceinline__ void load_tile(bf16* dst, const float* src, int64_t stride, int col,
                                          int r0, int len) {
  for (int idx = threadIdx.x; idx < 64 * D / 4; idx += blockDim.x) {
    int r = idx / (D / 4), c = (idx % (D / 4)) * 4;
    float4 v = make_float4(0, 0, 0, 0);
    if (r0 + r < len) v = *reinterpret_cast<const float4*>(src + (r0 + r) * stride + col + c);
    bf16* o = dst + r * (D + 8) + c;
    o[0] = __float2bfloat16(v.x);
    o[1] = __float2bfloat16(v.y);
    o[2] = __float2bfloat16(v.z);
    o[3] = __float2bfloat16(v.w);
  }
}

template <int D>
__device__ __forceinline__ void load_tile(bf16* dst, const bf16* src, int64_t stride, int col,
                                          int r0, int len) {
  for (int idx = threadIdx.x; idx < 64 * D / 8; idx += blockDim.x) {
    int r = idx / (D / 8), c = (idx % (D / 8)) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r0 + r < len) v = *reinterpret_cast<const uint4*>(src + (r0 + r) * stride + col + c);
    *reinterpret_cast<uint4*>(dst + r * (D + 8) + c) = v;
  }
}

__device__ __forceinline__ void store_val(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_val(bf16* p, float v) { *p = __float2bfloat16(v); }

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major>;
using FragAc = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::col_major>;
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major>;
using FragBc = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

template <int D>
struct FwdSmem {
  static constexpr int LD = D + 8, LS = BN + 4, LP = BN + 8, LO = D + 4;
  static constexpr size_t bytes = sizeof(bf16) * (3 * 64 * LD + NW * 16 * LP) +
                                  sizeof(float) * (NW * 16 * LS + NW * 16 * LO);
};

template <int D, typename T>
__global__ void __launch_bounds__(NW * 32)
    attn_fwd_tc_kernel(TcParams p, const T* __restrict__ q, const T* __restrict__ k,
                       const T* __restrict__ v, T* __restrict__ out, float* __restrict__ lse,
                       const int32_t* __restrict__ tiles, const int32_t* __restrict__ cu) {
  using S = FwdSmem<D>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);
  bf16* Ks = Qs + 64 * S::LD;
  bf16* Vs = Ks + 64 * S::LD;
  bf16* Ps = Vs + 64 * S::LD;
  float* Ss = reinterpret_cast<float*>(Ps + NW * 16 * S::LP);
  float* Os = Ss + NW * 16 * S::LS;
  const int h = blockIdx.y, kvh = h / p.group, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int seq = tiles[2 * blockIdx.x], row0 = tiles[2 * blockIdx.x + 1];
  const int64_t start = cu[seq];
  const int len = cu[seq + 1] - cu[seq];
  bf16* Pw = Ps + warp * 16 * S::LP;
  float* Sw = Ss + warp * 16 * S::LS;
  float* Ow = Os + warp * 16 * S::LO;
  load_tile<D>(Qs, q + start * p.qs, p.qs, h * D, row0, len);
  for (int idx = lane; idx < 16 * S::LO; idx += 32) Ow[idx] = 0;
  const int r = lane >> 1, half = lane & 1;  // this lane's row of the warp's 16, and half
  const int i = row0 + warp * 16 + r;
  float m = -INFINITY, l = 0;
  int kv_begin = 0, kv_end = len;
  if (p.causal) kv_end = min(len, row0 + BM);
  if (p.window >= 0) {
    kv_begin = max(0, row0 - p.window) / BN * BN;
    kv_end = min(kv_end, row0 + BM + p.window);
  }
  for (int c0 = kv_begin; c0 < kv_end; c0 += BN) {
    __syncthreads();
    load_tile<D>(Ks, k + start * p.ks, p.ks, kvh * D, c0, len);
    load_tile<D>(Vs, v + start * p.ks, p.ks, kvh * D, c0, len);
    __syncthreads();
    // S = Q_w K^T  (16 x 64)
#pragma unroll
    for (int nf = 0; nf < BN / 16; ++nf) {
      FragC acc;
      wmma::fill_fragment(acc, 0.0f);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        FragA a;
        FragBc b;
        wmma::load_matrix_sync(a, Qs + warp * 16 * S::LD + kk * 16, S::LD);
        wmma::load_matrix_sync(b, Ks + nf * 16 * S::LD + kk * 16, S::LD);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(Sw + nf * 16, acc, S::LS, wmma::mem_row_major);
    }
    __syncwarp();
    // online softmax on this lane's half row (32 scores)
    float s[32];
    float cmax = -INFINITY;
#pragma unroll
    for (int t = 0; t < 32; ++t) {
      int j = c0 + half * 32 + t;
      float x = -INFINITY;
      if (!masked(p, i, j, len)) {
        x = Sw[r * S::LS + half * 32 + t] * p.scale;
        if (p.bias) x += p.bias[tc_bucket(j - i, p.buckets, p.max_distance) * p.hq + h];
      }
      s[t] = x;
      cmax = fmaxf(cmax, x);
    }
    cmax = fmaxf(cmax, __shfl_xor_sync(0xffffffffu, cmax, 1));
    const float m_new = fmaxf(m, cmax);
    const float corr = m_new == -INFINITY ? 1.0f : __expf(m - m_new);
    float psum = 0;
#pragma unroll
    for (int t = 0; t < 32; ++t) {
      float pv = m_new == -INFINITY ? 0.0f : __expf(s[t] - m_new);
      psum += pv;
      Pw[r * S::LP + half * 32 + t] = __float2bfloat16(pv);
    }
    psum += __shfl_xor_sync(0xffffffffu, psum, 1);
    l = l * corr + psum;
    m = m_new;
    for (int c = half * (D / 2); c < (half + 1) * (D / 2); ++c) Ow[r * S::LO + c] *= corr;
    __syncwarp();
    // O_w += P_w V  (16 x D)
#pragma unroll
    for (int nf = 0; nf < D / 16; ++nf) {
      FragC acc;
      wmma::load_matrix_sync(acc, Ow + nf * 16, S::LO, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        FragA a;
        FragB b;
        wmma::load_matrix_sync(a, Pw + kk * 16, S::LP);
        wmma::load_matrix_sync(b, Vs + kk * 16 * S::LD + nf * 16, S::LD);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(Ow + nf * 16, acc, S::LO, wmma::mem_row_major);
    }
    __syncwarp();
  }
  if (i < len) {
    const float inv = l > 0 ? 1.0f / l : 0.0f;
    for (int c = half * (D / 2); c < (half + 1) * (D / 2); ++c)
      store_val(&out[(start + i) * p.qs + h * D + c], Ow[r * S::LO + c] * inv);
    if (half == 0) lse[(start + i) * p.hq + h] = m + logf(l);
  }
}

template <int D>
struct BwdSmem {
  static constexpr int LD = D + 8, LS = 64 + 4, LP = 64 + 8, LO = D + 4;
  static constexpr size_t bytes = sizeof(bf16) * (4 * 64 * LD + NW * 16 * LP + 64 * LP) +
                                  sizeof(float) * (2 * NW * 16 * LS + NW * 16 * LO + 2 * 64 + 64);
};

template <int D, typename T>
__global__ void __launch_bounds__(NW * 32)
    attn_bwd_tc_kernel(TcParams p, const T* __restrict__ q, const T* __restrict__ k,
                       const T* __restrict__ v, const float* __restrict__ lse,
                       const T* __restrict__ dout, const float* __restrict__ delta,
                       float* __restrict__ dq, float* __restrict__ dk, float* __restrict__ dv,
                       float* __restrict__ d_bias, const int32_t* __restrict__ tiles,
                       const int32_t* __restrict__ cu) {
  using S = BwdSmem<D>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* Ks = reinterpret_cast<bf16*>(smem_raw);
  bf16* Vs = Ks + 64 * S::LD;
  bf16* Qs = Vs + 64 * S::LD;
  bf16* Gs = Qs + 64 * S::LD;          // dO tile
  bf16* Pt = Gs + 64 * S::LD;          // per warp P^T [16][LP]
  bf16* dSt = Pt + NW * 16 * S::LP;    // dS^T of the block [64 keys][LP]
  float* St = reinterpret_cast<float*>(dSt + 64 * S::LP);  // per warp S^T, then P^T (fp32)
  float* dPt = St + NW * 16 * S::LS;   // per warp dP^T
  float* Tw = dPt + NW * 16 * S::LS;   // per warp 16 x D staging for dQ / dK / dV
  float* lse_s = Tw + NW * 16 * S::LO;
  float* del_s = lse_s + 64;
  float* bias_acc = del_s + 64;        // [buckets <= 64]
  const int h = blockIdx.y, kvh = h / p.group, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int seq = tiles[2 * blockIdx.x], key0 = tiles[2 * blockIdx.x + 1];
  const int64_t start = cu[seq];
  const int len = cu[seq + 1] - cu[seq];
  float* Stw = St + warp * 16 * S::LS;
  float* dPtw = dPt + warp * 16 * S::LS;
  bf16* Ptw = Pt + warp * 16 * S::LP;
  float* Tww = Tw + warp * 16 * S::LO;
  load_tile<D>(Ks, k + start * p.ks, p.ks, kvh * D, key0, len);
  load_tile<D>(Vs, v + start * p.ks, p.ks, kvh * D, key0, len);
  if (d_bias)
    for (int b = threadIdx.x; b < p.buckets; b += blockDim.x) bias_acc[b] = 0;
  FragC dK[D / 16], dV[D / 16];
#pragma unroll
  for (int nf = 0; nf < D / 16; ++nf) {
    wmma::fill_fragment(dK[nf], 0.0f);
    wmma::fill_fragment(dV[nf], 0.0f);
  }
  const int r = lane >> 1, half = lane & 1;
  const int j = key0 + warp * 16 + r;  // this lane's key row
  int q_begin = 0, q_end = len;
  if (p.causal) q_begin = key0 / BM * BM;
  if (p.window >= 0) {
    q_begin = max(q_begin, max(0, key0 - p.window) / BM * BM);
    q_end = min(len, key0 + 64 + p.window);
  }
  for (int c0 = q_begin; c0 < q_end; c0 += BM) {
    __syncthreads();
    load_tile<D>(Qs, q + start * p.qs, p.qs, h * D, c0, len);
    load_tile<D>(Gs, dout + start * p.qs, p.qs, h * D, c0, len);
    if (threadIdx.x < 64) {
      int i = c0 + threadIdx.x;
      lse_s[threadIdx.x] = i < len ? lse[(start + i) * p.hq + h] : 0.0f;
      del_s[threadIdx.x] = i < len ? delta[(start + i) * p.hq + h] : 0.0f;
    }
    __syncthreads();
    // S^T_w = K_w Q^T and dP^T_w = V_w dO^T  (16 x 64 each)
#pragma unroll
    for (int nf = 0; nf < 4; ++nf) {
      FragC s_acc, p_acc;
      wmma::fill_fragment(s_acc, 0.0f);
      wmma::fill_fragment(p_acc, 0.0f);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        FragA a;
        FragBc b;
        wmma::load_matrix_sync(a, Ks + warp * 16 * S::LD + kk * 16, S::LD);
        wmma::load_matrix_sync(b, Qs + nf * 16 * S::LD + kk * 16, S::LD);
        wmma::mma_sync(s_acc, a, b, s_acc);
        wmma::load_matrix_sync(a, Vs + warp * 16 * S::LD + kk * 16, S::LD);
        wmma::load_matrix_sync(b, Gs + nf * 16 * S::LD + kk * 16, S::LD);
        wmma::mma_sync(p_acc, a, b, p_acc);
      }
      wmma::store_matrix_sync(Stw + nf * 16, s_acc, S::LS, wmma::mem_row_major);
      wmma::store_matrix_sync(dPtw + nf * 16, p_acc, S::LS, wmma::mem_row_major);
    }
    __syncwarp();
    // P^T and dS^T on this lane's half row (32 queries of key j)
#pragma unroll 4
    for (int t = 0; t < 32; ++t) {
      const int qi = half * 32 + t, i = c0 + qi;
      float pv = 0, ds = 0;
      if (!masked(p, i, j, len)) {
        float x = Stw[r * S::LS + qi] * p.scale;
        int bucket = 0;
        if (p.bias) {
          bucket = tc_bucket(j - i, p.buckets, p.max_distance);
          x += p.bias[bucket * p.hq + h];
        }
        pv = __expf(x - lse_s[qi]);
        ds = pv * (dPtw[r * S::LS + qi] - del_s[qi]);
        if (d_bias) atomicAdd(&bias_acc[bucket], ds);
      }
      Ptw[r * S::LP + qi] = __float2bfloat16(pv);
      dSt[(warp * 16 + r) * S::LP + qi] = __float2bfloat16(ds);
    }
    __syncthreads();  // dSt complete for the dQ product below
    // dV_w += P^T_w dO,  dK_w += dS^T_w Q
#pragma unroll
    for (int nf = 0; nf < D / 16; ++nf) {
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        FragA a;
        FragB b;
        wmma::load_matrix_sync(a, Ptw + kk * 16, S::LP);
        wmma::load_matrix_sync(b, Gs + kk * 16 * S::LD + nf * 16, S::LD);
        wmma::mma_sync(dV[nf], a, b, dV[nf]);
        wmma::load_matrix_sync(a, dSt + warp * 16 * S::LP + kk * 16, S::LP);
        wmma::load_matrix_sync(b, Qs + kk * 16 * S::LD + nf * 16, S::LD);
        wmma::mma_sync(dK[nf], a, b, dK[nf]);
      }
    }
    // dQ rows [c0 + 16 w, +16) += scale * dS K: dS[q][key] = dSt[key][q] (a col-major view)
#pragma unroll
    for (int nf = 0; nf < D / 16; ++nf) {
      FragC acc;
      wmma::fill_fragment(acc, 0.0f);
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        FragAc a;
        FragB b;
        wmma::load_matrix_sync(a, dSt + kk * 16 * S::LP + warp * 16, S::LP);
        wmma::load_matrix_sync(b, Ks + kk * 16 * S::LD + nf * 16, S::LD);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(Tww + nf * 16, acc, S::LO, wmma::mem_row_major);
    }
    __syncwarp();
    for (int idx = lane; idx < 16 * D; idx += 32) {
      int rr = idx / D, c = idx % D, i = c0 + warp * 16 + rr;
      if (i < len) atomicAdd(&dq[(start + i) * p.qs + h * D + c], p.scale * Tww[rr * S::LO + c]);
    }
  }
  // write dK (scaled) and dV of this warp's 16 key rows
#pragma unroll
  for (int which = 0; which < 2; ++which) {
    __syncwarp();
#pragma unroll
    for (int nf = 0; nf < D / 16; ++nf)
      wmma::store_matrix_sync(Tww + nf * 16, which == 0 ? dK[nf] : dV[nf], S::LO, wmma::mem_row_major);
    __syncwarp();
    float* dst = which == 0 ? dk : dv;
    const float mul = which == 0 ? p.scale : 1.0f;
    for (int idx = lane; idx < 16 * D; idx += 32) {
      int rr = idx / D, c = idx % D, jj = key0 + warp * 16 + rr;
      if (jj >= len) continue;
      float* o = &dst[(start + jj) * p.ks + kvh * D + c];
      if (p.dkv_atomic) atomicAdd(o, mul * Tww[rr * S::LO + c]);
      else *o = mul * Tww[rr * S::LO + c];
    }
  }
  if (d_bias) {
    __syncthreads();
    for (int b = threadIdx.x; b < p.buckets; b += blockDim.x)
      if (bias_acc[b] != 0.0f) atomicAdd(&d_bias[b * p.hq + h], bias_acc[b]);
  }
}

TcParams tc_params(const AttentionArgs& a) {
  TcParams p;
  p.hq = a.n_heads;
  p.group = a.n_heads / a.n_kv_heads;
  p.qs = static_cast<int64_t>(a.n_heads) * a.head_dim;
  p.ks = static_cast<int64_t>(a.n_kv_heads) * a.head_dim;
  p.scale = a.scale;
  p.causal = a.causal;
  p.window = a.window;
  p.bias = a.rel_bias ? a.rel_bias->f32() : nullptr;
  p.buckets = a.rel_buckets;
  p.max_distance = a.rel_max_distance;
  p.dkv_atomic = p.group > 1;
  return p;
}

template <typename F>
bool dispatch_tc(int d, F&& f) {
  switch (d) {
    case 16: f(std::integral_constant<int, 16>{}); return true;
    case 32: f(std::integral_constant<int, 32>{}); return true;
    case 64: f(std::integral_constant<int, 64>{}); return true;
    case 128: f(std::integral_constant<int, 128>{}); return true;
    default: return false;
  }
}

template <typename K>
void allow_smem(K kernel, size_t bytes) {
  ET_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(bytes)));
}

}  // namespace

bool attention_tc_supported(const AttentionArgs& a) {
  return (a.head_dim == 16 || a.head_dim == 32 || a.head_dim == 64 || a.head_dim == 128) &&
         (!a.rel_bias || a.rel_buckets <= 64);
}

void attention_forward_tc(const AttentionArgs& a, const void* q, const void* k, const void* v,
                          void* out, bool bf16_io, float* lse, const int32_t* tiles, int n_tiles,
                          const int32_t* cu) {
  TcParams p = tc_params(a);
  dispatch_tc(a.head_dim, [&](auto dd) {
    constexpr int D = decltype(dd)::value;
    auto launch = [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      allow_smem(attn_fwd_tc_kernel<D, T>, FwdSmem<D>::bytes);
      attn_fwd_tc_kernel<D, T><<<dim3(n_tiles, p.hq), NW * 32, FwdSmem<D>::bytes>>>(
          p, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
          static_cast<T*>(out), lse, tiles, cu);
    };
    if (bf16_io) launch(static_cast<bf16*>(nullptr));
    else launch(static_cast<float*>(nullptr));
  });
  ET_LAUNCH_CHECK();
}

void attention_backward_tc(const AttentionArgs& a, const void* q, const void* k, const void* v,
                           const void* dout, bool bf16_in, const float* lse, const float* delta,
                           float* dq, float* dk, float* dv, bool dkv_zeroed, float* d_rel_bias,
                           const int32_t* tiles, int n_tiles, const int32_t* cu) {
  TcParams p = tc_params(a);
  p.dkv_atomic = dkv_zeroed;
  dispatch_tc(a.head_dim, [&](auto dd) {
    constexpr int D = decltype(dd)::value;
    auto launch = [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      allow_smem(attn_bwd_tc_kernel<D, T>, BwdSmem<D>::bytes);
      attn_bwd_tc_kernel<D, T><<<dim3(n_tiles, p.hq), NW * 32, BwdSmem<D>::bytes>>>(
          p, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), lse,
          static_cast<const T*>(dout), delta, dq, dk, dv, d_rel_bias, tiles, cu);
    };
    if (bf16_in) launch(static_cast<bf16*>(nullptr));
    else launch(static_cast<float*>(nullptr));
  });
  ET_LAUNCH_CHECK();
}

}  // namespace et::cuda
