// Tensor-core variable-length attention, backward (the design in attention_tc.cu, which has
// the forward; the shared tile helpers in attention_tiles.cuh).
//
// Backward: a block owns 64 key rows (16 per warp) of one key/value head and streams the query
// tiles of every query head that uses it (grouped-query attention: `group` heads):
//   S^T = K Q^T, P^T = exp(scale S^T + bias - lse), dP^T = V dO^T, dS^T = P^T (dP^T - D),
//   dV += P^T dO, dK += dS^T Q (register accumulators, summed over the group in place, so dK
//   and dV are written once without atomics), dQ += dS K (fp32 atomic adds, since every key
//   tile contributes to every query row). At head dim 256 a block of 8 warps shares each key
//   row's dK and dV between a pair of warps (BwdPairTile).
// Dropout on the probabilities (kDropout; dropout_mask.h): the forward sums P before dropout
// into the normaliser and the dropped P Z into the output (Z = keep / (1 - p)); the backward
// regenerates Z: dV += (P Z)^T dO, dS^T = P^T (Z dP^T - D). The mask's row keys are per query
// row: two per lane in the forward, and 64 per query tile in shared memory in the backward,
// whose lanes see 16 query rows each.
#include <cuda_bf16.h>

#include "ops/cuda/attention.h"
#include "ops/cuda/attention_tiles.cuh"
#include "ops/cuda/cuda_common.h"
#include "ops/cuda/tensor_core.cuh"
#include "ops/relative_bucket.h"

