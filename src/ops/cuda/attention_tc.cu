// Tensor-core variable-length attention (head_dim 16/32/64/128/256): the
// algorithm of attention.cu (FlashAttention-2, Dao 2023: online softmax forward, recomputing
// backward) with every matrix product of a tile on bf16 tensor cores (mma.sync m16n8k16, fp32
// accumulation) and the scores, probabilities and output accumulators kept in registers.
// Inputs (bf16 or fp32) are rounded to bf16 as tiles enter shared memory; statistics stay fp32.
//
// Forward: a block = 4 warps = 64 query rows of one (sequence, head) (FwdTile); key/value
// tiles stream through shared memory, double-buffered by cp.async. Each warp computes its score
// tiles S = Q K^T, updates the running max/sum of its rows, rescales its output accumulators
// and adds P V with P taken directly from the score registers.
//
// Backward: a block owns 64 key rows (16 per warp) of one key/value head and streams the query
// tiles of every query head that uses it (grouped-query attention: `group` heads):
//   S^T = K Q^T, P^T = exp(scale S^T + bias - lse), dP^T = V dO^T, dS^T = P^T (dP^T - D),
//   dV += P^T dO, dK += dS^T Q (register accumulators, summed over the group in place, so dK
//   and dV are written once without atomics), dQ += dS K (fp32 atomic adds, since every key
//   tile contributes to every query row). At head dim 256 two blocks share a key tile, each
//   forming half of the output columns (BwdTile).
// Dropout on the probabilities (kDropout; dropout_mask.h): the forward sums P before dropout
// into the normaliser and the dropped P Z into the output (Z = keep / (1 - p)); the backward
// regenerates Z: dV += (P Z)^T dO, dS^T = P^T (Z dP^T - D). The mask's row keys are per query
// row: two per lane in the forward, and 64 per query tile in shared memory in the backward,
// whose lanes see 16 query rows each.
// `embedtune bench --attention` times both against PyTorch's SDPA (bench/NOTES.md).
#include <cuda_bf16.h>

#include "ops/cuda/attention.h"
#include "ops/cuda/cuda_common.h"
#include "ops/cuda/tensor_core.cuh"
#include "ops/relative_bucket.h"

