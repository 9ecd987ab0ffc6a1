// LoRA's output-gradient products in one pass over g (lora_grad.h).
//
// A block owns RB rows of g and walks all `out` columns in chunks of 128, each chunk's rows in
// tiles of 64 x 128 (a four-stage cp.async pipeline; a chunk's rows of B come with its first
// tile, into one of a few buffers by chunk number). Every tile G feeds two mma.sync products,
// each on its own four warps:
//   dxa[rows, :] += G B[chunk, :]       (warps 0-3: the tile's rows 16w..16w+15; accumulated in
//                                        registers over all chunks, so no reduction over out)
//   dB[chunk, :] += G^T xa[rows, :]     (warps 4-7: the chunk's columns 64c + 16(w-4) + 0..15,
//                                        c = 0, 1; accumulated over the block's row tiles, then
//                                        added to dB with one vector reduction per pair)
// so g is read from memory once, instead of once per cuBLAS product. Measured on an H100 with
// Nsight Compute (bench/NOTES.md), n = 16384 (a row half of BERT's FFN backward, 128 blocks):
// with 4 warps doing both products and 64-column chunks the kernel read g at 1.0-1.35 TB/s
// (one warp per scheduler, no eligible warp 81% of cycles); giving each product its own warps
// brought 1.6 TB/s, and 128-column tiles (256 contiguous bytes of each row of g per request
// instead of 128: the blocks walk the same columns at once, so each row segment is a DRAM access
// of its own) 2.0 TB/s. 256 columns gained nothing more (one block an SM by shared memory at
// n = 32768), nor did 64-row blocks (twice the blocks and twice the dB reductions).
// The reductions into dB are (n / RB) x out x r fp32 values, 2 r / RB of g's bytes (r = 16: 25%
// at RB = 128, 6% at 512); RB grows with n only as far as the grid keeps about two blocks an SM.
// Tried and measured slower over whole steps: splitting the columns across blocks (the fp32
// partial of dxa, its zeroing and the rounding pass cost more than they saved). xa's rows for
// the block sit in shared memory for the whole walk. Registers: (RB / 64) x r / 2 accumulators
// of dxa, r of dB.
#include <algorithm>
#include <type_traits>

#include "ops/cuda/activation.cuh"
#include "ops/cuda/cuda_common.h"
#include "ops/cuda/lora_grad.h"
#include "ops/cuda/lora_tiles.cuh"
#include "ops/cuda/operand.cuh"
#include "ops/cuda/tensor_core.cuh"

