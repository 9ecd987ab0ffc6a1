// Tiles of a LoRA kernel's wide operand (an [n, cols] activation or gradient, bf16) in shared
// memory, and the rank-r rows beside them: the layouts the LoRA kernels (lora_grad.cu,
// lora_act.cu) share.
//
// A tile is 64 rows x 128 columns, each row padded to 136 bf16 (272 bytes, 68 words: the eight
// rows an ldmatrix reads, and the eight rows of an mma fragment's C values, fall in distinct
// banks). A block of 256 threads copies it 16 bytes a thread at a time, four pieces a thread:
// piece p = tid + k 256 is row p / 16, columns 8 (p % 16) .. + 7.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "ops/cuda/tensor_core.cuh"

namespace et::cuda::lora_tiles {

constexpr int kTile = 64;                              // rows of a tile
constexpr int kCols = 128;                             // columns of a tile
constexpr int kGld = kCols + 8;                        // padded row of a tile
constexpr int kThreads = 256;                          // threads of a block (8 warps)
constexpr int kPieces = kTile * kCols / 8 / kThreads;  // 16-byte pieces of a tile per thread

// Padded row of a rank-r tile ([rows][r] bf16): r + 8, so that the eight rows an ldmatrix
// reads hit distinct banks.
__host__ __device__ constexpr int padded_rank(int r) {
  return r + 8;
}

// Row and column inside a tile of thread tid's k-th piece.
__device__ __forceinline__ int piece_row(int tid, int k) {
  return (tid + k * kThreads) / (kCols / 8);
}
__device__ __forceinline__ int piece_col(int tid, int k) {
  return ((tid + k * kThreads) % (kCols / 8)) * 8;
}

// Rows [row0, row0 + kRows) x columns [col0, col0 + kCols) of a row-major [n, cols] bf16
// matrix with row pitch ld into a padded tile, one cp.async per piece (zeros past n and past
// cols; cols a multiple of 8). kRows = 64, or fewer (a multiple of 16: a rank-r factor's rows).
template <int kRows = kTile>
__device__ __forceinline__ void load_tile_async(__nv_bfloat16* dst, const __nv_bfloat16* src,
                                                int64_t n, int cols, int64_t ld, int64_t row0,
                                                int col0, int tid) {
  static_assert(kRows * kCols % (8 * kThreads) == 0, "whole pieces for every thread");
#pragma unroll
  for (int k = 0; k < kRows * kCols / 8 / kThreads; ++k) {
    const int row = piece_row(tid, k), c8 = piece_col(tid, k);
    const int64_t grow = row0 + row;
    const bool ok = grow < n && col0 + c8 < cols;
    cp_async16(dst + row * kGld + c8, ok ? src + grow * ld + col0 + c8 : src, ok);
  }
}

// Rows [row0, row0 + kRows) of a row-major [n, R] bf16 matrix (a rank-r operand: xa, dxa, or
// B's rows) into shared memory as [kRows][padded_rank(R)], one cp.async per 16 bytes, zeros past
// n.
template <int R, int kRows>
__device__ __forceinline__ void load_rank_rows_async(__nv_bfloat16* dst, const __nv_bfloat16* src,
                                                     int64_t n, int64_t row0, int tid) {
  for (int p = tid; p < kRows * R / 8; p += kThreads) {
    const int row = p / (R / 8), c8 = (p % (R / 8)) * 8;
    const bool ok = row0 + row < n;
    cp_async16(dst + row * padded_rank(R) + c8, ok ? src + (row0 + row) * R + c8 : src, ok);
  }
}

}  // namespace et::cuda::lora_tiles
