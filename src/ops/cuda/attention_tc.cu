// Tensor-core variable-length attention (head_dim 16/32/64/128/256): the
// algorithm of attention.cu (FlashAttention-2, Dao 2023: online softmax forward, recomputing
// backward) with every matrix product of a tile on bf16 tensor cores (mma.sync m16n8k16, fp32
// accumulation) and the scores, probabilities and output accumulators kept in registers.
// Inputs (bf16 or fp32) are rounded to bf16 as tiles enter shared memory; statistics stay fp32.
//
// Forward: a block = 4 warps = 64 query rows of one (sequence, head) (FwdTile); key/value
// tiles stream through shared memory, double-buffered by cp.async. Each warp computes its score
// tiles S = Q K^T, updates the running max/sum of its rows, rescales its output accumulators
// and adds P V with P taken directly from the score registers. Dropout on the probabilities
// (kDropout; dropout_mask.h): the normaliser sums P before dropout, the output the dropped P Z
// (Z = keep / (1 - p)), with the mask's row keys of a lane's two rows in registers.
//
// The backward is in attention_tc_backward.cu, the shared tile helpers in attention_tiles.cuh.
// `embedtune bench --attention` times both against PyTorch's SDPA (bench/NOTES.md).
#include <cuda_bf16.h>

#include "ops/cuda/attention.h"
#include "ops/cuda/attention_tiles.cuh"
#include "ops/cuda/cuda_common.h"
#include "ops/cuda/tensor_core.cuh"
#include "ops/relative_bucket.h"

namespace et::cuda {

namespace {

using namespace attn_tc;

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

// o *= corr per accumulator row (a lane's rows g and g + 8 of a row tile).
template <int NB>
__device__ __forceinline__ void rescale_rows(float (&o)[NB][4], const float (&corr)[2]) {
#pragma unroll
  for (int nb = 0; nb < NB; ++nb) {
    o[nb][0] *= corr[0];
    o[nb][1] *= corr[0];
    o[nb][2] *= corr[1];
    o[nb][3] *= corr[1];
  }
}

// How far (log2 units) a row's max may exceed the running max before o is rescaled.
constexpr float kSlack = 8.0f;

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
      float mx[2] = {-INFINITY, -INFINITY};
      if (full) {
#pragma unroll
        for (int j = 0; j < NJ; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) mx[e / 2] = fmaxf(mx[e / 2], s[mt][j][e]);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
          mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
          mx[r] *= sl2;
        }
        // Lazy rescaling (FlashAttention-4's idea): the running max m only has to bound the
        // exponents, not equal the row max. While no row of the warp grows past m + kSlack, m
        // stays and the D / 2 multiplies of rescaling o are skipped (P <= 2^kSlack, exact in
        // fp32 sums and bf16's relative precision); the final 1 / l and lse use the same m.
        float corr[2];
        if (__any_sync(0xffffffffu, mx[0] > m[mt][0] + kSlack || mx[1] > m[mt][1] + kSlack)) {
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const float m_new = fmaxf(m[mt][r], mx[r]);
            corr[r] = fast_exp2(m[mt][r] - m_new);  // 0 while m was -inf (nothing accumulated)
            m[mt][r] = m_new;
            l[mt][r] *= corr[r];
          }
          rescale_rows(o[mt], corr);
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
        float corr[2];
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
        rescale_rows(o[mt], corr);
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
      T* orow = out + (start + i) * p.os + h * D;
#pragma unroll
      for (int nb = 0; nb < D / 8; ++nb)
        store2(orow + nb * 8 + 2 * t, o[mt][nb][2 * r] * inv, o[mt][nb][2 * r + 1] * inv);
      if (t == 0) lse[(start + i) * p.hq + h] = (m[mt][r] + log2f(lr)) * kLn2;
    }
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

void attention_forward_tc(const AttentionArgs& a, const AttnStrides& st, const void* q,
                          const void* k, const void* v, void* out, bool bf16_io, float* lse,
                          const int32_t* tiles, int n_tiles, const int32_t* cu) {
  TcParams p = make_attn_params(a);
  p.qs = st.q, p.ks = st.kv, p.os = st.out;
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

}  // namespace et::cuda