namespace et::cuda {

namespace {

using namespace lora_tiles;

constexpr int kStages = 4;  // G tiles in the pipeline: the one being read and three loading
// B buffers: one per chunk that the tiles in the pipeline span, (kStages - 1) tiles past the
// one being read, at RB / 64 tiles a chunk
template <int RB>
__host__ __device__ constexpr int b_buffers() {
  return (kStages - 2 + RB / kTile) / (RB / kTile) + 1;
}

template <int R, int RB>
constexpr size_t smem_bytes() {
  return sizeof(__nv_bfloat16) *
         (size_t{kStages} * kTile * kGld + size_t{b_buffers<RB>()} * kCols * padded_rank(R) +
          size_t{RB} * padded_rank(R));
}

// y = act(y), or act(y) * u with a GLU's up tile, on the pieces of a tile that thread tid copied
// (load_tile_async's mapping), once its own copies have landed and before the barrier that shows
// the tile to the other warps: the values a materialised act(x) (act(x) * u) in bf16 would hold,
// computed in fp32 and rounded once.
template <int A, bool kGlu>
__device__ __forceinline__ void activate_own_pieces(__nv_bfloat16* tile, const __nv_bfloat16* up,
                                                    int tid) {
#pragma unroll
  for (int k = 0; k < kPieces; ++k) {
    const int at = piece_row(tid, k) * kGld + piece_col(tid, k);
    float v[8], u[8];
    load_bf16x8(tile + at, v);
    if constexpr (kGlu) load_bf16x8(up + at, u);
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = kGlu ? act_f(A, v[e]) * u[e] : act_f(A, v[e]);
    store_bf16x8(tile + at, v);
  }
}

// Rows t0 .. t0 + RB of a rank-r matrix [n, R] (or its transpose [R, n] with row pitch ld) into
// shared memory as [RB][padded_rank(R)], zeros past n.
template <int R, int RB>
__device__ __forceinline__ void load_rank_rows(__nv_bfloat16* dst, const __nv_bfloat16* src,
                                               bool transposed, int64_t ld, int64_t n, int64_t t0,
                                               int tid) {
  for (int i = tid; i < RB * R; i += kThreads) {
    const int t = transposed ? i % RB : i / R, j = transposed ? i / RB : i % R;
    const int64_t row = t0 + t;
    __nv_bfloat16 v = __float2bfloat16(0.0f);
    if (row < n) v = transposed ? src[j * ld + row] : src[row * ld + j];
    dst[t * padded_rank(R) + j] = v;
  }
}

template <int R, int RB>
__global__ void __launch_bounds__(kThreads) lora_output_grad_kernel(LoraOutputGradArgs a) {
  constexpr int kRowTiles = RB / kTile, kUl = padded_rank(R), kBufs = b_buffers<RB>();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto* gs = reinterpret_cast<__nv_bfloat16*>(smem_raw);  // [kStages][kTile][kGld]
  __nv_bfloat16* bs = gs + kStages * kTile * kGld;        // [kBufs][kCols][kUl], by chunk
  __nv_bfloat16* us = bs + kBufs * kCols * kUl;           // [RB][kUl]
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  // warp-uniform roles: the dxa product (its 16 rows of a tile) or the dB one (its 16 columns)
  const bool dxa_warp = warp < 4;
  const int wq = warp % 4;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * RB;
  const int chunks = (a.out + kCols - 1) / kCols, tiles = chunks * kRowTiles;

  // tile i: chunk i / kRowTiles, row tile i % kRowTiles; a chunk's first tile also brings its B
  const auto issue = [&](int i) {
    if (i < tiles) {
      const int chunk = i / kRowTiles, rt = i % kRowTiles;
      load_tile_async(gs + (i % kStages) * kTile * kGld, a.g, a.n, a.out, a.g_ld, t0 + rt * kTile,
                      chunk * kCols, tid);
      if (rt == 0)
        load_rank_rows_async<R, kCols>(bs + (chunk % kBufs) * kCols * kUl, a.b, a.out,
                                       chunk * kCols, tid);
    }
    cp_async_commit();
  };
  for (int i = 0; i < kStages - 1; ++i) issue(i);
  // xa's rows of this block (zero past n), once, while the first tiles are on their way
  load_rank_rows<R, RB>(us, a.xa, a.xa_transposed, a.xa_ld, a.n, t0, tid);

  float acc_x[kRowTiles][R / 8][4] = {};   // dxa warps: rows rt * 64 + 16 wq + (0..15)
  float acc_b[kCols / 64][R / 8][4] = {};  // dB warps: the chunk's columns 64 cb + 16 wq + (0..15)
  for (int chunk = 0; chunk < chunks; ++chunk) {
    const __nv_bfloat16* bt = bs + (chunk % kBufs) * kCols * kUl;
#pragma unroll
    for (int rt = 0; rt < kRowTiles; ++rt) {
      const int i = chunk * kRowTiles + rt;
      cp_async_wait<kStages - 2>();
      __syncthreads();  // tile i landed for every thread; tile i - 1's stage is free again
      issue(i + kStages - 1);
      const __nv_bfloat16* gt = gs + (i % kStages) * kTile * kGld;
      const __nv_bfloat16* ut = us + rt * kTile * kUl;
      if (dxa_warp) {
#pragma unroll
        for (int k0 = 0; k0 < kCols; k0 += 16) {
          uint32_t af[4], bf[4];
          ldsm_x4(af, a_addr(gt, kGld, 16 * wq, k0, lane));  // G rows 16wq.., columns k0..
#pragma unroll
          for (int j0 = 0; j0 < R; j0 += 16) {
            ldsm_x4_t(bf, b_addr(bt, kUl, k0, j0, lane));  // B rows k0.. (g's columns), cols j0..
            mma16816(acc_x[rt][j0 / 8], af, bf[0], bf[1]);
            mma16816(acc_x[rt][j0 / 8 + 1], af, bf[2], bf[3]);
          }
        }
      } else if (a.db) {
#pragma unroll
        for (int k0 = 0; k0 < kTile; k0 += 16)
#pragma unroll
          for (int cb = 0; cb < kCols / 64; ++cb) {
            uint32_t af[4], bf[4];
            // G^T: columns 64 cb + 16 wq.., rows k0..
            ldsm_x4_t(af, at_addr(gt, kGld, k0, 64 * cb + 16 * wq, lane));
#pragma unroll
            for (int j0 = 0; j0 < R; j0 += 16) {
              ldsm_x4_t(bf, b_addr(ut, kUl, k0, j0, lane));  // xa rows k0.., cols j0..
              mma16816(acc_b[cb][j0 / 8], af, bf[0], bf[1]);
              mma16816(acc_b[cb][j0 / 8 + 1], af, bf[2], bf[3]);
            }
          }
      }
    }
    if (!dxa_warp && a.db) {
      const int g = lane / 4, t = lane % 4;
#pragma unroll
      for (int cb = 0; cb < kCols / 64; ++cb)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int col = chunk * kCols + 64 * cb + 16 * wq + g + 8 * half;
          if (col >= a.out) continue;
#pragma unroll
          for (int nb = 0; nb < R / 8; ++nb)
            atomic_add2(a.db + static_cast<int64_t>(col) * R + 8 * nb + 2 * t,
                        a.scale * acc_b[cb][nb][2 * half], a.scale * acc_b[cb][nb][2 * half + 1]);
        }
#pragma unroll
      for (int cb = 0; cb < kCols / 64; ++cb)
#pragma unroll
        for (int nb = 0; nb < R / 8; ++nb)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc_b[cb][nb][e] = 0.0f;
    }
  }
  cp_async_wait<0>();
  if (!dxa_warp) return;

  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int rt = 0; rt < kRowTiles; ++rt)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t row = t0 + rt * kTile + 16 * wq + g + 8 * half;
      if (row >= a.n) continue;
#pragma unroll
      for (int nb = 0; nb < R / 8; ++nb) {
        const int j = 8 * nb + 2 * t;
        const float v0 = a.scale * acc_x[rt][nb][2 * half],
                    v1 = a.scale * acc_x[rt][nb][2 * half + 1];
        if (a.dxa_transposed) {
          a.dxa[j * a.dxa_ld + row] = __float2bfloat16(v0);
          a.dxa[(j + 1) * a.dxa_ld + row] = __float2bfloat16(v1);
        } else {
          *reinterpret_cast<uint32_t*>(a.dxa + row * a.dxa_ld + j) = pack2(v0, v1);
        }
      }
    }
}

