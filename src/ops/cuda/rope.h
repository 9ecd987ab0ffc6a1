// Rotary position embedding on the GPU: the angle of pair i < D/2 at position p is
// p * theta^(-2i/D), computed in fp32 as transformers computes it. Kernels read cos and sin
// from a table by position (built once per theta and head dim, see rope_table_fill) for
// positions below its row count, and compute them for positions past it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

#include "ops/cuda/operand.cuh"

namespace et::cuda {

// [rows][half] (cos, sin) pairs; rows = 0 (cs null): every angle is computed.
struct RopeTable {
  const float2* cs;
  int rows;
};

constexpr int kRopeTableRows = 4096;  // positions covered by a table (4 MB at D = 256)

// cs [rows * half]: (cos, sin) of p * theta^(-2i/D) for p < rows, i < half.
void rope_table_fill(float2* cs, int rows, int half, float log_theta);

// Rotation of `heads` pairs (i, i + D/2) per token, from columns s0.. of src (row stride sc)
// to columns d0.. of dst (dc), in place when they are the same; sign -1 rotates back (the
// transpose, for gradients). Half 8-128 with 16-byte aligned bases and strides and offsets in
// multiples of 8 take 16-byte accesses and the table; others a thread per (token, pair).
void rope_columns_rows(Ptr src, int64_t sc, int64_t s0, Ptr dst, int64_t dc, int64_t d0,
                       const int32_t* pos, int64_t T, int heads, int half, float log_theta,
                       RopeTable table, float sign);

// Whether the fused per-head RMSNorm + RoPE kernels take head dim D = 2 half with these
// operands: half 8, 16, 32, 64 or 128 (half / 8 lanes a row), 16-byte aligned bases (8 columns
// per access).
bool rmsnorm_rope_fused(int half, std::initializer_list<const void*> operands);

// Per-head RMSNorm then RoPE (Qwen3's and Gemma3's q and k) over rows = T * heads rows of D:
//   forward:  y = rope(x rstd (w + offset)), rstd = 1 / sqrt(mean(x^2) + eps);
//   backward: g = rope^T(dy), dx = rstd (g w' - x rstd^2 mean(g w' x)), w' = w + offset,
//             dw += sum_rows g x rstd (dw may be null); dx's token rows ldx >= heads D apart (a
//             multiple of 8: a group's share of its output-gradient buffer, model/linear.h).
void rmsnorm_rope_forward_rows(Ptr x, const float* w, float offset, float eps, const int32_t* pos,
                               int heads, int half, float log_theta, RopeTable table, Ptr y,
                               float* rstd, int64_t rows);
void rmsnorm_rope_backward_rows(Ptr dy, Ptr x, const float* w, float offset, const float* rstd,
                                const int32_t* pos, int heads, int half, float log_theta,
                                RopeTable table, Ptr dx, int64_t ldx, float* dw, int64_t rows);

}  // namespace et::cuda
