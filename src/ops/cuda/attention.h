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
// Tensor-core path (attention_tc.cu), taken by the two functions above when it supports the
// shape: head_dim 16/32/64/128, relative-bias tables of at most 64 buckets.
bool attention_tc_supported(const AttentionArgs& a);
void attention_forward_tc(const AttentionArgs& a, const float* q, const float* k, const float* v,
                          float* out, float* lse, const int32_t* tiles, int n_tiles,
                          const int32_t* cu_seqlens);
void attention_backward_tc(const AttentionArgs& a, const float* q, const float* k, const float* v,
                           const float* lse, const float* dout, const float* delta, float* dq,
                           float* dk, float* dv, float* d_rel_bias, const int32_t* tiles,
                           int n_tiles, const int32_t* cu_seqlens);
// Set EMBEDTUNE_ATTENTION=scalar to force the fp32 CUDA-core kernels (for comparisons).
bool attention_use_tc(const AttentionArgs& a);

// Rows per work tile; `tiles` holds (sequence, first row) pairs covering every sequence.
constexpr int kAttnTileRows = 64;

}  // namespace et::cuda