namespace et::cuda {

namespace {

using namespace attn_tc;

// The softmax's gradient on one lane's score tiles (both backward kernels): in place of S^T
// (st) and dP^T (dpt) of this lane's key rows jrow and the query columns q0 + 8 j + 2 t (+1) of
// the query tile at c0, P^T Z and ds_scale dS^T = ds_scale P^T (Z dP^T - D); lse_s (log2 units)
// and del_s hold the tile's lse and delta, drop_key its dropout row keys (Z = keep / (1 - p),
// dropout_mask.h). Tiles without masked or biased pairs take one FFMA and one ex2 a score; query
// rows past the end have zero Q and dO and lse = delta = 0, so P = 1 and dS = 0 there. With
// bias_acc, the relative bias's gradient (unscaled dS) is summed there by bucket.
template <int NJ, bool kDropout>
__device__ __forceinline__ void softmax_backward_tile(const TcParams& p, float (&st)[NJ][4],
                                                      float (&dpt)[NJ][4], int q0, int t,
                                                      const int (&jrow)[2], int key0, int c0,
                                                      int len, int h, const float* lse_s,
                                                      const float* del_s, const uint32_t* drop_key,
                                                      float ds_scale, float* bias_acc) {
  const float sl2 = p.scale * kLog2e;
  auto dropout_factor = [&](int qi, int key) {
    if constexpr (kDropout) return p.drop.factor(drop_key[qi], key);
    return 1.0f;
  };
  if (key0 + 64 <= len && !block_needs_mask(p, c0, 64, key0, 64)) {
#pragma unroll
    for (int j = 0; j < NJ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int qi = q0 + 8 * j + 2 * t + (e & 1);
        const float pv = fast_exp2(fmaf(st[j][e], sl2, -lse_s[qi]));
        const float z = dropout_factor(qi, jrow[e / 2]);
        dpt[j][e] = pv * (dpt[j][e] * z - del_s[qi]) * ds_scale;
        st[j][e] = pv * z;
      }
    return;
  }
#pragma unroll
  for (int j = 0; j < NJ; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int qi = q0 + 8 * j + 2 * t + (e & 1), i = c0 + qi, key = jrow[e / 2];
      float pv = 0, ds = 0;
      if (queries_seeing(p, key, len).contains(i)) {
        float x = st[j][e] * sl2;
        int bucket = 0;
        if (p.bias) {
          bucket = relative_position_bucket(key - i, p.buckets, p.max_distance);
          x += kLog2e * p.bias[bucket * p.hq + h];
        }
        pv = fast_exp2(x - lse_s[qi]);
        const float z = dropout_factor(qi, key);
        ds = pv * (dpt[j][e] * z - del_s[qi]);
        pv *= z;
        if (bias_acc) atomicAdd(&bias_acc[bucket], ds);
      }
      st[j][e] = pv;
      dpt[j][e] = ds * ds_scale;
    }
}

// The query tiles that see the key block at key0 (causal: from the block's own tile on; window:
// within the window of its rows): returns their number and sets q_begin, the first one's row.
__device__ __forceinline__ int query_tiles_for_keys(const TcParams& p, int key0, int len,
                                                    int& q_begin) {
  int q_end = len;
  q_begin = 0;
  if (p.causal) q_begin = key0 / BM * BM;
  if (p.window >= 0) {
    q_begin = max(q_begin, max(0, key0 - p.window) / BM * BM);
    q_end = min(len, key0 + 64 + p.window);
  }
  return q_end > q_begin ? (q_end - q_begin + BM - 1) / BM : 0;
}

// Query head h's tile at row c0: Q and dO into shared memory, and its lse and delta (all
// asynchronous: a plain load of lse would stall the warps on global memory at the top of every
// iteration; rows past len read row len - 1's, zero-filled).
template <int D, int THREADS, typename T>
__device__ __forceinline__ void issue_query_tile(bf16* Qs, bf16* Gs, float* lse_s, float* del_s,
                                                 const T* q, const T* dout, const float* lse,
                                                 const float* delta, const TcParams& p,
                                                 int64_t start, int h, int c0, int len) {
  load_tile_async<D, 64, THREADS>(Qs, q + start * p.qs, p.qs, h * D, c0, len);
  load_tile_async<D, 64, THREADS>(Gs, dout + start * p.os, p.os, h * D, c0, len);
  if (threadIdx.x < 64) {
    const int i = c0 + threadIdx.x;
    const int64_t at = (start + min(i, len - 1)) * p.hq + h;
    cp_async4(lse_s + threadIdx.x, lse + at, i < len);
    cp_async4(del_s + threadIdx.x, delta + at, i < len);
  }
}

// Once the tile at c0 has landed and before the barrier that shows it to every warp: its lse in
// log2 units, and with dropout the mask's row keys of its 64 query rows (each thread its own
// copy; the previous tile's keys were last read before the previous tile's barriers).
template <bool kDropout>
__device__ __forceinline__ void prepare_query_tile(const TcParams& p, float* lse_s,
                                                   uint32_t* drop_key, int64_t start, int c0,
                                                   int h) {
  if (threadIdx.x >= 64) return;
  lse_s[threadIdx.x] *= kLog2e;
  if constexpr (kDropout)
    drop_key[threadIdx.x] = p.drop.row_key((start + c0 + threadIdx.x) * p.hq + h);
}

// S^T = K Q^T and dP^T = V dO^T of a warp's 16 key rows against query columns q0 .. q0 + 16 NP
// of the tile (Qs, Gs: Q and dO, [64][D + 8]); kv(kk, ka, va) gives the K and V A-fragments of
// the rows' columns 16 kk .. + 16 (from shared memory, or registers where they are kept).
template <int D, int NP, typename KvFragments>
__device__ __forceinline__ void scores_transposed(const KvFragments& kv, const bf16* Qs,
                                                  const bf16* Gs, int q0, int lane,
                                                  float (&st)[2 * NP][4], float (&dpt)[2 * NP][4]) {
  constexpr int LD = D + 8;
#pragma unroll
  for (int j = 0; j < 2 * NP; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) st[j][e] = dpt[j][e] = 0;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t ka[4], va[4];
    kv(kk, ka, va);
#pragma unroll
    for (int np = 0; np < NP; ++np) {
      uint32_t b[4];
      ldsm_x4(b, bt_addr(Qs, LD, q0 + np * 16, kk * 16, lane));
      mma16816(st[2 * np], ka, b[0], b[1]);
      mma16816(st[2 * np + 1], ka, b[2], b[3]);
      ldsm_x4(b, bt_addr(Gs, LD, q0 + np * 16, kk * 16, lane));
      mma16816(dpt[2 * np], va, b[0], b[1]);
      mma16816(dpt[2 * np + 1], va, b[2], b[3]);
    }
  }
}

// After the last query tile of head h: the block's relative-bias gradient sums (by bucket) into
// d_bias, and zero again for the next head.
template <int THREADS>
__device__ __forceinline__ void flush_bias_grad(const TcParams& p, float* bias_acc, float* d_bias,
                                                int h) {
  __syncthreads();
  for (int b = threadIdx.x; b < p.buckets; b += THREADS) {
    if (bias_acc[b] != 0.0f) atomicAdd(&d_bias[b * p.hq + h], bias_acc[b]);
    bias_acc[b] = 0;
  }
}

// Backward tiles up to head dim 128: a block of 4 warps forms all D columns of dK, dV (and of
// its dQ contributions) and double-buffers the query/dO tiles. Head dim 256 takes
// attn_bwd_pair_kernel (BwdPairTile).
template <int D>
struct BwdTile {
  static_assert(D <= 128, "one warp holds dK and dV of its 16 key rows");
  static constexpr bool keep_kv = D <= 64;  // K, V A-fragments held in registers
  static constexpr int LD = D + 8, LS = 64 + 8;
  static constexpr size_t bytes =
      sizeof(bf16) * (6 * 64 * LD + 64 * LS) + sizeof(float) * (5 * 64 + 64);
};

// Backward. Warp w owns key rows key0 + 16w .. +16 (this lane: rows g, g + 8); query tiles
// (head by head of the group) stream through shared memory. dK, dV accumulate in registers;
// dS^T goes through shared memory so that every warp can form its 16 query rows of dQ = dS K.
template <int D, typename T, bool kDropout>
__global__ void __launch_bounds__(NW * 32)
    attn_bwd_tc_kernel(TcParams p, const T* __restrict__ q, const T* __restrict__ k,
                       const T* __restrict__ v, const float* __restrict__ lse,
                       const T* __restrict__ dout, const float* __restrict__ delta,
                       float* __restrict__ dq, T* __restrict__ dk, T* __restrict__ dv,
                       float* __restrict__ d_bias, const int32_t* __restrict__ tiles,
                       const int32_t* __restrict__ cu) {
  constexpr int LD = BwdTile<D>::LD, LS = BwdTile<D>::LS;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Ks = reinterpret_cast<bf16*>(smem_raw);
  bf16* Vs = Ks + 64 * LD;
  // query tiles and their dO, double-buffered: [K | V | Q0 | dO0 | Q1 | dO1 | dS^T]
  auto qbuf = [&](int b) { return Vs + (1 + 2 * b) * 64 * LD; };
  auto gbuf = [&](int b) { return Vs + (2 + 2 * b) * 64 * LD; };
  bf16* dSt = Vs + 5 * 64 * LD;                                     // [64 keys][LS]
  float* lse_b = reinterpret_cast<float*>(dSt + 64 * LS);           // [2][64]
  float* del_b = lse_b + 128;                                       // [2][64]
  float* bias_acc = del_b + 128;                                    // [64]
  uint32_t* drop_key = reinterpret_cast<uint32_t*>(bias_acc + 64);  // [64] of the query tile
  const int kvh = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int seq = tiles[2 * blockIdx.x], key0 = tiles[2 * blockIdx.x + 1];
  const int64_t start = cu[seq];
  const int len = cu[seq + 1] - cu[seq];
  // K and V travel in the first cp.async group with the first query tile (one round trip to
  // global memory before the first products instead of two)
  load_tile_async<D>(Ks, k + start * p.ks, p.ks, kvh * D, key0, len);
  load_tile_async<D>(Vs, v + start * p.ks, p.ks, kvh * D, key0, len);
  if (d_bias)
    for (int b = threadIdx.x; b < p.buckets; b += blockDim.x) bias_acc[b] = 0;
  float dk_acc[D / 8][4], dv_acc[D / 8][4];
#pragma unroll
  for (int nb = 0; nb < D / 8; ++nb)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk_acc[nb][e] = dv_acc[nb][e] = 0;
  // Head dims up to 64: this warp's K and V rows as A fragments, read from shared memory once
  // they have landed (they are the same for every query tile); larger head dims reload them per
  // tile, for lack of registers.
  constexpr bool kKeepKV = BwdTile<D>::keep_kv;
  uint32_t kfr[kKeepKV ? D / 16 : 1][4], vfr[kKeepKV ? D / 16 : 1][4];
  const int jrow[2] = {key0 + warp * 16 + g, key0 + warp * 16 + g + 8};
  int q_begin;
  const int n_q = query_tiles_for_keys(p, key0, len, q_begin);
  // Iteration it: query head kvh * group + it / n_q, query tile it % n_q.
  auto head_of = [&](int it) { return kvh * p.group + it / n_q; };
  auto issue = [&](int buf, int h, int c0) {
    issue_query_tile<D, NW * 32>(qbuf(buf), gbuf(buf), lse_b + buf * 64, del_b + buf * 64, q, dout,
                                 lse, delta, p, start, h, c0, len);
  };
  const int n_it = n_q * p.group;
  if (n_q > 0) issue(0, head_of(0), q_begin);
  cp_async_commit();
  for (int it = 0; it < n_it; ++it) {
    const int h = head_of(it), c0 = q_begin + (it % n_q) * BM, buf = it & 1;
    const bf16* Qs = qbuf(buf);
    const bf16* Gs = gbuf(buf);
    float* lse_s = lse_b + buf * 64;
    const float* del_s = del_b + buf * 64;
    if (it + 1 < n_it) issue((it + 1) & 1, head_of(it + 1), q_begin + ((it + 1) % n_q) * BM);
    cp_async_commit();
    cp_async_wait<1>();
    prepare_query_tile<kDropout>(p, lse_s, drop_key, start, c0, h);
    __syncthreads();
    if constexpr (kKeepKV)
      if (it == 0)
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
          ldsm_x4(kfr[kk], a_addr(Ks, LD, warp * 16, kk * 16, lane));
          ldsm_x4(vfr[kk], a_addr(Vs, LD, warp * 16, kk * 16, lane));
        }
    float st[8][4], dpt[8][4];
    scores_transposed<D, 4>(
        [&](int kk, uint32_t(&ka)[4], uint32_t(&va)[4]) {
          if constexpr (kKeepKV) {
#pragma unroll
            for (int e = 0; e < 4; ++e) ka[e] = kfr[kk][e], va[e] = vfr[kk][e];
          } else {
            ldsm_x4(ka, a_addr(Ks, LD, warp * 16, kk * 16, lane));
            ldsm_x4(va, a_addr(Vs, LD, warp * 16, kk * 16, lane));
          }
        },
        Qs, Gs, 0, lane, st, dpt);
    // P^T (times Z) and dS^T, in place of S^T and dP^T
    softmax_backward_tile<8, kDropout>(p, st, dpt, 0, t, jrow, key0, c0, len, h, lse_s, del_s,
                                       drop_key, 1.0f, d_bias ? bias_acc : nullptr);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      *reinterpret_cast<uint32_t*>(dSt + (warp * 16 + g) * LS + 8 * j + 2 * t) =
          pack2(dpt[j][0], dpt[j][1]);
      *reinterpret_cast<uint32_t*>(dSt + (warp * 16 + g + 8) * LS + 8 * j + 2 * t) =
          pack2(dpt[j][2], dpt[j][3]);
    }
    // dV_w += P^T dO,  dK_w += dS^T Q  (A fragments straight from the accumulators)
#pragma unroll
    for (int kc = 0; kc < 4; ++kc) {
      uint32_t pa[4] = {pack2(st[2 * kc][0], st[2 * kc][1]), pack2(st[2 * kc][2], st[2 * kc][3]),
                        pack2(st[2 * kc + 1][0], st[2 * kc + 1][1]),
                        pack2(st[2 * kc + 1][2], st[2 * kc + 1][3])};
      uint32_t da[4] = {pack2(dpt[2 * kc][0], dpt[2 * kc][1]),
                        pack2(dpt[2 * kc][2], dpt[2 * kc][3]),
                        pack2(dpt[2 * kc + 1][0], dpt[2 * kc + 1][1]),
                        pack2(dpt[2 * kc + 1][2], dpt[2 * kc + 1][3])};
#pragma unroll
      for (int np = 0; np < D / 16; ++np) {
        uint32_t b[4];
        ldsm_x4_t(b, b_addr(Gs, LD, kc * 16, np * 16, lane));
        mma16816(dv_acc[2 * np], pa, b[0], b[1]);
        mma16816(dv_acc[2 * np + 1], pa, b[2], b[3]);
        ldsm_x4_t(b, b_addr(Qs, LD, kc * 16, np * 16, lane));
        mma16816(dk_acc[2 * np], da, b[0], b[1]);
        mma16816(dk_acc[2 * np + 1], da, b[2], b[3]);
      }
    }
    __syncthreads();  // dS^T of all warps in place
    // dQ rows c0 + 16w .. +16 = dS K: A = dS (from dS^T, transposed load), B = K [key][d]
    float dq_acc[D / 8][4];
#pragma unroll
    for (int nb = 0; nb < D / 8; ++nb)
      dq_acc[nb][0] = dq_acc[nb][1] = dq_acc[nb][2] = dq_acc[nb][3] = 0;
#pragma unroll
    for (int kc = 0; kc < 4; ++kc) {
      uint32_t a[4];
      ldsm_x4_t(a, at_addr(dSt, LS, kc * 16, warp * 16, lane));
#pragma unroll
      for (int np = 0; np < D / 16; ++np) {
        uint32_t b[4];
        ldsm_x4_t(b, b_addr(Ks, LD, kc * 16, np * 16, lane));
        mma16816(dq_acc[2 * np], a, b[0], b[1]);
        mma16816(dq_acc[2 * np + 1], a, b[2], b[3]);
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int i = c0 + warp * 16 + g + 8 * r;
      if (i >= len) continue;
      float* dqrow = dq + (start + i) * p.os + h * D;
#pragma unroll
      for (int nb = 0; nb < D / 8; ++nb)
        atomic_add2(dqrow + nb * 8 + 2 * t, p.scale * dq_acc[nb][2 * r],
                    p.scale * dq_acc[nb][2 * r + 1]);
    }
    if (d_bias && (it + 1 == n_it || head_of(it + 1) != h))  // head done
      flush_bias_grad<NW * 32>(p, bias_acc, d_bias, h);
  }
  cp_async_wait<0>();  // a block without query tiles still has its K/V copies in flight
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int jj = jrow[r];
    if (jj >= len) continue;
    T* dkrow = dk + (start + jj) * p.dks + kvh * D;
    T* dvrow = dv + (start + jj) * p.dvs + kvh * D;
#pragma unroll
    for (int nb = 0; nb < D / 8; ++nb) {
      const int c = nb * 8 + 2 * t;
      store2(dkrow + c, p.scale * dk_acc[nb][2 * r], p.scale * dk_acc[nb][2 * r + 1]);
      store2(dvrow + c, dv_acc[nb][2 * r], dv_acc[nb][2 * r + 1]);
    }
  }
}