namespace et::cuda {

namespace {

using bf16 = __nv_bfloat16;

constexpr int BM = 64, NW = 4;  // backward: key rows per block; warps per block

using TcParams = AttnParams;

// The keys query row i sees, [lo, hi]: key j is masked iff i >= len, j >= len, j > i (causal)
// or |i - j| > window. As bounds per row (forward) or, by the same rule read the other way, the
// queries key row j is seen by (backward), the per-element test of an edge tile is two
// comparisons.
struct VisibleRange {
  int lo, hi;
  __device__ __forceinline__ bool contains(int x) const { return x >= lo && x <= hi; }
};
__device__ __forceinline__ VisibleRange keys_seen_by(const TcParams& p, int i, int len) {
  if (i >= len) return {0, -1};
  VisibleRange r{0, len - 1};
  if (p.causal) r.hi = i;
  if (p.window >= 0) r.lo = max(0, i - p.window), r.hi = min(r.hi, i + p.window);
  return r;
}
__device__ __forceinline__ VisibleRange queries_seeing(const TcParams& p, int j, int len) {
  if (j >= len) return {0, -1};
  VisibleRange r{0, len - 1};
  if (p.causal) r.lo = j;
  if (p.window >= 0) r.lo = max(r.lo, j - p.window), r.hi = min(r.hi, j + p.window);
  return r;
}

// Softmax in base 2 (FlashAttention-2): scores scaled by scale * log2(e), so every
// probability is one FFMA and one ex2; row maxima and log-sum-exp live in log2 units inside
// the kernels (lse is stored in natural units).
constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// rows [r0, r0 + ROWS) of a [len, stride] slice at column col -> bf16 [ROWS][D + 8] (zeros
// past len); 16-byte loads (4 floats or 8 bf16 values).
template <int D, int ROWS = 64>
__device__ __forceinline__ void load_tile(bf16* dst, const float* src, int64_t stride, int col,
                                          int r0, int len) {
  for (int idx = threadIdx.x; idx < ROWS * D / 4; idx += NW * 32) {
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

// Asynchronous tile loads (cp.async) so that the next tile streams in while the current one
// is computed on. fp32 inputs (tests, fp32 activations) take the synchronous converting load.
//
// The thread count is the compile-time NW * 32 of every launch here, so each thread's
// 16-byte column c stays fixed and its rows step by NW * 32 / (D / 8): the loop unrolls into
// one pointer increment and one cp.async per row (a grid-stride loop over blockDim.x cost an
// index division, a multiply and a branch per copy).
template <int D, int ROWS = 64>
__device__ __forceinline__ void load_tile_async(bf16* dst, const bf16* src, int64_t stride, int col,
                                                int r0, int len) {
  constexpr int kChunks = D / 8, kRowStep = NW * 32 / kChunks;
  static_assert(NW * 32 % kChunks == 0, "a thread's column must not change between rows");
  static_assert(ROWS % kRowStep == 0, "every thread copies the same number of rows");
  const int r_first = threadIdx.x / kChunks, c = (threadIdx.x % kChunks) * 8;
  const bf16* from = src + (r0 + r_first) * stride + col + c;
  bf16* to = dst + r_first * (D + 8) + c;
#pragma unroll
  for (int i = 0; i < ROWS / kRowStep; ++i) {
    const bool valid = r0 + r_first + i * kRowStep < len;
    cp_async16(to, valid ? from : src, valid);
    from += kRowStep * stride;
    to += kRowStep * (D + 8);
  }
}
template <int D, int ROWS = 64>
__device__ __forceinline__ void load_tile_async(bf16* dst, const float* src, int64_t stride,
                                                int col, int r0, int len) {
  load_tile<D, ROWS>(dst, src, stride, col, r0, len);
}

// Two adjacent columns of an accumulator row (p 8-byte aligned for fp32, 4-byte for bf16).
__device__ __forceinline__ void store2(float* p, float a, float b) {
  *reinterpret_cast<float2*>(p) = make_float2(a, b);
}
__device__ __forceinline__ void store2(bf16* p, float a, float b) {
  *reinterpret_cast<uint32_t*>(p) = pack2(a, b);
}

// Forward tiles. Each warp owns MT m16 row tiles (16 MT query rows), so every K/V fragment
// read from shared memory feeds MT products (FlashAttention-2 gives each warp 32 rows so that
// ldmatrix bandwidth does not bound the kernel). One row tile measures best on an H100 at every
// head dim: at head dims 32/64, two (128-row blocks) are no faster at 128 and 512 tokens and
// 1.5-1.7x slower at 176 tokens and at 24 (real batches: a short sequence pads its last block,
// and fewer blocks hide less latency); above 64 the registers do not hold two (o alone takes
// D / 2 per row tile). Q's fragments stay in registers up to head dim 128 and are re-read from
// shared memory per product at 256, where key/value tiles of 32 rows keep the double-buffered
// tiles within an A100's 163 KB of shared memory.
template <int D>
struct FwdTile {
  static constexpr int MT = 1;
  static constexpr int BM = NW * 16 * MT;        // query rows per block
  static constexpr int BN = D <= 128 ? 64 : 32;  // key rows per tile
  static constexpr bool keep_q = D <= 128;
  static constexpr int LD = D + 8;
  static constexpr size_t bytes = sizeof(bf16) * (BM + 4 * BN) * LD;  // Q, then K, V twice
};

// Whether any (query, key) pair of rows [i0, i0 + ni) x [j0, j0 + nj) is masked by the causal
// or window rule or needs the relative bias. Blocks without one (the interior of long
// sequences) skip the per-element tests. Rows past the sequence end are zero-filled in shared
// memory: their scores are finite and never stored, so only keys past the end need masking,
// which the callers check.
__device__ __forceinline__ bool block_needs_mask(const TcParams& p, int i0, int ni, int j0,
                                                 int nj) {
  if (p.bias) return true;
  if (p.causal && j0 + nj - 1 > i0) return true;
  return p.window >= 0 && max(i0 + ni - 1 - j0, j0 + nj - 1 - i0) > p.window;
}

// Forward. Warp w owns query rows row0 + 16 MT w .. + 16 MT; of row tile mt this lane holds
// rows g and g + 8, and of every 16x8 tile the columns 2t, 2t + 1.
template <int D, typename T, bool kDropout>
__global__ void __launch_bounds__(NW * 32)
    attn_fwd_tc_kernel(TcParams p, const T* __restrict__ q, const T* __restrict__ k,
                       const T* __restrict__ v, T* __restrict__ out, float* __restrict__ lse,
                       const int32_t* __restrict__ tiles, const int32_t* __restrict__ cu) {
  constexpr int MT = FwdTile<D>::MT, BMF = FwdTile<D>::BM, BN = FwdTile<D>::BN, LD = FwdTile<D>::LD;
  constexpr bool keep_q = FwdTile<D>::keep_q;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);
  // K and V tiles, double-buffered: [Q | K0 | V0 | K1 | V1] (computed, not an array of
  // pointers: an indexed array would live in local memory)
  auto kbuf = [&](int b) { return Qs + BMF * LD + 2 * b * BN * LD; };
  auto vbuf = [&](int b) { return Qs + BMF * LD + (2 * b + 1) * BN * LD; };
  const int h = blockIdx.y, kvh = h / p.group, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int seq = tiles[2 * blockIdx.x], row0 = tiles[2 * blockIdx.x + 1];
  const int64_t start = cu[seq];
  const int len = cu[seq + 1] - cu[seq];
  // The Q tile travels in the first cp.async group with the first K/V tiles (one wait for all
  // three: with a few key tiles per block, as on real batches' short sequences, a separate
  // synchronous Q load was a whole extra round trip to global memory per block).
#pragma unroll
  for (int part = 0; part < MT; ++part)
    load_tile_async<D>(Qs + part * 64 * LD, q + start * p.qs, p.qs, h * D, row0 + part * 64, len);
  const int wrow = warp * 16 * MT;          // this warp's first row in the tile
  uint32_t qf[MT][keep_q ? D / 16 : 1][4];  // read from shared memory once Q has landed
  float o[MT][D / 8][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nb = 0; nb < D / 8; ++nb)
      o[mt][nb][0] = o[mt][nb][1] = o[mt][nb][2] = o[mt][nb][3] = 0;
  // running max (log2 units) and sum of rows g, g + 8 of each row tile
  float m[MT][2], l[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) m[mt][0] = m[mt][1] = -INFINITY, l[mt][0] = l[mt][1] = 0;
  const float sl2 = p.scale * kLog2e;
  // dropout: the mask's row key of rows g, g + 8 of each row tile
  uint32_t drop_key[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r)
      drop_key[mt][r] =
          kDropout ? p.drop.row_key((start + row0 + wrow + mt * 16 + g + 8 * r) * p.hq + h) : 0;
  // P times the mask's keep (the 1 / (1 - p) is applied with the normaliser at the end)
  auto dropped = [&](int mt, int e, int key, float pv) {
    if constexpr (kDropout) return p.drop.keep(drop_key[mt][e / 2], key) ? pv : 0.0f;
    return pv;
  };
  int kv_begin = 0, kv_end = len;
  if (p.causal) kv_end = min(len, row0 + BMF);
  if (p.window >= 0) {
    kv_begin = max(0, row0 - p.window) / BN * BN;
    kv_end = min(kv_end, row0 + BMF + p.window);
  }
  const int n_kv = kv_end > kv_begin ? (kv_end - kv_begin + BN - 1) / BN : 0;
  if (n_kv > 0) {
    load_tile_async<D, BN>(kbuf(0), k + start * p.ks, p.ks, kvh * D, kv_begin, len);
    load_tile_async<D, BN>(vbuf(0), v + start * p.ks, p.ks, kvh * D, kv_begin, len);
  }
  cp_async_commit();
  for (int it = 0; it < n_kv; ++it) {
    const int c0 = kv_begin + it * BN;
    const bf16* Ks = kbuf(it & 1);
    const bf16* Vs = vbuf(it & 1);
    if (it + 1 < n_kv) {
      load_tile_async<D, BN>(kbuf((it + 1) & 1), k + start * p.ks, p.ks, kvh * D, c0 + BN, len);
      load_tile_async<D, BN>(vbuf((it + 1) & 1), v + start * p.ks, p.ks, kvh * D, c0 + BN, len);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    if constexpr (keep_q)
      if (it == 0)
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int kk = 0; kk < D / 16; ++kk)
            ldsm_x4(qf[mt][kk], a_addr(Qs, LD, wrow + mt * 16, kk * 16, lane));
    constexpr int NJ = BN / 8;  // 16x8 score tiles per row tile
    float s[MT][NJ][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int j = 0; j < NJ; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t qa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if constexpr (keep_q) {
#pragma unroll
          for (int e = 0; e < 4; ++e) qa[mt][e] = qf[mt][kk][e];
        } else {
          ldsm_x4(qa[mt], a_addr(Qs, LD, wrow + mt * 16, kk * 16, lane));
        }
      }
#pragma unroll
      for (int np = 0; np < BN / 16; ++np) {
        uint32_t b[4];
        ldsm_x4(b, bt_addr(Ks, LD, np * 16, kk * 16, lane));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816(s[mt][2 * np], qa[mt], b[0], b[1]);
          mma16816(s[mt][2 * np + 1], qa[mt], b[2], b[3]);
        }
      }
    }
    // This warp's rows against the key tile: P = 2^(S sl2 - m), one FFMA and one ex2 per score
    // where nothing is masked; per-element tests at the edges.
    const bool full = c0 + BN <= len && !block_needs_mask(p, row0 + wrow, 16 * MT, c0, BN);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int irow[2] = {row0 + wrow + mt * 16 + g, row0 + wrow + mt * 16 + g + 8};
      float mx[2] = {-INFINITY, -INFINITY}, corr[2];
      if (full) {
#pragma unroll
        for (int j = 0; j < NJ; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) mx[e / 2] = fmaxf(mx[e / 2], s[mt][j][e]);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
          mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
          const float m_new = fmaxf(m[mt][r], mx[r] * sl2);
          corr[r] = fast_exp2(m[mt][r] - m_new);  // 0 while m was -inf (nothing accumulated)
          m[mt][r] = m_new;
          l[mt][r] *= corr[r];
        }
#pragma unroll
        for (int j = 0; j < NJ; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float pv = fast_exp2(fmaf(s[mt][j][e], sl2, -m[mt][e / 2]));
            s[mt][j][e] = dropped(mt, e, c0 + 8 * j + 2 * t + (e & 1), pv);
            l[mt][e / 2] += pv;
          }
      } else {
        const VisibleRange seen[2] = {keys_seen_by(p, irow[0], len), keys_seen_by(p, irow[1], len)};
#pragma unroll
        for (int j = 0; j < NJ; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int i = irow[e / 2], key = c0 + 8 * j + 2 * t + (e & 1);
            float x = -INFINITY;
            if (seen[e / 2].contains(key)) {
              x = s[mt][j][e] * sl2;
              if (p.bias)
                x +=
                    kLog2e *
                    p.bias[relative_position_bucket(key - i, p.buckets, p.max_distance) * p.hq + h];
            }
            s[mt][j][e] = x;
            mx[e / 2] = fmaxf(mx[e / 2], x);
          }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
          mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
          const float m_new = fmaxf(m[mt][r], mx[r]);
          corr[r] = m_new == -INFINITY ? 1.0f : fast_exp2(m[mt][r] - m_new);
          m[mt][r] = m_new;
          l[mt][r] *= corr[r];
        }
#pragma unroll
        for (int j = 0; j < NJ; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float mm = m[mt][e / 2];
            const float pv = mm == -INFINITY ? 0.0f : fast_exp2(s[mt][j][e] - mm);
            s[mt][j][e] = dropped(mt, e, c0 + 8 * j + 2 * t + (e & 1), pv);
            l[mt][e / 2] += pv;
          }
      }
#pragma unroll
      for (int nb = 0; nb < D / 8; ++nb) {
        o[mt][nb][0] *= corr[0];
        o[mt][nb][1] *= corr[0];
        o[mt][nb][2] *= corr[1];
        o[mt][nb][3] *= corr[1];
      }
    }
    // O += P V, P straight from the S accumulators
