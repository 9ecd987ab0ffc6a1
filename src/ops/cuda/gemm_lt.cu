#include "ops/cuda/gemm_lt.h"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <utility>

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

// Rounds a long dimension up to a grid of 8 steps per power of two (at most 12.5% more), so
// that the token counts of real batches, new every step, share a few heuristic queries
// (cublasLtMatmulAlgoGetHeuristic costs 0.1-0.7 ms of host time per new shape on an H100
// machine, more than the product itself at MiniLM's sizes). Short dimensions (hidden sizes,
// ranks, batch rows) stay exact.
int64_t shape_bucket(int64_t x) {
  if (x <= 2048) return x;
  int64_t step = 1;
  while (step * 16 <= x) step *= 2;  // step = 2^(floor(log2 x) - 3)
  return (x + step - 1) / step * step;
}

// The problem whose heuristic choice stands for `key`: its long dimensions bucketed, each
// leading dimension at least as long as the rows it strides over.
LtKey heuristic_key(const LtKey& key) {
  auto [m, n, k, ta, tb, lda, ldb, c_f32, with_bias, align_a, align_b, align_c] = key;
  m = shape_bucket(m), n = shape_bucket(n), k = shape_bucket(k);
  lda = std::max(lda, ta ? m : k);
  ldb = std::max(ldb, tb ? k : n);
  return {m, n, k, ta, tb, lda, ldb, c_f32, with_bias, align_a, align_b, align_c};
}

// Row-major C = op(A) op(B) is column-major C^T[n, m] = op(B)^T op(A)^T: cuBLASLt's "A" is our
// B and its "B" our A; the bias (one value per column of row-major C) runs along the rows of the
// column-major result, which is what CUBLASLT_EPILOGUE_BIAS broadcasts. A failing setup call
// releases what was created before the error propagates.
LtPlan make_descriptors(const LtKey& key) {
  const auto [m, n, k, ta, tb, lda, ldb, c_f32, with_bias, align_a, align_b, align_c] = key;
  LtPlan p;
  try {
    ET_CUBLAS(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    set_desc(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, tb ? CUBLAS_OP_T : CUBLAS_OP_N);
    set_desc(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, ta ? CUBLAS_OP_T : CUBLAS_OP_N);
    if (with_bias) set_desc(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_BIAS);
    // stored shapes (column-major): op(X) = X when not transposed
    ET_CUBLAS(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, tb ? k : n, tb ? n : k, ldb));
    ET_CUBLAS(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, ta ? m : k, ta ? k : m, lda));
    ET_CUBLAS(cublasLtMatrixLayoutCreate(&p.c, c_f32 ? CUDA_R_32F : CUDA_R_16BF, n, m, n));
  } catch (...) {
    destroy_plan(p);
    throw;
  }
  return p;
}

// cuBLASLt's first choice for the problem `p` describes, within the workspace and for operands
// at the key's alignments; nullopt when it offers none.
std::optional<cublasLtMatmulAlgo_t> heuristic_algo(const LtGemm& g, const LtPlan& p,
                                                   const LtKey& key) {
  const int align_a = std::get<9>(key), align_b = std::get<10>(key), align_c = std::get<11>(key);
  cublasLtMatmulPreference_t pref = nullptr;
  ET_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
  const uint64_t ws = g.workspace_bytes;
  const uint32_t al[3] = {static_cast<uint32_t>(align_b), static_cast<uint32_t>(align_a),
                          static_cast<uint32_t>(align_c)};
  const std::pair<cublasLtMatmulPreferenceAttributes_t, const uint32_t*> aligns[] = {
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al[0]},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al[1]},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al[2]},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al[2]}};
  st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                            sizeof(ws));
  for (const auto& [attr, v] : aligns)
    if (st == CUBLAS_STATUS_SUCCESS)
      st = cublasLtMatmulPreferenceSetAttribute(pref, attr, v, sizeof(uint32_t));
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulAlgoGetHeuristic(g.handle, p.desc, p.a, p.b, p.c, p.c, pref, 1, &result,
                                        &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0) return std::nullopt;
  return result.algo;
}

// The plan of an exact problem: its own descriptors with the algorithm chosen for its bucket
// (heuristic_key), if cuBLASLt confirms that algorithm supports this problem within the
// workspace; else (rare: a leading dimension of another alignment) a heuristic query of its own.
LtPlan make_plan(LtGemm& g, const LtKey& key) {
  const LtKey hkey = heuristic_key(key);
  auto it = g.algos.find(hkey);
  if (it == g.algos.end()) {
    LtPlan h = make_descriptors(hkey);
    std::optional<cublasLtMatmulAlgo_t> algo;
    try {
      algo = heuristic_algo(g, h, hkey);
    } catch (...) {
      destroy_plan(h);
      throw;
    }
    destroy_plan(h);
    it = g.algos.emplace(hkey, algo).first;
  }
  LtPlan p = make_descriptors(key);
  if (it->second) {
    cublasLtMatmulHeuristicResult_t check{};
    if (cublasLtMatmulAlgoCheck(g.handle, p.desc, p.a, p.b, p.c, p.c, &*it->second, &check) ==
            CUBLAS_STATUS_SUCCESS &&
        check.workspaceSize <= g.workspace_bytes) {
      p.ok = true;
      p.algo = *it->second;
      return p;
    }
  }
  if (hkey != key) {
    try {
      if (auto algo = heuristic_algo(g, p, key)) {
        p.ok = true;
        p.algo = *algo;
      }
    } catch (...) {
      destroy_plan(p);
      throw;
    }
  }
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
    // Varying lengths (real data) bring new shapes every step: keep the cache bounded (the
    // heuristic choices, one per bucket, stay).
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
