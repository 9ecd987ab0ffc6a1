// Error checking and small device helpers shared by the CUDA kernels.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "core/error.h"

#define ET_CUDA(call)                                                                             \
  do {                                                                                            \
    cudaError_t err_ = (call);                                                                    \
    if (err_ != cudaSuccess)                                                                      \
      ::et::fail("CUDA error '", cudaGetErrorString(err_), "' in ", #call, " at ", __FILE__, ":", \
                 __LINE__);                                                                       \
  } while (0)

#define ET_CUBLAS(call)                                                                    \
  do {                                                                                     \
    cublasStatus_t st_ = (call);                                                           \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                      \
      ::et::fail("cuBLAS error ", static_cast<int>(st_), " (", cublasGetStatusString(st_), \
                 ") in ", #call, " at ", __FILE__, ":", __LINE__);                         \
  } while (0)

// After every launch: a launch error (bad configuration) is reported where it happened.
#define ET_LAUNCH_CHECK() ET_CUDA(cudaGetLastError())

namespace et::cuda {

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Calls f(std::integral_constant<int, v>) for the one of Values equal to v (kernels templated on
// a small int, instantiated for those values only); false, calling nothing, when v is not among
// them.
template <int... Values, typename F>
bool with_constant_in(int v, F&& f) {
  return ((v == Values && (f(std::integral_constant<int, Values>{}), true)) || ...);
}

// A kernel may use more than the default 48 KB of dynamic shared memory only after this.
template <typename K>
void allow_dynamic_smem(K kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    ET_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(bytes)));
}

// A grid-stride loop over i in [0, n) (device code; launch with blocks_for(n, threads)).
#define GRID_STRIDE(i, n)                                                                \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

inline unsigned blocks_for(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535LL * 32 ? 65535LL * 32 : b));
}

}  // namespace et::cuda
