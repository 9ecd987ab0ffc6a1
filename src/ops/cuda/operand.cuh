// Activation operands of either storage type, chosen at run time (activations are bf16 on the
// GPU, parameters and some gradients fp32). Kernels read and write through them in fp32; the
// dtype branch is uniform across a launch.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace et::cuda {

// 8 bf16 values <-> 8 floats in one 16-byte access (p 16-byte aligned).
__device__ __forceinline__ void load_bf16x8(const __nv_bfloat16* p, float* v) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float2 f = __bfloat1622float2(h[k]);
    v[2 * k] = f.x;
    v[2 * k + 1] = f.y;
  }
}
__device__ __forceinline__ void store_bf16x8(__nv_bfloat16* p, const float* v) {
  uint4 raw;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
  for (int k = 0; k < 4; ++k) h[k] = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]);
  *reinterpret_cast<uint4*>(p) = raw;
}

// v = w[c .. c + 7] + off: a norm's fp32 weights (or bias, off 0), two 16-byte reads through the
// read-only cache (w + c 16-byte aligned).
__device__ __forceinline__ void load_w8(const float* w, int c, float off, float* v) {
  const float4 a = __ldg(reinterpret_cast<const float4*>(w + c)),
               b = __ldg(reinterpret_cast<const float4*>(w + c) + 1);
  v[0] = a.x + off, v[1] = a.y + off, v[2] = a.z + off, v[3] = a.w + off;
  v[4] = b.x + off, v[5] = b.y + off, v[6] = b.z + off, v[7] = b.w + off;
}

struct Ptr {
  void* p;
  int bf;
  __device__ __forceinline__ float get(int64_t i) const {
    return bf ? __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i])
              : static_cast<const float*>(p)[i];
  }
  __device__ __forceinline__ void set(int64_t i, float v) const {
    if (bf)
      static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16(v);
    else
      static_cast<float*>(p)[i] = v;
  }
  // Elements i, i + 1 in one access; i even and the base 8-byte aligned.
  __device__ __forceinline__ void load2(int64_t i, float* v) const {
    const float2 f = bf ? __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(
                              static_cast<const __nv_bfloat16*>(p) + i))
                        : *reinterpret_cast<const float2*>(static_cast<const float*>(p) + i);
    v[0] = f.x;
    v[1] = f.y;
  }
  __device__ __forceinline__ void store2(int64_t i, const float* v) const {
    if (bf)
      *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(p) + i) =
          __floats2bfloat162_rn(v[0], v[1]);
    else
      *reinterpret_cast<float2*>(static_cast<float*>(p) + i) = make_float2(v[0], v[1]);
  }
  // Elements i .. i + 7 in one 16-byte access (bf16) or two (fp32); i a multiple of 8 and the
  // base 16-byte aligned (see vec8_aligned).
  __device__ __forceinline__ void load8(int64_t i, float* v) const {
    if (bf) {
      load_bf16x8(static_cast<const __nv_bfloat16*>(p) + i, v);
    } else {
      const float4* q = reinterpret_cast<const float4*>(static_cast<const float*>(p) + i);
      const float4 a = q[0], b = q[1];
      v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z,
      v[7] = b.w;
    }
  }
  __device__ __forceinline__ void store8(int64_t i, const float* v) const {
    if (bf) {
      store_bf16x8(static_cast<__nv_bfloat16*>(p) + i, v);
    } else {
      float4* q = reinterpret_cast<float4*>(static_cast<float*>(p) + i);
      q[0] = make_float4(v[0], v[1], v[2], v[3]);
      q[1] = make_float4(v[4], v[5], v[6], v[7]);
    }
  }
};

// Whether 8-element accesses apply: 16-byte aligned bases (a column slice of a wider tensor
// may not be).
inline bool vec8_aligned(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

}  // namespace et::cuda
