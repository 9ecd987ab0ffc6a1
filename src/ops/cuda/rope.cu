#include "ops/cuda/rope.h"

#include <algorithm>

#include "ops/cuda/cuda_common.h"

namespace et::cuda {

namespace {

// (cos, sin) of p * theta^(-2i/D), D = 2 half: fp32 as in transformers' rotary embedding
// (inv_freq = theta^(-2i/D) first, then the product with the position).
__device__ __forceinline__ float2 rope_angle_cs(int p, int i, int half, float log_theta) {
  float sn, cs;
  sincosf(static_cast<float>(p) * expf(-log_theta * (2.0f * i) / (2 * half)), &sn, &cs);
  return make_float2(cs, sn);
}

// (cos, sin) of pairs i .. i + 7 (i a multiple of 8): four 16-byte table reads, or computed
// past the table.
__device__ __forceinline__ void rope_cs8(RopeTable t, int p, int i, int half, float log_theta,
                                         float* c, float* s) {
  if (p < t.rows) {
    const float4* q = reinterpret_cast<const float4*>(t.cs + static_cast<int64_t>(p) * half + i);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float4 v = __ldg(q + k);
      c[2 * k] = v.x, s[2 * k] = v.y, c[2 * k + 1] = v.z, s[2 * k + 1] = v.w;
    }
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float2 a = rope_angle_cs(p, i + e, half, log_theta);
      c[e] = a.x, s[e] = a.y;
    }
  }
}

