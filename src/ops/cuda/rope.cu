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

// (cos, sin) of pairs i and i + 1 (i even): one 16-byte table read, or computed past the table.
__device__ __forceinline__ void rope_cs2(RopeTable t, int p, int i, int half, float log_theta,
                                         float* c, float* s) {
  if (p < t.rows) {
    const float4 v =
        __ldg(reinterpret_cast<const float4*>(t.cs + static_cast<int64_t>(p) * half + i));
    c[0] = v.x, s[0] = v.y, c[1] = v.z, s[1] = v.w;
  } else {
    const float2 a = rope_angle_cs(p, i, half, log_theta),
                 b = rope_angle_cs(p, i + 1, half, log_theta);
    c[0] = a.x, s[0] = a.y, c[1] = b.x, s[1] = b.y;
  }
}

__global__ void rope_table_kernel(float2* cs, int rows, int half, float log_theta) {
  GRID_STRIDE(k, static_cast<int64_t>(rows) * half) {
    cs[k] = rope_angle_cs(static_cast<int>(k / half), static_cast<int>(k % half), half, log_theta);
  }
}

// One thread per (token, i < D/2): the angle once, that pair rotated in every head.
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

// One warp per (token, head) row of D = 2 half: lane l holds the pairs (i, i + half) and
// (i + 1, i + 1 + half) for i = 2 l + 64 j, j < J = ceil(half / 64), two adjacent columns per
// access, so the rotation stays in registers.
template <int J>
__global__ void rmsnorm_rope_forward_kernel(Ptr x, const float* w, float offset, float eps,
                                            const int32_t* pos, int heads, int half,
                                            float log_theta, RopeTable table, Ptr y, float* rstd,
                                            int64_t rows) {
  const int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const int64_t base = r * 2 * half;
  float a[J][2], b[J][2], ss = 0;
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int i = 2 * lane + 64 * j;
    a[j][0] = a[j][1] = b[j][0] = b[j][1] = 0.0f;
    if (i >= half) continue;
    x.load2(base + i, a[j]);
    x.load2(base + half + i, b[j]);
    ss += a[j][0] * a[j][0] + a[j][1] * a[j][1] + b[j][0] * b[j][0] + b[j][1] * b[j][1];
  }
  const float rs = rsqrtf(warp_sum(ss) / (2 * half) + eps);
  const int p = pos[r / heads];
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int i = 2 * lane + 64 * j;
    if (i >= half) continue;
    float c[2], s[2], ya[2], yb[2];
    rope_cs2(table, p, i, half, log_theta, c, s);
    const float2 wa = __ldg(reinterpret_cast<const float2*>(w + i)),
                 wb = __ldg(reinterpret_cast<const float2*>(w + half + i));
    const float wav[2] = {wa.x + offset, wa.y + offset}, wbv[2] = {wb.x + offset, wb.y + offset};
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const float na = a[j][e] * rs * wav[e], nb = b[j][e] * rs * wbv[e];
      ya[e] = na * c[e] - nb * s[e];
      yb[e] = nb * c[e] + na * s[e];
    }
    y.store2(base + i, ya);
    y.store2(base + half + i, yb);
  }
  if (lane == 0) rstd[r] = rs;
}