// Stages of the activate-inside kernel: a GLU's stage holds two tiles (gate and up), so one
// fewer keeps two blocks an SM within shared memory.
__host__ __device__ constexpr int act_grad_stages(bool glu) {
  return glu ? 3 : kStages;
}
template <int R, int RB, bool kGlu>
constexpr size_t act_grad_smem_bytes() {
  return sizeof(__nv_bfloat16) * (size_t{act_grad_stages(kGlu)} * (kGlu ? 2 : 1) * kTile * kGld +
                                  size_t{RB} * padded_rank(R));
}

// da [r, in] += dxa^T act(x), or dxa^T (act(x) * up) (lora_grad.h): the same walk as above over
// x's rows and columns, each tile activated in place by the threads that copied it (with the up
// tile they copied beside it), then one product on all eight warps: warp w owns the chunk's
// columns 16w..16w+15 and accumulates them over the block's row tiles (A = dxa^T from shared
// memory, B = the activated tile), then adds them to da with one vector reduction per pair of
// values at the chunk's end. With few row blocks, blockIdx.y gives each block a share of the
// chunks instead of all of them (the reductions into da already go chunk by chunk).
template <int R, int RB, int A, bool kGlu>
__global__ void __launch_bounds__(kThreads) lora_act_grad_kernel(LoraActGradArgs a) {
  constexpr int kRowTiles = RB / kTile, kUl = padded_rank(R), kS = act_grad_stages(kGlu);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto* gs = reinterpret_cast<__nv_bfloat16*>(smem_raw);     // [kS][kTile][kGld]
  __nv_bfloat16* ups = gs + kS * kTile * kGld;               // [kS][kTile][kGld] (GLU only)
  __nv_bfloat16* us = ups + (kGlu ? kS * kTile * kGld : 0);  // [RB][kUl]: dxa's rows
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * RB;
  // the block's chunks: [c0, c0 + chunks) of the split blockIdx.y
  const int all_chunks = (a.in + kCols - 1) / kCols;
  const int per_split = (all_chunks + gridDim.y - 1) / gridDim.y;
  const int c0 = blockIdx.y * per_split;
  const int chunks = min(all_chunks - c0, per_split), tiles = chunks * kRowTiles;
  if (chunks <= 0) return;
  const auto issue = [&](int i) {  // tile i: chunk c0 + i / kRowTiles, row tile i % kRowTiles
    if (i < tiles) {
      const int64_t row0 = t0 + (i % kRowTiles) * kTile;
      const int col0 = (c0 + i / kRowTiles) * kCols;
      load_tile_async(gs + (i % kS) * kTile * kGld, a.x, a.n, a.in, a.ld, row0, col0, tid);
      if constexpr (kGlu)
        load_tile_async(ups + (i % kS) * kTile * kGld, a.up, a.n, a.in, a.ld, row0, col0, tid);
    }
    cp_async_commit();
  };
  for (int i = 0; i < kS - 1; ++i) issue(i);
  load_rank_rows<R, RB>(us, a.dxa, false, R, a.n, t0, tid);

  float acc[R / 16][2][4] = {};  // da rows 16 mb + (0..15), the chunk's columns 16 warp + (0..15)
  for (int chunk = 0; chunk < chunks; ++chunk) {
#pragma unroll
    for (int rt = 0; rt < kRowTiles; ++rt) {
      const int i = chunk * kRowTiles + rt;
      __nv_bfloat16* gt = gs + (i % kS) * kTile * kGld;
      cp_async_wait<kS - 2>();  // this thread's copies of tile i have landed
      activate_own_pieces<A, kGlu>(gt, ups + (i % kS) * kTile * kGld, tid);
      __syncthreads();  // tile i activated for every thread; tile i - 1's stage is free again
      issue(i + kS - 1);
      const __nv_bfloat16* ut = us + rt * kTile * kUl;
#pragma unroll
      for (int k0 = 0; k0 < kTile; k0 += 16) {
        uint32_t bf[4];
        ldsm_x4_t(bf, b_addr(gt, kGld, k0, 16 * warp, lane));  // act(x) rows k0.., cols 16w..
#pragma unroll
        for (int mb = 0; mb < R / 16; ++mb) {
          uint32_t af[4];
          ldsm_x4_t(af, at_addr(ut, kUl, k0, 16 * mb, lane));  // dxa^T: ranks 16mb.., rows k0..
          mma16816(acc[mb][0], af, bf[0], bf[1]);
          mma16816(acc[mb][1], af, bf[2], bf[3]);
        }
      }
    }
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int nb = 0; nb < 2; ++nb) {
      const int col = (c0 + chunk) * kCols + 16 * warp + 8 * nb + 2 * t;
      if (col >= a.in) continue;  // (in is a multiple of 8: col + 1 is inside too)
#pragma unroll
      for (int mb = 0; mb < R / 16; ++mb)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int j = 16 * mb + g + 8 * half;
          atomic_add2(a.da + static_cast<int64_t>(j) * a.in + col, acc[mb][nb][2 * half],
                      acc[mb][nb][2 * half + 1]);
          acc[mb][nb][2 * half] = acc[mb][nb][2 * half + 1] = 0.0f;
        }
    }
  }
  cp_async_wait<0>();
}