#pragma unroll
    for (int kc = 0; kc < BN / 16; ++kc) {
      uint32_t pa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        pa[mt][0] = pack2(s[mt][2 * kc][0], s[mt][2 * kc][1]);
        pa[mt][1] = pack2(s[mt][2 * kc][2], s[mt][2 * kc][3]);
        pa[mt][2] = pack2(s[mt][2 * kc + 1][0], s[mt][2 * kc + 1][1]);
        pa[mt][3] = pack2(s[mt][2 * kc + 1][2], s[mt][2 * kc + 1][3]);
      }
#pragma unroll
      for (int np = 0; np < D / 16; ++np) {
        uint32_t b[4];
        ldsm_x4_t(b, b_addr(Vs, LD, kc * 16, np * 16, lane));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816(o[mt][2 * np], pa[mt], b[0], b[1]);
          mma16816(o[mt][2 * np + 1], pa[mt], b[2], b[3]);
        }
      }
    }
    __syncthreads();  // this buffer is refilled two tiles later
  }
  cp_async_wait<0>();  // a block without key tiles still has its Q copy in flight
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float lr = l[mt][r];
      lr += __shfl_xor_sync(0xffffffffu, lr, 1);
      lr += __shfl_xor_sync(0xffffffffu, lr, 2);
      const int i = row0 + wrow + mt * 16 + g + 8 * r;
      if (i >= len) continue;
      const float inv = lr > 0 ? (kDropout ? p.drop.keep_scale : 1.0f) / lr : 0.0f;
      T* orow = out + (start + i) * p.qs + h * D;
