// Device helpers shared by the tensor-core attention kernels (attention_tc.cu: forward,
// attention_tc_backward.cu: backward): visibility ranges of the causal/window masks, base-2
// exponentials, tile copies into shared memory, and the head-dim dispatch.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "ops/cuda/attention.h"
#include "ops/cuda/tensor_core.cuh"

namespace et::cuda::attn_tc {

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
template <int D, int ROWS = 64, int THREADS = NW * 32>
__device__ __forceinline__ void load_tile(bf16* dst, const float* src, int64_t stride, int col,
                                          int r0, int len) {
  for (int idx = threadIdx.x; idx < ROWS * D / 4; idx += THREADS) {
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
// The thread count is the compile-time THREADS of the launch, so each thread's 16-byte column
// c stays fixed and its rows step by THREADS / (D / 8): the loop unrolls into one pointer
// increment and one cp.async per row (a grid-stride loop over blockDim.x cost an index
// division, a multiply and a branch per copy).
template <int D, int ROWS = 64, int THREADS = NW * 32>
__device__ __forceinline__ void load_tile_async(bf16* dst, const bf16* src, int64_t stride, int col,
                                                int r0, int len) {
  constexpr int kChunks = D / 8, kRowStep = THREADS / kChunks;
  static_assert(THREADS % kChunks == 0, "a thread's column must not change between rows");
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
template <int D, int ROWS = 64, int THREADS = NW * 32>
__device__ __forceinline__ void load_tile_async(bf16* dst, const float* src, int64_t stride,
                                                int col, int r0, int len) {
  load_tile<D, ROWS, THREADS>(dst, src, stride, col, r0, len);
}

// Two adjacent columns of an accumulator row (p 8-byte aligned for fp32, 4-byte for bf16).
__device__ __forceinline__ void store2(float* p, float a, float b) {
  *reinterpret_cast<float2*>(p) = make_float2(a, b);
}
__device__ __forceinline__ void store2(bf16* p, float a, float b) {
  *reinterpret_cast<uint32_t*>(p) = pack2(a, b);
}

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

}  // namespace et::cuda::attn_tc
