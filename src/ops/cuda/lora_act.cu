// LoRA's rank-r term inside the activation's pass (lora_act.h).
//
// One block per 64 x 128 tile of the [n, f] tensor (grid: column tiles, then row tiles, so that
// neighbouring blocks read neighbouring row segments). The block copies its tile (and, backward,
// the activation input's tile), its 64 rows of xr [n, r] and the tile's 128 columns of w into
// shared memory with cp.async, then:
//   1. the term: warp w forms rows 16 (w % 4) .. + 15 x columns 64 (w / 4) .. + 63 of
//      xr w^T (forward, w = B [f, r]) or xr w (backward, w = A [r, f]) with mma.sync, r / 16
//      steps of k, and adds s times it into the tile where its accumulators lie (the C
//      fragment's rows g, g + 8 and columns 2t, 2t + 1 of each 8-column block: distinct banks
//      at the tile's 272-byte row pitch), rounding to bf16 as a stored tensor would be;
//   2. the activation: each thread takes its 16-byte pieces of the tile (the copy's mapping),
//      forward stores pre (the summed tile) and act(pre), backward (dy + term) act'(x), a GLU's
//      backward d u act'(g) and d act(g) (d = dy + term).
// No pipeline: several blocks an SM (27-58 KB of shared memory each) overlap one block's copies
// with another's arithmetic. The product is 2 r flops a value, far below the tensor cores' rate;
// the pass is bound by its bytes (forward reads pre and writes pre and y, backward reads dy and
// x and writes dx), which is the activation's own pass plus, forward, the write of pre that the
// base product no longer makes twice.
#include <type_traits>

#include "ops/cuda/activation.cuh"
#include "ops/cuda/cuda_common.h"
#include "ops/cuda/lora_act.h"
#include "ops/cuda/lora_tiles.cuh"
#include "ops/cuda/operand.cuh"
#include "ops/cuda/tensor_core.cuh"

namespace et::cuda {

namespace {

using namespace lora_tiles;

constexpr int kForward = static_cast<int>(LoraActMode::Forward);
constexpr int kGluBackward = static_cast<int>(LoraActMode::GluBackward);

// Tiles of the [n, f] tensors a mode reads: pre; dy and x; dy, g and u.
__host__ __device__ constexpr int wide_tiles(int mode) {
  return mode + 1;
}

// Shared memory of a block: the wide tiles, xr's rows [64][r + 8], and w's share: B's 128 rows
// [128][r + 8] (forward) or A's r rows of 128 columns [r][136] (backward).
template <int R, int kMode>
constexpr size_t lora_act_smem_bytes() {
  return sizeof(__nv_bfloat16) *
         (size_t{wide_tiles(kMode)} * kTile * kGld + size_t{kTile} * padded_rank(R) +
          (kMode == kForward ? size_t{kCols} * padded_rank(R) : size_t{R} * kGld));
}

template <int R, int A, int kMode>
__global__ void __launch_bounds__(kThreads) lora_act_kernel(LoraActArgs a) {
  constexpr bool kBackward = kMode != kForward;
  constexpr int kUl = padded_rank(R);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // [wide_tiles][kTile][kGld]: the tile the term goes into (pre, or dy), then x (g) and u
  auto* ts = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* xs = ts + kTile * kGld;
  __nv_bfloat16* us = xs + kTile * kGld;
  __nv_bfloat16* rs = ts + wide_tiles(kMode) * kTile * kGld;  // [kTile][kUl]: xr's rows
  __nv_bfloat16* ws = rs + kTile * kUl;                       // B [kCols][kUl] or A [R][kGld]
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int col0 = blockIdx.x * kCols;

  if constexpr (kBackward) {
    load_tile_async(ts, a.dy, a.n, a.f, a.f, row0, col0, tid);
    load_tile_async(xs, a.pre, a.n, a.f, a.ld, row0, col0, tid);
    if constexpr (kMode == kGluBackward) load_tile_async(us, a.up, a.n, a.f, a.ld, row0, col0, tid);
  } else {
    load_tile_async(ts, a.pre, a.n, a.f, a.ld, row0, col0, tid);
  }
  load_rank_rows_async<R, kTile>(rs, a.xr, a.n, row0, tid);
  if constexpr (kBackward)
    load_tile_async<R>(ws, a.w, R, a.f, a.f, 0, col0, tid);  // A's r rows, the tile's columns
  else
    load_rank_rows_async<R, kCols>(ws, a.w, a.f, col0, tid);  // B's rows for the tile's columns
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  const int wr = 16 * (warp % 4), wc = 64 * (warp / 4);
  float acc[8][4] = {};  // the term at rows wr + g (+ 8), columns wc + 8 nb + 2t (+ 1)
#pragma unroll
  for (int k0 = 0; k0 < R; k0 += 16) {
    uint32_t af[4];
    ldsm_x4(af, a_addr(rs, kUl, wr, k0, lane));  // xr rows wr.., ranks k0..
#pragma unroll
    for (int nb = 0; nb < 8; nb += 2) {
      uint32_t bf[4];
      if constexpr (kBackward)
        ldsm_x4_t(bf, b_addr(ws, kGld, k0, wc + 8 * nb, lane));  // A: ranks k0.., columns
      else
        ldsm_x4(bf, bt_addr(ws, kUl, wc + 8 * nb, k0, lane));  // B^T: ranks k0.., columns
      mma16816(acc[nb], af, bf[0], bf[1]);
      mma16816(acc[nb + 1], af, bf[2], bf[3]);
    }
  }
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int nb = 0; nb < 8; ++nb)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      auto* p =
          reinterpret_cast<__nv_bfloat162*>(ts + (wr + g + 8 * half) * kGld + wc + 8 * nb + 2 * t);
      const float2 v = __bfloat1622float2(*p);
      *p = __floats2bfloat162_rn(v.x + a.scale * acc[nb][2 * half],
                                 v.y + a.scale * acc[nb][2 * half + 1]);
    }
  __syncthreads();

#pragma unroll
  for (int k = 0; k < kPieces; ++k) {
    const int row = piece_row(tid, k), c8 = piece_col(tid, k);
    if (row0 + row >= a.n || col0 + c8 >= a.f) continue;
    const int64_t at = (row0 + row) * a.ld + col0 + c8;
    // the forward's y may have its own row pitch
    const int64_t y_at = kBackward || !a.ldy ? at : (row0 + row) * a.ldy + col0 + c8;
    float v[8];
    load_bf16x8(ts + row * kGld + c8, v);
    if constexpr (kMode == kGluBackward) {
      float x[8], u[8], du[8];
      load_bf16x8(xs + row * kGld + c8, x);
      load_bf16x8(us + row * kGld + c8, u);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        du[e] = act_f(A, x[e]) * v[e];
        v[e] *= act_df(A, x[e]) * u[e];
      }
      store_bf16x8(a.y2 + at, du);
    } else if constexpr (kBackward) {
      float x[8];
      load_bf16x8(xs + row * kGld + c8, x);
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] *= act_df(A, x[e]);
    } else {
      store_bf16x8(a.pre + at, v);
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = act_f(A, v[e]);
    }
    store_bf16x8(a.y + y_at, v);
  }
}