#pragma unroll
      for (int nb = 0; nb < D / 8; ++nb)
        store2(orow + nb * 8 + 2 * t, o[mt][nb][2 * r] * inv, o[mt][nb][2 * r + 1] * inv);
      if (t == 0) lse[(start + i) * p.hq + h] = (m[mt][r] + log2f(lr)) * kLn2;
    }
}

// Backward tiles. Up to head dim 128 a block forms all D columns of dK, dV (and of its dQ
// contributions) and double-buffers the query/dO tiles (kStages = 2). At 256 the 2 x D / 8
// accumulator registers per lane of dK and dV would not fit: the work splits by output columns
// into DC = 128 wide halves (grid z), each block recomputing the full-width S^T = K Q^T and
// dP^T = V dO^T (7 instead of 5 tile products per tile pair, all on tensor cores). Double-buffered
// K, V, Q, dO and dS^T take 208 KB there, which an H100 has and an A100 (163 KB) has not: with
// one stage the next query/dO pair is issued once the current one is no longer read (before dQ).
template <int D>
struct BwdTile {
  static constexpr int DC = D <= 128 ? D : 128;  // dK, dV, dQ columns per block
  static constexpr bool keep_kv = D <= 64;       // K, V A-fragments held in registers
  static constexpr int LD = D + 8, LS = 64 + 8;
  static constexpr size_t bytes(int stages) {
    return sizeof(bf16) * ((2 + 2 * stages) * 64 * LD + 64 * LS) + sizeof(float) * (5 * 64 + 64);
  }
};