// Backward at head dim 256: one warp cannot hold both dK and dV of its 16 key rows (2 x 128
// fp32 registers a lane), so a pair of warps shares them. 8 warps a 64-key tile; warps w and
// w + 4 own key rows 16w..16w+16. Each forms S^T = K Q^T and dP^T = V dO^T for half of the
// query tile's 64 columns (w: 0-31, w + 4: 32-63), then P^T Z and dS^T = P^T (Z dP^T - D) of
// that half, and writes both (bf16) to shared memory; after a barrier of the pair, warp w adds
// dV += (P Z)^T dO and warp w + 4 dK += dS^T Q over all 64 queries. All eight form dQ = dS K
// (warp w: query rows 16 (w % 4).., columns D/2 (w / 4)..). Five tile products per tile pair;
// the layout this replaced split dK, dV, dQ by column halves between two blocks of 4 warps,
// each recomputing S^T and dP^T (seven), one block an SM (bench/NOTES.md, "Head-dim-256 attention
// backward in warp pairs"). Up to head dim 128 one warp holds both and the 4-warp kernel runs two
// blocks an SM; this kernel there measured 1.13-1.16x its time (Qwen3's causal shape, 12 heads at
// 512 tokens).
template <int D>
struct BwdPairTile {
  static constexpr int NW = 8, THREADS = NW * 32;
  static constexpr int LD = D + 8, LS = 64 + 8;
  static constexpr size_t bytes(int stages) {
    return sizeof(bf16) * ((2 + 2 * stages) * 64 * LD + 2 * 64 * LS) +
           sizeof(float) * (5 * 64 + 64);
  }
};