// Sum over the L lanes of a row (aligned groups of L lanes; every lane of the warp takes part).
template <int L>
__device__ __forceinline__ float row_sum(float v) {
#pragma unroll
  for (int o = L / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__global__ void rope_table_kernel(float2* cs, int rows, int half, float log_theta) {
  GRID_STRIDE(k, static_cast<int64_t>(rows) * half) {
    cs[k] = rope_angle_cs(static_cast<int>(k / half), static_cast<int>(k % half), half, log_theta);
  }
}

// One thread per (token, i < D/2): the angle once, that pair rotated in every head. The path for
// operands rope_columns_vec cannot take (head dims or column offsets off its 16-byte grid).
__global__ void rope_columns_kernel(Ptr src, int64_t sc, int64_t s0, Ptr dst, int64_t dc,
                                    int64_t d0, const int32_t* pos, int64_t T, int heads, int half,
                                    float log_theta, float sign) {
  GRID_STRIDE(k, T * half) {
    const int i = static_cast<int>(k % half);
    const int64_t t = k / half;
    const float2 a = rope_angle_cs(pos[t], i, half, log_theta);
    const float cs = a.x, sn = sign * a.y;
    for (int h = 0; h < heads; ++h) {
      const int64_t in = t * sc + s0 + h * 2 * half, out = t * dc + d0 + h * 2 * half;
      const float x1 = src.get(in + i), x2 = src.get(in + i + half);
      dst.set(out + i, x1 * cs - x2 * sn);
      dst.set(out + i + half, x2 * cs + x1 * sn);
    }
  }
}

// The same rotation in rmsnorm_rope_forward_kernel's lane layout: L = half / 8 lanes per
// (token, head) row r (token r / heads), 8 pairs a lane, every access 16 bytes (bf16), cos and
// sin from the table. The scalar kernel above moved 2 bytes per access and computed every angle
// (ModernBERT's q/k rotations ran at about 65% of DRAM bandwidth). In place when src == dst:
// each lane reads its values before writing them.
template <int L>
__global__ void rope_columns_vec(Ptr src, int64_t sc, int64_t s0, Ptr dst, int64_t dc, int64_t d0,
                                 const int32_t* pos, int heads, int half, float log_theta,
                                 RopeTable table, float sign, int64_t rows) {
  const int lane = threadIdx.x % 32, i = 8 * (lane % L);
  const int64_t r =
      (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32 * (32 / L) + lane / L;
  if (r >= rows) return;
  const int64_t t = r / heads, h = r % heads;
  const int64_t in = t * sc + s0 + h * 2 * half, out = t * dc + d0 + h * 2 * half;
  float a[8], b[8], c[8], s[8], ya[8], yb[8];
  src.load8(in + i, a);
  src.load8(in + half + i, b);
  rope_cs8(table, pos[t], i, half, log_theta, c, s);
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const float sn = sign * s[e];
    ya[e] = a[e] * c[e] - b[e] * sn;
    yb[e] = b[e] * c[e] + a[e] * sn;
  }
  dst.store8(out + i, ya);
  dst.store8(out + half + i, yb);
}

// L = half / 8 lanes per (token, head) row of D = 2 half, 32 / L rows a warp: lane l of a row
// holds the pairs (i + e, i + e + half), e < 8, for i = 8 (l % L), so that the rotation stays
// in registers and every access is 16 bytes (bf16). The lanes past the last row take part in
// the row sums' shuffles and store nothing.
template <int L>
__global__ void rmsnorm_rope_forward_kernel(Ptr x, const float* w, float offset, float eps,
                                            const int32_t* pos, int heads, int half,
                                            float log_theta, RopeTable table, Ptr y, float* rstd,
                                            int64_t rows) {
  const int lane = threadIdx.x % 32, i = 8 * (lane % L);
  const int64_t r =
      (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32 * (32 / L) + lane / L;
  const bool live = r < rows;
  const int64_t base = r * 2 * half;
  float a[8] = {}, b[8] = {}, ss = 0;
  if (live) {
    x.load8(base + i, a);
    x.load8(base + half + i, b);
  }
#pragma unroll
  for (int e = 0; e < 8; ++e) ss += a[e] * a[e] + b[e] * b[e];
  const float rs = rsqrtf(row_sum<L>(ss) / (2 * half) + eps);
  if (!live) return;
  float c[8], s[8], wa[8], wb[8], ya[8], yb[8];
  rope_cs8(table, pos[r / heads], i, half, log_theta, c, s);
  load_w8(w, i, offset, wa);
  load_w8(w, half + i, offset, wb);
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const float na = a[e] * rs * wa[e], nb = b[e] * rs * wb[e];
    ya[e] = na * c[e] - nb * s[e];
    yb[e] = nb * c[e] + na * s[e];
  }
  y.store8(base + i, ya);
  y.store8(base + half + i, yb);
  if (i == 0) rstd[r] = rs;
}

// Same lane layout; each warp visits groups of 32 / L rows by a grid-stride loop, so that each
// lane keeps its dw sums in registers across rows (then once per block through shared memory).
template <int L>
__global__ void rmsnorm_rope_backward_kernel(Ptr dy, Ptr x, const float* w, float offset,
                                             const float* rstd, const int32_t* pos, int heads,
                                             int half, float log_theta, RopeTable table, Ptr dx,
                                             int64_t ldx, float* dw, int64_t rows) {
  extern __shared__ float acc[];  // [2 half]
  for (int c = threadIdx.x; c < 2 * half; c += blockDim.x) acc[c] = 0;
  __syncthreads();
  constexpr int kRows = 32 / L;  // rows a warp
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int i = 8 * (lane % L);
  float wa[8], wb[8], wsa[8] = {}, wsb[8] = {};
  load_w8(w, i, offset, wa);
  load_w8(w, half + i, offset, wb);
  for (int64_t r0 = (static_cast<int64_t>(blockIdx.x) * warps + warp) * kRows; r0 < rows;
       r0 += static_cast<int64_t>(gridDim.x) * warps * kRows) {
    const int64_t r = r0 + lane / L;
    const bool live = r < rows;
    const int64_t base = r * 2 * half;
    float ga[8] = {}, gb[8] = {}, xa[8] = {}, xb[8] = {}, dot = 0, rs = 0;
    if (live) {
      float c[8], s[8], d1[8], d2[8];
      rs = rstd[r];
      rope_cs8(table, pos[r / heads], i, half, log_theta, c, s);
      dy.load8(base + i, d1);
      dy.load8(base + half + i, d2);
      x.load8(base + i, xa);
      x.load8(base + half + i, xb);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        ga[e] = d1[e] * c[e] + d2[e] * s[e];
        gb[e] = d2[e] * c[e] - d1[e] * s[e];
        dot += ga[e] * wa[e] * xa[e] + gb[e] * wb[e] * xb[e];
        wsa[e] += ga[e] * xa[e] * rs;
        wsb[e] += gb[e] * xb[e] * rs;
      }
    }
    dot = row_sum<L>(dot) / (2 * half) * rs * rs;
    if (!live) continue;
    float da[8], db[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      da[e] = rs * (ga[e] * wa[e] - xa[e] * dot);
      db[e] = rs * (gb[e] * wb[e] - xb[e] * dot);
    }
    const int64_t dx_base = r / heads * ldx + r % heads * 2 * half;  // token r / heads's row
    dx.store8(dx_base + i, da);
    dx.store8(dx_base + half + i, db);
  }
  if (dw) {
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      atomicAdd(&acc[i + e], wsa[e]);
      atomicAdd(&acc[half + i + e], wsb[e]);
    }
  }
  __syncthreads();
  if (dw)
    for (int c = threadIdx.x; c < 2 * half; c += blockDim.x) atomicAdd(&dw[c], acc[c]);
}