// Backward. Warp w owns key rows key0 + 16w .. +16 (this lane: rows g, g + 8); query tiles
// (head by head of the group) stream through shared memory. dK, dV accumulate in registers;
// dS^T goes through shared memory so that every warp can form its 16 query rows of dQ = dS K.
// Block z forms output columns [z DC, (z + 1) DC) of dK, dV and dQ (BwdTile).
template <int D, int kStages, typename T, bool kDropout>
__global__ void __launch_bounds__(NW * 32)
    attn_bwd_tc_kernel(TcParams p, const T* __restrict__ q, const T* __restrict__ k,
                       const T* __restrict__ v, const float* __restrict__ lse,
                       const T* __restrict__ dout, const float* __restrict__ delta,
                       float* __restrict__ dq, T* __restrict__ dk, T* __restrict__ dv,
                       float* __restrict__ d_bias, const int32_t* __restrict__ tiles,
                       const int32_t* __restrict__ cu) {
  constexpr int LD = BwdTile<D>::LD, LS = BwdTile<D>::LS, DC = BwdTile<D>::DC;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Ks = reinterpret_cast<bf16*>(smem_raw);
  bf16* Vs = Ks + 64 * LD;
  // query tiles and their dO, double-buffered: [K | V | Q0 | dO0 | Q1 | dO1 | dS^T]
  // (single-buffered: [K | V | Q0 | dO0 | dS^T])
  auto qbuf = [&](int b) { return Vs + (1 + 2 * b) * 64 * LD; };
  auto gbuf = [&](int b) { return Vs + (2 + 2 * b) * 64 * LD; };
  bf16* dSt = Vs + (1 + 2 * kStages) * 64 * LD;                     // [64 keys][LS]
  float* lse_b = reinterpret_cast<float*>(dSt + 64 * LS);           // [2][64]
  float* del_b = lse_b + 128;                                       // [2][64]
  float* bias_acc = del_b + 128;                                    // [64]
  uint32_t* drop_key = reinterpret_cast<uint32_t*>(bias_acc + 64);  // [64] of the query tile
  const int kvh = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int seq = tiles[2 * blockIdx.x], key0 = tiles[2 * blockIdx.x + 1];
  const int64_t start = cu[seq];
  const int len = cu[seq + 1] - cu[seq];
  const int c_off = blockIdx.z * DC;                        // this block's output columns
  float* const dbias = blockIdx.z == 0 ? d_bias : nullptr;  // summed once, by the first half
  // K and V travel in the first cp.async group with the first query tile (one round trip to
  // global memory before the first products instead of two)
  load_tile_async<D>(Ks, k + start * p.ks, p.ks, kvh * D, key0, len);
  load_tile_async<D>(Vs, v + start * p.ks, p.ks, kvh * D, key0, len);
  if (dbias)
    for (int b = threadIdx.x; b < p.buckets; b += blockDim.x) bias_acc[b] = 0;
  float dk_acc[DC / 8][4], dv_acc[DC / 8][4];
#pragma unroll
  for (int nb = 0; nb < DC / 8; ++nb)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk_acc[nb][e] = dv_acc[nb][e] = 0;
  // Head dims up to 64: this warp's K and V rows as A fragments, read from shared memory once
  // they have landed (they are the same for every query tile); larger head dims reload them per
  // tile, for lack of registers.
  constexpr bool kKeepKV = BwdTile<D>::keep_kv;
  uint32_t kfr[kKeepKV ? D / 16 : 1][4], vfr[kKeepKV ? D / 16 : 1][4];
  const int jrow[2] = {key0 + warp * 16 + g, key0 + warp * 16 + g + 8};
  const float sl2 = p.scale * kLog2e;
  int q_begin = 0, q_end = len;
  if (p.causal) q_begin = key0 / BM * BM;
  if (p.window >= 0) {
    q_begin = max(q_begin, max(0, key0 - p.window) / BM * BM);
    q_end = min(len, key0 + 64 + p.window);
  }
  const int n_q = q_end > q_begin ? (q_end - q_begin + BM - 1) / BM : 0;
  // Iteration it: query head kvh * group + it / n_q, query tile it % n_q.
  auto head_of = [&](int it) { return kvh * p.group + it / n_q; };
  // The next query tile, its dO, lse and delta (all asynchronous: a plain load of lse here
  // would stall two warps on global memory at the top of every iteration).
  auto issue = [&](int buf, int h, int c0) {
    load_tile_async<D>(qbuf(buf), q + start * p.qs, p.qs, h * D, c0, len);
    load_tile_async<D>(gbuf(buf), dout + start * p.qs, p.qs, h * D, c0, len);
    if (threadIdx.x < 64) {
      const int i = c0 + threadIdx.x;
      const int64_t at = (start + min(i, len - 1)) * p.hq + h;
      cp_async4(lse_b + buf * 64 + threadIdx.x, lse + at, i < len);
      cp_async4(del_b + buf * 64 + threadIdx.x, delta + at, i < len);
    }
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
      cp_async_wait<0>();  // issued during the previous iteration's dQ
    }
    if (threadIdx.x < 64) {
      lse_s[threadIdx.x] *= kLog2e;  // this thread's own copy has landed
      // (the previous tile's keys were last read before its dS^T barrier)
      if constexpr (kDropout)
        drop_key[threadIdx.x] = p.drop.row_key((start + c0 + threadIdx.x) * p.hq + h);
    }
    __syncthreads();
    if constexpr (kKeepKV)
      if (it == 0)
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
          ldsm_x4(kfr[kk], a_addr(Ks, LD, warp * 16, kk * 16, lane));
          ldsm_x4(vfr[kk], a_addr(Vs, LD, warp * 16, kk * 16, lane));
        }
    float st[8][4], dpt[8][4];
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) st[j][e] = dpt[j][e] = 0;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t ka[4], va[4];
      if constexpr (kKeepKV) {
#pragma unroll
        for (int e = 0; e < 4; ++e) ka[e] = kfr[kk][e], va[e] = vfr[kk][e];
      } else {
        ldsm_x4(ka, a_addr(Ks, LD, warp * 16, kk * 16, lane));
        ldsm_x4(va, a_addr(Vs, LD, warp * 16, kk * 16, lane));
      }
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t b[4];
        ldsm_x4(b, bt_addr(Qs, LD, np * 16, kk * 16, lane));
        mma16816(st[2 * np], ka, b[0], b[1]);
        mma16816(st[2 * np + 1], ka, b[2], b[3]);
        ldsm_x4(b, bt_addr(Gs, LD, np * 16, kk * 16, lane));
        mma16816(dpt[2 * np], va, b[0], b[1]);
        mma16816(dpt[2 * np + 1], va, b[2], b[3]);
      }
    }
    // Z = keep / (1 - p) of query qi of the tile and key `key` (1 without dropout)
    auto dropout_factor = [&](int qi, int key) {
      if constexpr (kDropout) return p.drop.factor(drop_key[qi], key);
      return 1.0f;
    };
    // P^T (times Z) and dS^T (in place of S^T and dP^T); lse_s is in log2 units
    if (key0 + 64 <= len && !block_needs_mask(p, c0, 64, key0, 64)) {
      // Query rows past the end have zero Q and dO (and lse = delta = 0): P = 1, dP = 0, dS = 0.
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int qi = 8 * j + 2 * t + (e & 1);
          const float pv = fast_exp2(fmaf(st[j][e], sl2, -lse_s[qi]));
          const float z = dropout_factor(qi, jrow[e / 2]);
          dpt[j][e] = pv * (dpt[j][e] * z - del_s[qi]);
          st[j][e] = pv * z;
        }
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int qi = 8 * j + 2 * t + (e & 1), i = c0 + qi, key = jrow[e / 2];
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
            if (dbias) atomicAdd(&bias_acc[bucket], ds);
          }
          st[j][e] = pv;
          dpt[j][e] = ds;
        }
    }
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
      for (int np = 0; np < DC / 16; ++np) {
        uint32_t b[4];
        ldsm_x4_t(b, b_addr(Gs, LD, kc * 16, c_off + np * 16, lane));
        mma16816(dv_acc[2 * np], pa, b[0], b[1]);
        mma16816(dv_acc[2 * np + 1], pa, b[2], b[3]);
        ldsm_x4_t(b, b_addr(Qs, LD, kc * 16, c_off + np * 16, lane));
        mma16816(dk_acc[2 * np], da, b[0], b[1]);
        mma16816(dk_acc[2 * np + 1], da, b[2], b[3]);
      }
    }
    __syncthreads();  // dS^T of all warps in place (single-buffered: Q, dO no longer read)
    if constexpr (kStages == 1) {
      if (it + 1 < n_it) issue(0, head_of(it + 1), q_begin + ((it + 1) % n_q) * BM);
      cp_async_commit();
    }
    // dQ rows c0 + 16w .. +16 = dS K: A = dS (from dS^T, transposed load), B = K [key][d]
    float dq_acc[DC / 8][4];