template <int R, int RB>
void launch(const LoraOutputGradArgs& a) {
  auto kernel = lora_output_grad_kernel<R, RB>;
  constexpr size_t smem = smem_bytes<R, RB>();
  allow_dynamic_smem(kernel, smem);
  const auto blocks = static_cast<unsigned>((a.n + RB - 1) / RB);
  kernel<<<blocks, kThreads, smem>>>(a);
  ET_LAUNCH_CHECK();
}

}  // namespace

bool lora_output_grad_supported(const LoraOutputGradArgs& a) {
  return (a.r == 16 || a.r == 32) && a.out % 8 == 0 && a.out > 0 &&
         (a.xa_transposed ? a.xa_ld >= a.n : a.xa_ld >= a.r) &&
         (a.dxa_transposed ? a.dxa_ld >= a.n : a.dxa_ld >= a.r && a.dxa_ld % 2 == 0) &&
         a.g_ld >= a.out && a.g_ld % 8 == 0 && vec8_aligned(a.g) && vec8_aligned(a.b) &&
         (a.dxa_transposed || reinterpret_cast<uintptr_t>(a.dxa) % 4 == 0) &&
         (!a.db || reinterpret_cast<uintptr_t>(a.db) % 8 == 0);
}

void lora_output_grad(const LoraOutputGradArgs& a) {
  ET_CHECK(lora_output_grad_supported(a), "lora_output_grad: unsupported operands (rank ", a.r,
           ", out ", a.out, ")");
  if (a.n == 0) return;
  // rows per block: the most (fewest reductions into dB) that keep 256 blocks (two an SM)
  if (a.r == 16) {
    if (a.n >= 256 * 512)
      launch<16, 512>(a);
    else if (a.n >= 256 * 256)
      launch<16, 256>(a);
    else
      launch<16, 128>(a);
  } else {
    if (a.n >= 256 * 256)
      launch<32, 256>(a);
    else
      launch<32, 128>(a);
  }
}

