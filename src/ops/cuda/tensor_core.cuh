// Warp-level tensor-core and asynchronous-copy primitives shared by the CUDA kernels (PTX ISA:
// mma.sync m16n8k16 with bf16 inputs and fp32 accumulators, ldmatrix, cp.async; sm_80+).
//
// Fragment layouts (g = lane / 4, t = lane % 4):
//   A 16x16 (row-major): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B 16x8 (k x n):      b0 = (k 2t..2t+1, n g), b1 = (k 2t+8.., n g)
//   C 16x8 (fp32):       c0,c1 = (g, 2t..2t+1), c2,c3 = (g+8, 2t..2t+1)
// so the accumulators of two adjacent 16x8 tiles, packed to bf16, are exactly the A fragment
// of a following product (FlashAttention-2's register reuse).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace et::cuda {

// 16 bytes global -> shared, zero-filled when !valid (src must still be a valid address).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src),
               "r"(valid ? 16 : 0));
}
// 4 bytes global -> shared (for per-row statistics), zero-filled when !valid.
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
  uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src),
               "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldsm_x4(uint32_t* r, const __nv_bfloat16* p) {
  uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t* r, const __nv_bfloat16* p) {
  uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void mma16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// dst[0] += a, dst[1] += b (fp32, global memory, dst 8-byte aligned): one vector reduction
// on sm_90 (PTX ISA 8.1, red.global.add.v2.f32), two scalar ones before.
__device__ __forceinline__ void atomic_add2(float* dst, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(dst), "f"(a), "f"(b) : "memory");
#else
  atomicAdd(dst, a);
  atomicAdd(dst + 1, b);
#endif
}
// Named barrier `id` (1-15; 0 is __syncthreads') over `threads` threads of the block (a
// multiple of 32): each waits until all have arrived, and their earlier shared-memory writes
// are then visible to one another (PTX ISA, bar / barrier: memory ordering), so a few warps can
// trade tiles without stopping the rest of the block.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// ldmatrix addresses (one row pointer per lane):
// A fragment at (r0, c0) of a row-major [m][k] tile (ldsm_x4).
__device__ __forceinline__ const __nv_bfloat16* a_addr(const __nv_bfloat16* tile, int ld, int r0,
                                                       int c0, int lane) {
  return tile + (r0 + (lane % 16)) * ld + c0 + (lane / 16) * 8;
}
// A fragment at (m0, k0) from a tile stored [k][m] (A = tile^T; ldsm_x4_t).
__device__ __forceinline__ const __nv_bfloat16* at_addr(const __nv_bfloat16* tile, int ld, int k0,
                                                        int m0, int lane) {
  return tile + (k0 + (lane % 8) + (lane / 16) * 8) * ld + m0 + ((lane / 8) % 2) * 8;
}
// B fragments of two adjacent n-blocks [n0, n0+16) from a tile stored [n][k] (B = tile^T;
// ldsm_x4).
__device__ __forceinline__ const __nv_bfloat16* bt_addr(const __nv_bfloat16* tile, int ld, int n0,
                                                        int k0, int lane) {
  return tile + (n0 + (lane % 8) + (lane / 16) * 8) * ld + k0 + ((lane / 8) % 2) * 8;
}
// B fragments of two adjacent n-blocks from a tile stored [k][n] (ldsm_x4_t).
__device__ __forceinline__ const __nv_bfloat16* b_addr(const __nv_bfloat16* tile, int ld, int k0,
                                                       int n0, int lane) {
  return tile + (k0 + (lane % 8) + ((lane / 8) % 2) * 8) * ld + n0 + (lane / 16) * 8;
}

}  // namespace et::cuda
