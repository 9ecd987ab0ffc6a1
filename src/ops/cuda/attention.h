// Variable-length attention kernels (fp32). See attention.cu for the algorithm.
#pragma once

#include "ops/backend.h"

namespace et::cuda {

// Launch parameters shared by the attention kernels (attention.cu, attention_tc.cu).
struct AttnParams {
  int hq, hk, d, group;
  int64_t qs, ks;  // row strides of q/out/dq and of k/v/dk/dv
  // The tensor-core kernels' own row strides (AttnStrides) where tensors are views of wider
  // buffers: out, dO and dQ (os), dK (dks) and dV (dvs); qs and ks are then q's and k/v's.
  int64_t os, dks, dvs;
  float scale;
  int causal, window;
  const float* bias;  // MPNet relative bias table [buckets, hq] or null
  int buckets, max_distance;
  int dkv_atomic;  // dK/dV rows receive several heads' contributions (grouped-query attention)
  // Dropout on the probabilities (AttentionArgs::dropout; dropout_mask.h) at row = token * hq +
  // head, col = key position. `dropout` is 0 when off.
  int dropout;
  DropoutMask drop;
};
// Checks the head layout and fills the parameters.
AttnParams make_attn_params(const AttentionArgs& a);

void attention_forward(const AttentionArgs& a, const float* q, const float* k, const float* v,
                       float* out, float* lse, const int32_t* tiles, int n_tiles,
                       const int32_t* cu_seqlens);
void attention_backward(const AttentionArgs& a, const float* q, const float* k, const float* v,
                        const float* out, const float* lse, const float* dout, float* dq, float* dk,
                        float* dv, float* d_rel_bias, float* delta, const int32_t* tiles,
                        int n_tiles, const int32_t* cu_seqlens);
// Row strides (elements) of the tensor-core kernels' operands, which may be column views of wider
// buffers (Tensor::pitch): q; k and v (one stride); out (the forward's) or dO and dQ (the
// backward's); dK; dV. ModernBERT's q, k, v lie in its fused projection's output, its dK and
// dV in that of the gradient; an output projection's input buffer holds the forward's out.
struct AttnStrides {
  int64_t q, kv, out, dk, dv;
};
// Tensor-core path (attention_tc.cu): head_dim 16/32/64/128/256, relative-bias tables of at
// most 64 buckets. q, k, v, dout, out, dk and dv are fp32 or bf16
// (`bf16` flag); lse, delta fp32. The backward writes fp32 dq (zeroed by the caller; atomic adds),
// dk and dv (plain stores: one block sums the whole group of query heads of its key/value head).
bool attention_tc_supported(const AttentionArgs& a);
// Query rows per block of the tensor-core forward (its `tiles` step by this many rows; the
// backward's by kAttnTileRows).
int attention_tc_forward_rows(int head_dim);
void attention_forward_tc(const AttentionArgs& a, const AttnStrides& st, const void* q,
                          const void* k, const void* v, void* out, bool bf16, float* lse,
                          const int32_t* tiles, int n_tiles, const int32_t* cu_seqlens);
void attention_backward_tc(const AttentionArgs& a, const AttnStrides& st, const void* q,
                           const void* k, const void* v, const void* dout, bool bf16,
                           const float* lse, const float* delta, float* dq, void* dk, void* dv,
                           float* d_rel_bias, const int32_t* tiles, int n_tiles,
                           const int32_t* cu_seqlens);
// delta[t, h] = dO[t, h, :] . O[t, h, :] for fp32 or bf16 tensors; O's rows ldo apart (>= heads
// head_dim), dO's contiguous.
void attention_delta(const void* out, int64_t ldo, const void* dout, bool bf16, float* delta,
                     int64_t rows, int heads, int head_dim);
// Set EMBEDTUNE_ATTENTION=scalar to force the fp32 CUDA-core kernels, =gemm the cuBLAS path
// for head dims above 128 (for comparisons).
bool attention_use_tc(const AttentionArgs& a);

// Rows per work tile; `tiles` holds (sequence, first row) pairs covering every sequence.
constexpr int kAttnTileRows = 64;

}  // namespace et::cuda