// L = half / 8 lanes a row (half 8, 16, 32, 64 or 128: rmsnorm_rope_fused)
template <typename F>
void dispatch_lanes(int half, F&& f) {
  const bool built = with_constant_in<1, 2, 4, 8, 16>(half / 8, f);
  ET_CHECK(built, "rmsnorm_rope: head dim ", 2 * half, " has no kernel");
}

}  // namespace

void rope_table_fill(float2* cs, int rows, int half, float log_theta) {
  const int64_t n = static_cast<int64_t>(rows) * half;
  if (n == 0) return;
  rope_table_kernel<<<blocks_for(n, 256), 256>>>(cs, rows, half, log_theta);
  ET_LAUNCH_CHECK();
}

void rope_columns_rows(Ptr src, int64_t sc, int64_t s0, Ptr dst, int64_t dc, int64_t d0,
                       const int32_t* pos, int64_t T, int heads, int half, float log_theta,
                       RopeTable table, float sign) {
  if (T == 0) return;
  const bool vec = rmsnorm_rope_fused(half, {src.p, dst.p}) && sc % 8 == 0 && s0 % 8 == 0 &&
                   dc % 8 == 0 && d0 % 8 == 0;
  if (!vec) {
    rope_columns_kernel<<<blocks_for(T * half, 256), 256>>>(src, sc, s0, dst, dc, d0, pos, T, heads,
                                                            half, log_theta, sign);
    ET_LAUNCH_CHECK();
    return;
  }
  const int64_t rows = T * heads;
  dispatch_lanes(half, [&](auto l) {
    constexpr int L = decltype(l)::value;
    rope_columns_vec<L><<<blocks_for(rows * L, 256), 256>>>(src, sc, s0, dst, dc, d0, pos, heads,
                                                            half, log_theta, table, sign, rows);
  });
  ET_LAUNCH_CHECK();
}

bool rmsnorm_rope_fused(int half, std::initializer_list<const void*> operands) {
  if (half != 8 && half != 16 && half != 32 && half != 64 && half != 128) return false;
  for (const void* p : operands)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

void rmsnorm_rope_forward_rows(Ptr x, const float* w, float offset, float eps, const int32_t* pos,
                               int heads, int half, float log_theta, RopeTable table, Ptr y,
                               float* rstd, int64_t rows) {
  if (rows == 0) return;
  dispatch_lanes(half, [&](auto l) {
    rmsnorm_rope_forward_kernel<decltype(l)::value>
        <<<blocks_for(rows * decltype(l)::value, 256), 256>>>(x, w, offset, eps, pos, heads, half,
                                                              log_theta, table, y, rstd, rows);
  });
  ET_LAUNCH_CHECK();
}

void rmsnorm_rope_backward_rows(Ptr dy, Ptr x, const float* w, float offset, const float* rstd,
                                const int32_t* pos, int heads, int half, float log_theta,
                                RopeTable table, Ptr dx, int64_t ldx, float* dw, int64_t rows) {
  if (rows == 0) return;
  // At most 8 blocks per H100 SM (3-4 fit at once at 53-68 registers a thread): equal shares of
  // rows per block, and few dw partial sums to add
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((rows + 7) / 8, 1056));
  dispatch_lanes(half, [&](auto l) {
    rmsnorm_rope_backward_kernel<decltype(l)::value><<<blocks, 256, sizeof(float) * 2 * half>>>(
        dy, x, w, offset, rstd, pos, heads, half, log_theta, table, dx, ldx, dw, rows);
  });
  ET_LAUNCH_CHECK();
}

}  // namespace et::cuda