#pragma unroll
    for (int nb = 0; nb < DC / 8; ++nb)
      dq_acc[nb][0] = dq_acc[nb][1] = dq_acc[nb][2] = dq_acc[nb][3] = 0;
#pragma unroll
    for (int kc = 0; kc < 4; ++kc) {
      uint32_t a[4];
      ldsm_x4_t(a, at_addr(dSt, LS, kc * 16, warp * 16, lane));
#pragma unroll
      for (int np = 0; np < DC / 16; ++np) {
        uint32_t b[4];
        ldsm_x4_t(b, b_addr(Ks, LD, kc * 16, c_off + np * 16, lane));
        mma16816(dq_acc[2 * np], a, b[0], b[1]);
        mma16816(dq_acc[2 * np + 1], a, b[2], b[3]);
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int i = c0 + warp * 16 + g + 8 * r;
      if (i >= len) continue;
      float* dqrow = dq + (start + i) * p.qs + h * D + c_off;
#pragma unroll
      for (int nb = 0; nb < DC / 8; ++nb)
        atomic_add2(dqrow + nb * 8 + 2 * t, p.scale * dq_acc[nb][2 * r],
                    p.scale * dq_acc[nb][2 * r + 1]);
    }
    if (dbias && (it + 1 == n_it || head_of(it + 1) != h)) {  // head done
      __syncthreads();
      for (int b = threadIdx.x; b < p.buckets; b += blockDim.x) {
        if (bias_acc[b] != 0.0f) atomicAdd(&d_bias[b * p.hq + h], bias_acc[b]);
        bias_acc[b] = 0;
      }
    }
  }
  cp_async_wait<0>();  // a block without query tiles still has its K/V copies in flight
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int jj = jrow[r];
    if (jj >= len) continue;
    T* dkrow = dk + (start + jj) * p.ks + kvh * D + c_off;
    T* dvrow = dv + (start + jj) * p.ks + kvh * D + c_off;
