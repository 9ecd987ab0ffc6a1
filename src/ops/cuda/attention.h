// Variable-length attention kernels (fp32). See attention.cu for the algorithm.
#pragma once

#include "ops/backend.h"

namespace et::cuda {

void attention_forward(const AttentionArgs& a, const float* q, const float* k, const float* v,
                       float* out, float* lse, const int32_t* tiles, int n_tiles,
                       const int32_t* cu_seqlens);
void attention_backward(const AttentionArgs& a, const float* q, const float* k, const float* v,
                        const float* out, const float* lse, const float* dout, float* dq,
                        float* dk, float* dv, float* d_rel_bias, float* delta,
                        const int32_t* tiles, int n_tiles, const int32_t* cu_seqlens);
// Rows per work tile; `tiles` holds (sequence, first row) pairs covering every sequence.
constexpr int kAttnTileRows = 64;

}  // namespace et::cuda