// Same lane layout; rows visited by a grid-stride loop so that each lane keeps its dw sums in
// registers across rows (then once per block through shared memory).
template <int J>
__global__ void rmsnorm_rope_backward_kernel(Ptr dy, Ptr x, const float* w, float offset,
                                             const float* rstd, const int32_t* pos, int heads,
                                             int half, float log_theta, RopeTable table, Ptr dx,
                                             int64_t ldx, float* dw, int64_t rows) {
  extern __shared__ float acc[];  // [2 half]
  for (int c = threadIdx.x; c < 2 * half; c += blockDim.x) acc[c] = 0;
  __syncthreads();
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float wsa[J][2] = {}, wsb[J][2] = {};
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * warps + warp; r < rows;
       r += static_cast<int64_t>(gridDim.x) * warps) {
    const int64_t base = r * 2 * half;
    const int64_t dx_base = r / heads * ldx + r % heads * 2 * half;  // token r / heads's row
    const float rs = rstd[r];
    const int p = pos[r / heads];
    float ga[J][2], gb[J][2], xa[J][2], xb[J][2], wa[J][2], wb[J][2], dot = 0;
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int i = 2 * lane + 64 * j;
      for (int e = 0; e < 2; ++e)
        ga[j][e] = gb[j][e] = xa[j][e] = xb[j][e] = wa[j][e] = wb[j][e] = 0;
      if (i >= half) continue;
      float c[2], s[2], d1[2], d2[2];
      rope_cs2(table, p, i, half, log_theta, c, s);
      dy.load2(base + i, d1);
      dy.load2(base + half + i, d2);
      x.load2(base + i, xa[j]);
      x.load2(base + half + i, xb[j]);
      const float2 w1 = __ldg(reinterpret_cast<const float2*>(w + i)),
                   w2 = __ldg(reinterpret_cast<const float2*>(w + half + i));
      wa[j][0] = w1.x + offset, wa[j][1] = w1.y + offset;
      wb[j][0] = w2.x + offset, wb[j][1] = w2.y + offset;
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        ga[j][e] = d1[e] * c[e] + d2[e] * s[e];
        gb[j][e] = d2[e] * c[e] - d1[e] * s[e];
        dot += ga[j][e] * wa[j][e] * xa[j][e] + gb[j][e] * wb[j][e] * xb[j][e];
        wsa[j][e] += ga[j][e] * xa[j][e] * rs;
        wsb[j][e] += gb[j][e] * xb[j][e] * rs;
      }
    }
    dot = warp_sum(dot) / (2 * half) * rs * rs;
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int i = 2 * lane + 64 * j;
      if (i >= half) continue;
      float da[2], db[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        da[e] = rs * (ga[j][e] * wa[j][e] - xa[j][e] * dot);
        db[e] = rs * (gb[j][e] * wb[j][e] - xb[j][e] * dot);
      }
      dx.store2(dx_base + i, da);
      dx.store2(dx_base + half + i, db);
    }
  }
  if (dw) {
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int i = 2 * lane + 64 * j;
      if (i >= half) continue;
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        atomicAdd(&acc[i + e], wsa[j][e]);
        atomicAdd(&acc[half + i + e], wsb[j][e]);
      }
    }
  }
  __syncthreads();
  if (dw)
    for (int c = threadIdx.x; c < 2 * half; c += blockDim.x) atomicAdd(&dw[c], acc[c]);
}

template <typename F>
void dispatch_pairs(int half, F&& f) {
  if (half <= 64)
    f(std::integral_constant<int, 1>{});
  else
    f(std::integral_constant<int, 2>{});
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
                       float sign) {
  if (T == 0) return;
  rope_columns_kernel<<<blocks_for(T * half, 256), 256>>>(src, sc, s0, dst, dc, d0, pos, T, heads,
                                                          half, log_theta, sign);
  ET_LAUNCH_CHECK();
}

bool rmsnorm_rope_fused(int half, std::initializer_list<const void*> operands) {
  if (half <= 0 || half % 2 != 0 || half > 128) return false;
  for (const void* p : operands)
    if (reinterpret_cast<uintptr_t>(p) % 8 != 0) return false;
  return true;
}

void rmsnorm_rope_forward_rows(Ptr x, const float* w, float offset, float eps, const int32_t* pos,
                               int heads, int half, float log_theta, RopeTable table, Ptr y,
                               float* rstd, int64_t rows) {
  if (rows == 0) return;
  dispatch_pairs(half, [&](auto j) {
    rmsnorm_rope_forward_kernel<decltype(j)::value><<<blocks_for(rows * 32, 256), 256>>>(
        x, w, offset, eps, pos, heads, half, log_theta, table, y, rstd, rows);
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
  dispatch_pairs(half, [&](auto j) {
    rmsnorm_rope_backward_kernel<decltype(j)::value><<<blocks, 256, sizeof(float) * 2 * half>>>(
        dy, x, w, offset, rstd, pos, heads, half, log_theta, table, dx, ldx, dw, rows);
  });
  ET_LAUNCH_CHECK();
}

}  // namespace et::cuda