#pragma unroll
    for (int nb = 0; nb < DC / 8; ++nb) {
      const int c = nb * 8 + 2 * t;
      store2(dkrow + c, p.scale * dk_acc[nb][2 * r], p.scale * dk_acc[nb][2 * r + 1]);
      store2(dvrow + c, dv_acc[nb][2 * r], dv_acc[nb][2 * r + 1]);
    }
  }
}

// Head dims of the tensor-core kernels: 16, 32, 64, 128 and 256, both ways. Calls f with the
// head dim as a compile-time constant; false for any other.
template <typename F>
bool dispatch_tc(int d, F&& f) {
  auto take = [&](auto dd) {
    if (d != decltype(dd)::value) return false;
    f(dd);
    return true;
  };
  return take(std::integral_constant<int, 16>{}) || take(std::integral_constant<int, 32>{}) ||
         take(std::integral_constant<int, 64>{}) || take(std::integral_constant<int, 128>{}) ||
         take(std::integral_constant<int, 256>{});
}

}  // namespace

int attention_tc_forward_rows(int head_dim) {
  int rows = 0;
  dispatch_tc(head_dim, [&](auto dd) { rows = FwdTile<decltype(dd)::value>::BM; });
  return rows;
}

bool attention_tc_supported(const AttentionArgs& a) {
  return dispatch_tc(a.head_dim, [](auto) {}) && (!a.rel_bias || a.rel_buckets <= 64);
}