bool lora_act_grad_supported(const LoraActGradArgs& a) {
  return with_ffn_act(a.act, [](auto) {}) && (a.r == 16 || a.r == 32) && a.in % 8 == 0 &&
         a.in > 0 && a.ld >= a.in && a.ld % 8 == 0 && vec8_aligned(a.x) &&
         (!a.up || vec8_aligned(a.up)) && reinterpret_cast<uintptr_t>(a.dxa) % 4 == 0 &&
         reinterpret_cast<uintptr_t>(a.da) % 8 == 0;
}

namespace {

template <int R, int RB>
void launch_act_grad(const LoraActGradArgs& a) {
  const auto run = [&](auto act, auto glu) {
    auto kernel = lora_act_grad_kernel<R, RB, decltype(act)::value, decltype(glu)::value>;
    constexpr size_t smem = act_grad_smem_bytes<R, RB, decltype(glu)::value>();
    allow_dynamic_smem(kernel, smem);
    // fewer than 256 row blocks (two an SM): the columns split over blockIdx.y as well, so
    // that the compute-bound activation has two blocks an SM (H100, Qwen3's real-length mix,
    // n about 8000: 125 row blocks alone took 1.6x the time of materialising act(g) u and a
    // cuBLAS product; bench/NOTES.md)
    const int64_t rows = (a.n + RB - 1) / RB, chunks = (a.in + kCols - 1) / kCols;
    const int64_t splits = std::min(chunks, std::max<int64_t>(1, (256 + rows - 1) / rows));
    kernel<<<dim3(static_cast<unsigned>(rows), static_cast<unsigned>(splits)), kThreads, smem>>>(a);
    ET_LAUNCH_CHECK();
  };
  with_ffn_act(a.act, [&](auto act) {
    if (a.up)
      run(act, std::true_type{});
    else
      run(act, std::false_type{});
  });
}

}  // namespace

void lora_act_grad(const LoraActGradArgs& a) {
  ET_CHECK(lora_act_grad_supported(a), "lora_act_grad: unsupported operands (rank ", a.r, ", in ",
           a.in, ")");
  if (a.n == 0) return;
  // rows per block: the most (fewest reductions into da, up to 256: 12% of x's bytes at rank 16)
  // that keep 256 blocks (two an SM), down to 64: the activation makes this kernel compute-bound
  // (H100, n = 16384, in = 3072, GELU erf: 105 us with 64 rows a block, 138 us with 128;
  // bench/NOTES.md)
  const auto rows = [&](auto r) {
    constexpr int R = decltype(r)::value;
    if (a.n >= 256 * 256)
      launch_act_grad<R, 256>(a);
    else if (a.n >= 256 * 128)
      launch_act_grad<R, 128>(a);
    else
      launch_act_grad<R, 64>(a);
  };
  if (a.r == 16)
    rows(std::integral_constant<int, 16>{});
  else
    rows(std::integral_constant<int, 32>{});
}

}  // namespace et::cuda
