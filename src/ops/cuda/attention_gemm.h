// Attention through cuBLAS strided-batched products, for head dimensions above the tensor-core
// kernel's 128 (see attention_gemm.cu). No relative-position bias.
#pragma once

#include <cublas_v2.h>

#include "ops/backend.h"

namespace et::cuda {

// Head dims above 128 without a relative bias, unless EMBEDTUNE_ATTENTION=scalar.
bool attention_use_gemm(const AttentionArgs& a);
// Bytes of scratch memory both passes need for `a` (scores of the longest sequence).
size_t attention_gemm_workspace(const AttentionArgs& a);
// Both passes handle only the sequences of at least `min_len` tokens (their rows of the
// outputs); the caller covers the others.
// q, k, v, out: fp32 or bf16 (`bf16`); lse [T, heads] fp32.
void attention_forward_gemm(cublasHandle_t blas, const AttentionArgs& a, const void* q,
                            const void* k, const void* v, void* out, bool bf16, float* lse,
                            void* workspace, int min_len);
// dq, dk, dv: fp32, their rows overwritten; delta[t, h] = dO . O (attention_delta).
void attention_backward_gemm(cublasHandle_t blas, const AttentionArgs& a, const void* q,
                             const void* k, const void* v, const void* dout, bool bf16,
                             const float* lse, const float* delta, float* dq, float* dk, float* dv,
                             void* workspace, int min_len);

}  // namespace et::cuda