void attention_forward_tc(const AttentionArgs& a, const void* q, const void* k, const void* v,
                          void* out, bool bf16_io, float* lse, const int32_t* tiles, int n_tiles,
                          const int32_t* cu) {
  TcParams p = make_attn_params(a);
  dispatch_tc(a.head_dim, [&](auto dd) {
    constexpr int D = decltype(dd)::value;
    auto launch = [&](auto* tag, auto dropout) {
      using T = std::remove_pointer_t<decltype(tag)>;
      constexpr bool kDropout = decltype(dropout)::value;
      static const bool smem_set =
          (allow_dynamic_smem(attn_fwd_tc_kernel<D, T, kDropout>, FwdTile<D>::bytes),
           true);  // once per instantiation
      (void)smem_set;
      attn_fwd_tc_kernel<D, T, kDropout><<<dim3(n_tiles, p.hq), NW * 32, FwdTile<D>::bytes>>>(
          p, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
          static_cast<T*>(out), lse, tiles, cu);
    };
    auto with_dropout = [&](auto* tag) {
      if (p.dropout)
        launch(tag, std::true_type{});
      else
        launch(tag, std::false_type{});
    };
    if (bf16_io)
      with_dropout(static_cast<bf16*>(nullptr));
    else
      with_dropout(static_cast<float*>(nullptr));
  });
  ET_LAUNCH_CHECK();
}

void attention_backward_tc(const AttentionArgs& a, const void* q, const void* k, const void* v,
                           const void* dout, bool bf16_in, const float* lse, const float* delta,
                           float* dq, void* dk, void* dv, float* d_rel_bias, const int32_t* tiles,
                           int n_tiles, const int32_t* cu) {
  TcParams p = make_attn_params(a);
  // two query/dO buffers wherever they fit (every head dim on an H100; up to 128 on an A100);
  // fp32 inputs load synchronously, so a second buffer would gain them nothing at 256
  static const int smem_optin = [] {
    int dev = 0, v = 0;
    ET_CUDA(cudaGetDevice(&dev));
    ET_CUDA(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    return v;
  }();
  dispatch_tc(a.head_dim, [&](auto dd) {
    constexpr int D = decltype(dd)::value;
    auto run = [&](auto kernel, size_t bytes, auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      // on every launch (a host call of about a microsecond): the one- and two-stage kernels
      // share this lambda's instantiation, so a static here would set only the first of them
      allow_dynamic_smem(kernel, bytes);
      kernel<<<dim3(n_tiles, p.hk, D / BwdTile<D>::DC), NW * 32, bytes>>>(
          p, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), lse,
          static_cast<const T*>(dout), delta, dq, static_cast<T*>(dk), static_cast<T*>(dv),
          d_rel_bias, tiles, cu);
    };
    constexpr size_t one = BwdTile<D>::bytes(1), two = BwdTile<D>::bytes(2);
    auto pick = [&](auto dropout) {
      constexpr bool kDrop = decltype(dropout)::value;
      if constexpr (D <= 128) {
        if (bf16_in)
          run(attn_bwd_tc_kernel<D, 2, bf16, kDrop>, two, static_cast<bf16*>(nullptr));
        else
          run(attn_bwd_tc_kernel<D, 2, float, kDrop>, two, static_cast<float*>(nullptr));
      } else {
        if (bf16_in && static_cast<size_t>(smem_optin) >= two)
          run(attn_bwd_tc_kernel<D, 2, bf16, kDrop>, two, static_cast<bf16*>(nullptr));
        else if (bf16_in)
          run(attn_bwd_tc_kernel<D, 1, bf16, kDrop>, one, static_cast<bf16*>(nullptr));
        else
          run(attn_bwd_tc_kernel<D, 1, float, kDrop>, one, static_cast<float*>(nullptr));
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