template <int D, int kStages, typename T, bool kDropout>
__global__ void __launch_bounds__(BwdPairTile<D>::THREADS)
    attn_bwd_pair_kernel(TcParams p, const T* __restrict__ q, const T* __restrict__ k,
                         const T* __restrict__ v, const float* __restrict__ lse,
                         const T* __restrict__ dout, const float* __restrict__ delta,
                         float* __restrict__ dq, T* __restrict__ dk, T* __restrict__ dv,
                         float* __restrict__ d_bias, const int32_t* __restrict__ tiles,
                         const int32_t* __restrict__ cu) {
  static_assert(D % 128 == 0, "dQ passes of 64 columns over half the head dim");
  constexpr int LD = BwdPairTile<D>::LD, LS = BwdPairTile<D>::LS;
  constexpr int THREADS = BwdPairTile<D>::THREADS;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Ks = reinterpret_cast<bf16*>(smem_raw);
  bf16* Vs = Ks + 64 * LD;
  // [K | V | Q0 | dO0 | (Q1 | dO1) | dS^T | lse | delta | bias | dropout keys | P^T Z]
  auto qbuf = [&](int b) { return Vs + (1 + 2 * b) * 64 * LD; };
  auto gbuf = [&](int b) { return Vs + (2 + 2 * b) * 64 * LD; };
  bf16* dSt = Vs + (1 + 2 * kStages) * 64 * LD;                     // [64 keys][LS]
  float* lse_b = reinterpret_cast<float*>(dSt + 64 * LS);           // [2][64]
  float* del_b = lse_b + 128;                                       // [2][64]
  float* bias_acc = del_b + 128;                                    // [64]
  uint32_t* drop_key = reinterpret_cast<uint32_t*>(bias_acc + 64);  // [64] of the query tile
  bf16* Pt = reinterpret_cast<bf16*>(drop_key + 64);                // [64 keys][LS]
  const int kvh = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const bool dv_warp = warp < 4;
  const int wk = warp % 4;             // key rows 16 wk .. 16 wk + 16 of the tile
  const int q_half = 32 * (warp / 4);  // this warp's query columns of each tile
  const int seq = tiles[2 * blockIdx.x], key0 = tiles[2 * blockIdx.x + 1];
  const int64_t start = cu[seq];
  const int len = cu[seq + 1] - cu[seq];
  load_tile_async<D, 64, THREADS>(Ks, k + start * p.ks, p.ks, kvh * D, key0, len);
  load_tile_async<D, 64, THREADS>(Vs, v + start * p.ks, p.ks, kvh * D, key0, len);
  if (d_bias)
    for (int b = threadIdx.x; b < p.buckets; b += THREADS) bias_acc[b] = 0;
  float acc[D / 8][4];  // dV (warps 0-3) or dK (warps 4-7) of this warp's 16 key rows
#pragma unroll
  for (int nb = 0; nb < D / 8; ++nb)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[nb][e] = 0;
  const int jrow[2] = {key0 + wk * 16 + g, key0 + wk * 16 + g + 8};
  int q_begin;
  const int n_q = query_tiles_for_keys(p, key0, len, q_begin);
  auto head_of = [&](int it) { return kvh * p.group + it / n_q; };
  auto issue = [&](int buf, int h, int c0) {
    issue_query_tile<D, THREADS>(qbuf(buf), gbuf(buf), lse_b + buf * 64, del_b + buf * 64, q, dout,
                                 lse, delta, p, start, h, c0, len);
  };
  const int n_it = n_q * p.group;
  if (n_q > 0) issue(0, head_of(0), q_begin);
  cp_async_commit();
  for (int it = 0; it < n_it; ++it) {
    const int h = head_of(it), c0 = q_begin + (it % n_q) * BM, buf = kStages == 2 ? it & 1 : 0;
    const bf16* Qs = qbuf(buf);
    const bf16* Gs = gbuf(buf);
    float* lse_s = lse_b + buf * 64;
    const float* del_s = del_b + buf * 64;
    if constexpr (kStages == 2) {
      if (it + 1 < n_it) issue((it + 1) & 1, head_of(it + 1), q_begin + ((it + 1) % n_q) * BM);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    prepare_query_tile<kDropout>(p, lse_s, drop_key, start, c0, h);
    __syncthreads();
    // This warp's query columns of the tile: S^T = K Q^T and dP^T = V dO^T for its 16 key rows
    float st[4][4], dpt[4][4];
    scores_transposed<D, 2>(
        [&](int kk, uint32_t(&ka)[4], uint32_t(&va)[4]) {
          ldsm_x4(ka, a_addr(Ks, LD, wk * 16, kk * 16, lane));
          ldsm_x4(va, a_addr(Vs, LD, wk * 16, kk * 16, lane));
        },
        Qs, Gs, q_half, lane, st, dpt);
    // P^T Z (for dV) and scale dS^T, in place of S^T and dP^T: the softmax scale of
    // dK = scale dS^T Q and dQ = scale dS K applied once per score rather than to every
    // accumulator
    softmax_backward_tile<4, kDropout>(p, st, dpt, q_half, t, jrow, key0, c0, len, h, lse_s, del_s,
                                       drop_key, p.scale, d_bias ? bias_acc : nullptr);
    // both halves of this warp pair's rows of P^T Z and dS^T, bf16, for dV, dK and dQ
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int at = (wk * 16 + g + 8 * r) * LS + q_half + 8 * j + 2 * t;
        *reinterpret_cast<uint32_t*>(Pt + at) = pack2(st[j][2 * r], st[j][2 * r + 1]);
        *reinterpret_cast<uint32_t*>(dSt + at) = pack2(dpt[j][2 * r], dpt[j][2 * r + 1]);
      }
    named_barrier_sync(1 + wk, 64);  // the partner warp's half has landed
    // dV_w += (P Z)^T dO (first warp of the pair) or dK_w += dS^T Q (second), over all 64
    // queries of the tile: A from the shared tile, B from dO or Q
    const bf16* As = dv_warp ? Pt : dSt;
    const bf16* Bs = dv_warp ? Gs : Qs;
#pragma unroll
    for (int kc = 0; kc < 4; ++kc) {
      uint32_t a[4];
      ldsm_x4(a, a_addr(As, LS, wk * 16, kc * 16, lane));
#pragma unroll
      for (int np = 0; np < D / 16; ++np) {
        uint32_t b[4];
        ldsm_x4_t(b, b_addr(Bs, LD, kc * 16, np * 16, lane));
        mma16816(acc[2 * np], a, b[0], b[1]);
        mma16816(acc[2 * np + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();  // dS^T of all warps in place (single-buffered: Q, dO no longer read)
    if constexpr (kStages == 1) {
      if (it + 1 < n_it) issue(0, head_of(it + 1), q_begin + ((it + 1) % n_q) * BM);
      cp_async_commit();
    }
    // dQ rows c0 + 16 wk .. +16, columns [D/2 (warp / 4), + D/2) = dS K, in passes of 64 columns
    uint32_t dsa[4][4];
#pragma unroll
    for (int kc = 0; kc < 4; ++kc) ldsm_x4_t(dsa[kc], at_addr(dSt, LS, kc * 16, wk * 16, lane));
#pragma unroll
    for (int pass = 0; pass < D / 128; ++pass) {
      const int col0 = (warp / 4) * (D / 2) + pass * 64;
      float dq_acc[8][4];
#pragma unroll
      for (int nb = 0; nb < 8; ++nb)
        dq_acc[nb][0] = dq_acc[nb][1] = dq_acc[nb][2] = dq_acc[nb][3] = 0;
#pragma unroll
      for (int kc = 0; kc < 4; ++kc)
#pragma unroll
        for (int np = 0; np < 4; ++np) {
          uint32_t b[4];
          ldsm_x4_t(b, b_addr(Ks, LD, kc * 16, col0 + np * 16, lane));
          mma16816(dq_acc[2 * np], dsa[kc], b[0], b[1]);
          mma16816(dq_acc[2 * np + 1], dsa[kc], b[2], b[3]);
        }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int i = c0 + wk * 16 + g + 8 * r;
        if (i >= len) continue;
        float* dqrow = dq + (start + i) * p.os + h * D + col0;
#pragma unroll
        for (int nb = 0; nb < 8; ++nb)
          atomic_add2(dqrow + nb * 8 + 2 * t, dq_acc[nb][2 * r], dq_acc[nb][2 * r + 1]);
      }
    }
    if (d_bias && (it + 1 == n_it || head_of(it + 1) != h))  // head done
      flush_bias_grad<THREADS>(p, bias_acc, d_bias, h);
  }
  cp_async_wait<0>();  // a block without query tiles still has its K/V copies in flight
  // the first warp of each pair holds dV, the second dK
  T* const out = dv_warp ? dv : dk;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int jj = jrow[r];
    if (jj >= len) continue;
    T* row = out + (start + jj) * (dv_warp ? p.dvs : p.dks) + kvh * D;
#pragma unroll
    for (int nb = 0; nb < D / 8; ++nb)
      store2(row + nb * 8 + 2 * t, acc[nb][2 * r], acc[nb][2 * r + 1]);
  }
}

}  // namespace

void attention_backward_tc(const AttentionArgs& a, const AttnStrides& st, const void* q,
                           const void* k, const void* v, const void* dout, bool bf16_in,
                           const float* lse, const float* delta, float* dq, void* dk, void* dv,
                           float* d_rel_bias, const int32_t* tiles, int n_tiles,
                           const int32_t* cu) {
  TcParams p = make_attn_params(a);
  p.qs = st.q, p.ks = st.kv, p.os = st.out, p.dks = st.dk, p.dvs = st.dv;
  // head dim 256: two query/dO buffers where they fit (an H100's 227 KB; not an A100's 163 KB);
  // fp32 inputs load synchronously, so a second buffer would gain them nothing
  static const int smem_optin = [] {
    int dev = 0, v = 0;
    ET_CUDA(cudaGetDevice(&dev));
    ET_CUDA(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    return v;
  }();
  dispatch_tc(a.head_dim, [&](auto dd) {
    constexpr int D = decltype(dd)::value;
    auto run = [&](auto kernel, size_t bytes, int threads, auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      // on every launch (a host call of about a microsecond): the one- and two-stage kernels
      // share this lambda's instantiation, so a static here would set only the first of them
      allow_dynamic_smem(kernel, bytes);
      kernel<<<dim3(n_tiles, p.hk), threads, bytes>>>(
          p, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), lse,
          static_cast<const T*>(dout), delta, dq, static_cast<T*>(dk), static_cast<T*>(dv),
          d_rel_bias, tiles, cu);
    };
    auto pick = [&](auto dropout) {
      constexpr bool kDrop = decltype(dropout)::value;
      if constexpr (D <= 128) {
        constexpr size_t bytes = BwdTile<D>::bytes;
        if (bf16_in)
          run(attn_bwd_tc_kernel<D, bf16, kDrop>, bytes, NW * 32, static_cast<bf16*>(nullptr));
        else
          run(attn_bwd_tc_kernel<D, float, kDrop>, bytes, NW * 32, static_cast<float*>(nullptr));
      } else {
        constexpr size_t one = BwdPairTile<D>::bytes(1), two = BwdPairTile<D>::bytes(2);
        constexpr int th = BwdPairTile<D>::THREADS;
        if (bf16_in && static_cast<size_t>(smem_optin) >= two)
          run(attn_bwd_pair_kernel<D, 2, bf16, kDrop>, two, th, static_cast<bf16*>(nullptr));
        else if (bf16_in)
          run(attn_bwd_pair_kernel<D, 1, bf16, kDrop>, one, th, static_cast<bf16*>(nullptr));
        else
          run(attn_bwd_pair_kernel<D, 1, float, kDrop>, one, th, static_cast<float*>(nullptr));
      }
    };
    if (p.dropout)
      pick(std::true_type{});
    else
      pick(std::false_type{});
  });
  ET_LAUNCH_CHECK();
}

}  // namespace et::cuda