template <int R>
void launch(const LoraActArgs& a) {
  const auto run = [&](auto act, auto mode) {
    constexpr int kMode = decltype(mode)::value;
    auto kernel = lora_act_kernel<R, decltype(act)::value, kMode>;
    constexpr size_t smem = lora_act_smem_bytes<R, kMode>();
    allow_dynamic_smem(kernel, smem);
    const dim3 grid(static_cast<unsigned>((a.f + kCols - 1) / kCols),
                    static_cast<unsigned>((a.n + kTile - 1) / kTile));
    kernel<<<grid, kThreads, smem>>>(a);
    ET_LAUNCH_CHECK();
  };
  with_ffn_act(a.act, [&](auto act) {
    switch (a.mode) {
      case LoraActMode::Forward:
        run(act, std::integral_constant<int, kForward>{});
        break;
      case LoraActMode::Backward:
        run(act, std::integral_constant<int, static_cast<int>(LoraActMode::Backward)>{});
        break;
      case LoraActMode::GluBackward:
        run(act, std::integral_constant<int, kGluBackward>{});
        break;
    }
  });
}

}  // namespace

bool lora_act_takes(int act, int r) {
  return with_ffn_act(act, [](auto) {}) && (r == 16 || r == 32);
}

bool lora_act_supported(const LoraActArgs& a) {
  const bool glu = a.mode == LoraActMode::GluBackward;
  const bool operands = a.pre && a.y && a.xr && a.w && (a.mode == LoraActMode::Forward || a.dy) &&
                        (!glu || (a.up && a.y2));
  const auto aligned = [](const void* p) { return !p || vec8_aligned(p); };
  return operands && lora_act_takes(a.act, a.r) && a.f % 8 == 0 && a.f > 0 && a.ld >= a.f &&
         a.ld % 8 == 0 && (a.ldy == 0 || (a.ldy >= a.f && a.ldy % 8 == 0)) &&
         (a.n + kTile - 1) / kTile <= 65535 && aligned(a.pre) && aligned(a.up) && aligned(a.y) &&
         aligned(a.y2) && aligned(a.dy) && aligned(a.xr) && aligned(a.w);
}

void lora_act(const LoraActArgs& a) {
  ET_CHECK(lora_act_supported(a), "lora_act: unsupported operands (rank ", a.r, ", width ", a.f,
           ", ", a.n, " rows)");
  if (a.n == 0) return;
  if (a.r == 16)
    launch<16>(a);
  else
    launch<32>(a);
}

}  // namespace et::cuda
