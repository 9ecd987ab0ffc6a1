// Attention through cuBLAS strided-batched products for head dimensions above 128 that the
// tensor-core kernels do not take (they take 256), or for all of them with
// EMBEDTUNE_ATTENTION=gemm. See attention_gemm.cu. No relative-position bias.
#pragma once

#include <cublas_v2.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "ops/backend.h"

namespace et::cuda {

// Head dims above 128 without a relative bias or dropout, unless EMBEDTUNE_ATTENTION=scalar.
bool attention_use_gemm(const AttentionArgs& a);

// Sequences of similar length run together, padded to the longest of their bucket, so that one
// strided-batched product covers a whole bucket per head. `direct`: every sequence of the
// bucket has exactly `len` tokens and they follow each other in memory, so the products read
// and write the tensors in place (no gather into padded buffers).
struct GemmBucket {
  int first = 0, count = 0;  // range of GemmAttentionPlan::starts / lens
  int len = 0;               // padded length
  bool direct = false;
};

struct GemmAttentionPlan {
  std::vector<int32_t> starts, lens;  // the sequences taken, bucket by bucket: [starts | lens]
  std::vector<GemmBucket> buckets;
  size_t workspace_bytes = 0;  // scratch the largest bucket needs
};

// Plans the sequences of at least `min_len` tokens (the caller covers the others); the buckets
// are cut so that no bucket's scratch exceeds `budget_bytes` (a single sequence may).
// `esize`: bytes per element of q, k, v (2 for bf16, 4 for fp32).
GemmAttentionPlan plan_attention_gemm(const AttentionArgs& a, int min_len, bool backward,
                                      size_t esize, size_t budget_bytes);

// `seq` (device): plan.starts followed by plan.lens. q, k, v, out: fp32 or bf16 (`bf16`);
// lse [T, heads] fp32; rows of the planned sequences are written.
void attention_forward_gemm(cublasHandle_t blas, const AttentionArgs& a,
                            const GemmAttentionPlan& plan, const int32_t* seq, const void* q,
                            const void* k, const void* v, void* out, bool bf16, float* lse,
                            void* workspace);
// dq, dk, dv: fp32, rows of the planned sequences overwritten; delta[t, h] = dO . O.
void attention_backward_gemm(cublasHandle_t blas, const AttentionArgs& a,
                             const GemmAttentionPlan& plan, const int32_t* seq, const void* q,
                             const void* k, const void* v, const void* dout, bool bf16,
                             const float* lse, const float* delta, float* dq, float* dk, float* dv,
                             void* workspace);

}  // namespace et::cuda
