// Matrix products with bf16 operands through cuBLASLt: fp32 accumulation, C in bf16 or fp32,
// and optionally the bias in the epilogue (CUBLASLT_EPILOGUE_BIAS: added to the fp32
// accumulator before the one rounding of C, so C is written once instead of being written by
// the product and then read and rewritten by a bias kernel). Bias-free products take the same
// path (one way to call the library; measured within 1% of cublasGemmEx, whose host cost per
// call is the same: bench/NOTES.md).
#pragma once

#include <cublasLt.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <tuple>

namespace et::cuda {

// One cuBLASLt descriptor set and chosen algorithm per problem (descriptors cost microseconds,
// a heuristic query 0.1-0.7 ms; a training step repeats its shapes, and real batches' token
// counts share one query per bucket: gemm_lt.cu, shape_bucket).
struct LtPlan {
  bool ok = false;  // false: cuBLASLt offers no algorithm for this case
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

// (m, n, k, trans_a, trans_b, lda, ldb, C is fp32, with bias, alignment of a, b, c in bytes)
using LtKey =
    std::tuple<int64_t, int64_t, int64_t, bool, bool, int64_t, int64_t, bool, bool, int, int, int>;

struct LtGemm {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;  // owned by the caller, at least workspace_bytes, 256-byte aligned
  size_t workspace_bytes = 0;
  std::mutex mu;
  std::map<LtKey, LtPlan> plans;                               // exact problems
  std::map<LtKey, std::optional<cublasLtMatmulAlgo_t>> algos;  // heuristic choice per bucket
};

void lt_gemm_init(LtGemm& g, void* workspace, size_t workspace_bytes);
void lt_gemm_destroy(LtGemm& g);

// Row-major C[m, n] = alpha * op(A) op(B) + beta * C (+ bias[n]); A, B bf16 with leading
// dimensions lda, ldb (elements), C [m, n] contiguous in bf16 or (c_f32) fp32, the bias (or
// null) bf16: cuBLASLt takes it in C's type and finds no algorithm for an fp32 bias with bf16
// C. Returns false, having done nothing, when cuBLASLt has no algorithm for the case.
bool lt_gemm(LtGemm& g, const void* a, bool trans_a, int64_t lda, const void* b, bool trans_b,
             int64_t ldb, void* c, bool c_f32, int64_t m, int64_t n, int64_t k, float alpha,
             float beta, const void* bias);

}  // namespace et::cuda
