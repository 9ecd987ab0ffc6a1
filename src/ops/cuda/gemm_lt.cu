#include "ops/cuda/gemm_lt.h"

#include <cstdint>

#include "ops/cuda/cuda_common.h"

namespace et::cuda {
namespace {

// The largest power of two (at most 256) dividing the address: cuBLASLt picks kernels by the
// alignment it is promised, and row slices of activations are not always 256-byte aligned.
int alignment_of(const void* p) {
  auto v = reinterpret_cast<uintptr_t>(p);
  int a = 1;
  while (a < 256 && v % (2 * a) == 0) a *= 2;
  return a;
}

template <typename T>
void set_desc(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr, const T& v) {
  ET_CUBLAS(cublasLtMatmulDescSetAttribute(d, attr, &v, sizeof(v)));
}

void destroy_plan(LtPlan& p) {
  if (p.a) cublasLtMatrixLayoutDestroy(p.a);
  if (p.b) cublasLtMatrixLayoutDestroy(p.b);
  if (p.c) cublasLtMatrixLayoutDestroy(p.c);
  if (p.desc) cublasLtMatmulDescDestroy(p.desc);
  p = LtPlan{};
}

// Row-major C = op(A) op(B) is column-major C^T[n, m] = op(B)^T op(A)^T: cuBLASLt's "A" is our
// B and its "B" our A; the bias (one value per column of row-major C) runs along the rows of the
// column-major result, which is what CUBLASLT_EPILOGUE_BIAS broadcasts. A failing setup call
// releases what was created before the error propagates.
LtPlan make_plan(LtGemm& g, const LtKey& key) {
  const auto [m, n, k, ta, tb, lda, ldb, c_f32, with_bias, align_a, align_b, align_c] = key;
  LtPlan p;
  cublasLtMatmulPreference_t pref = nullptr;
  try {
    ET_CUBLAS(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    set_desc(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, tb ? CUBLAS_OP_T : CUBLAS_OP_N);
    set_desc(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, ta ? CUBLAS_OP_T : CUBLAS_OP_N);
    if (with_bias) set_desc(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_BIAS);
    // stored shapes (column-major): op(X) = X when not transposed
    ET_CUBLAS(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, tb ? k : n, tb ? n : k, ldb));
    ET_CUBLAS(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, ta ? m : k, ta ? k : m, lda));
    ET_CUBLAS(cublasLtMatrixLayoutCreate(&p.c, c_f32 ? CUDA_R_32F : CUDA_R_16BF, n, m, n));
    ET_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t ws = g.workspace_bytes;
    ET_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                   &ws, sizeof(ws)));
    const uint32_t al[3] = {static_cast<uint32_t>(align_b), static_cast<uint32_t>(align_a),
                            static_cast<uint32_t>(align_c)};
    ET_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                   &al[0], sizeof(uint32_t)));
    ET_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                   &al[1], sizeof(uint32_t)));
    for (auto attr :
         {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
      ET_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, attr, &al[2], sizeof(uint32_t)));
  } catch (...) {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    destroy_plan(p);
    throw;
  }
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(g.handle, p.desc, p.a, p.b, p.c, p.c, pref, 1,
                                                     &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  p.ok = st == CUBLAS_STATUS_SUCCESS && found > 0;
  if (p.ok) p.algo = result.algo;
  return p;
}

void clear_plans(LtGemm& g) {
  for (auto& [key, p] : g.plans) destroy_plan(p);
  g.plans.clear();
}

}  // namespace

void lt_gemm_init(LtGemm& g, void* workspace, size_t workspace_bytes) {
  ET_CUBLAS(cublasLtCreate(&g.handle));
  g.workspace = workspace;
  g.workspace_bytes = workspace_bytes;
}

void lt_gemm_destroy(LtGemm& g) {
  clear_plans(g);
  if (g.handle) cublasLtDestroy(g.handle);
  g.handle = nullptr;
}

bool lt_gemm(LtGemm& g, const void* a, bool trans_a, int64_t lda, const void* b, bool trans_b,
             int64_t ldb, void* c, bool c_f32, int64_t m, int64_t n, int64_t k, float alpha,
             float beta, const void* bias) {
  // the epilogue reads the bias vector with vector loads
  if (bias && alignment_of(bias) < 16) return false;
  std::lock_guard<std::mutex> lock(g.mu);  // the plan's descriptor gets this call's bias pointer
  const LtKey key{m,
                  n,
                  k,
                  trans_a,
                  trans_b,
                  lda,
                  ldb,
                  c_f32,
                  bias != nullptr,
                  alignment_of(a),
                  alignment_of(b),
                  alignment_of(c)};
  auto it = g.plans.find(key);
  if (it == g.plans.end()) {
    // Varying lengths (real data) bring new shapes every step: keep the cache bounded.
    if (g.plans.size() >= 4096) clear_plans(g);
    it = g.plans.emplace(key, make_plan(g, key)).first;
  }
  LtPlan* p = &it->second;
  if (!p->ok) return false;
  if (bias) set_desc(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
  ET_CUBLAS(cublasLtMatmul(g.handle, p->desc, &alpha, b, p->a, a, p->b, &beta, c, p->c, c, p->c,
                           &p->algo, g.workspace, g.workspace_bytes, nullptr));
  return true;
}

}  // namespace et::cuda
