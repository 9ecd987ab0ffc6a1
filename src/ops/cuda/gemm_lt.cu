#include "ops/cuda/gemm_lt.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <limits>
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

// RAII for a plan under construction: released unless handed over.
struct PlanGuard {
  LtPlan p;
  ~PlanGuard() { destroy_plan(p); }
  LtPlan release() { return std::exchange(p, LtPlan{}); }
};

// Rounds a long dimension up to a grid of 8 steps per power of two (at most 12.5% more), so
// that the token counts of real batches, new every step, share a few heuristic queries
// (cublasLtMatmulAlgoGetHeuristic costs 0.1-0.7 ms of host time per new shape on an H100
// machine, more than the product itself at MiniLM's sizes) and a few tunings. Short dimensions
// (hidden sizes, ranks, batch rows) stay exact.
int64_t shape_bucket(int64_t x) {
  if (x <= 2048) return x;
  int64_t step = 1;
  while (step * 16 <= x) step *= 2;  // step = 2^(floor(log2 x) - 3)
  return (x + step - 1) / step * step;
}

// The problem whose heuristic candidates stand for `key`: its long dimensions bucketed, each
// leading dimension at least as long as the rows it strides over.
LtKey heuristic_key(const LtKey& key) {
  auto [m, n, k, ta, tb, lda, ldb, ldc, c_f32, with_bias, align_a, align_b, align_c] = key;
  m = shape_bucket(m), n = shape_bucket(n), k = shape_bucket(k);
  lda = std::max(lda, ta ? m : k);
  ldb = std::max(ldb, tb ? k : n);
  ldc = std::max(ldc, n);
  return {m, n, k, ta, tb, lda, ldb, ldc, c_f32, with_bias, align_a, align_b, align_c};
}

// Row-major C = op(A) op(B) is column-major C^T[n, m] = op(B)^T op(A)^T: cuBLASLt's "A" is our
// B and its "B" our A; the bias (one value per column of row-major C) runs along the rows of the
// column-major result, which is what CUBLASLT_EPILOGUE_BIAS broadcasts. A failing setup call
// releases what was created before the error propagates.
LtPlan make_descriptors(const LtKey& key) {
  const auto [m, n, k, ta, tb, lda, ldb, ldc, c_f32, with_bias, align_a, align_b, align_c] = key;
  PlanGuard g;
  LtPlan& p = g.p;
  ET_CUBLAS(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  set_desc(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, tb ? CUBLAS_OP_T : CUBLAS_OP_N);
  set_desc(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, ta ? CUBLAS_OP_T : CUBLAS_OP_N);
  if (with_bias) set_desc(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_BIAS);
  // stored shapes (column-major): op(X) = X when not transposed
  ET_CUBLAS(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, tb ? k : n, tb ? n : k, ldb));
  ET_CUBLAS(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, ta ? m : k, ta ? k : m, lda));
  ET_CUBLAS(cublasLtMatrixLayoutCreate(&p.c, c_f32 ? CUDA_R_32F : CUDA_R_16BF, n, m, ldc));
  return g.release();
}

// cuBLASLt's first `count` choices for the problem `p` describes, within the workspace and for
// operands at the key's alignments, best first (none when it offers none).
std::vector<cublasLtMatmulAlgo_t> heuristic_algos(const LtGemm& g, const LtPlan& p,
                                                  const LtKey& key, int count) {
  const int align_a = std::get<10>(key), align_b = std::get<11>(key), align_c = std::get<12>(key);
  cublasLtMatmulPreference_t pref = nullptr;
  ET_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
  std::vector<cublasLtMatmulHeuristicResult_t> results(static_cast<size_t>(count));
  int found = 0;
  const uint64_t ws = g.workspace_bytes;
  const uint32_t al[3] = {static_cast<uint32_t>(align_b), static_cast<uint32_t>(align_a),
                          static_cast<uint32_t>(align_c)};
  const std::pair<cublasLtMatmulPreferenceAttributes_t, const uint32_t*> aligns[] = {
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al[0]},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al[1]},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al[2]},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al[2]}};
  cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  for (const auto& [attr, v] : aligns)
    if (st == CUBLAS_STATUS_SUCCESS)
      st = cublasLtMatmulPreferenceSetAttribute(pref, attr, v, sizeof(uint32_t));
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulAlgoGetHeuristic(g.handle, p.desc, p.a, p.b, p.c, p.c, pref, count,
                                        results.data(), &found);
  cublasLtMatmulPreferenceDestroy(pref);
  std::vector<cublasLtMatmulAlgo_t> algos;
  if (st == CUBLAS_STATUS_SUCCESS)
    for (int i = 0; i < found; ++i)
      if (results[static_cast<size_t>(i)].state == CUBLAS_STATUS_SUCCESS)
        algos.push_back(results[static_cast<size_t>(i)].algo);
  return algos;
}

// The size class of `key`, its candidates asked for on first use.
LtTuning& tuning_of(LtGemm& g, const LtKey& key) {
  const LtKey hkey = heuristic_key(key);
  auto it = g.tunings.find(hkey);
  if (it != g.tunings.end()) return it->second;
  PlanGuard h;
  h.p = make_descriptors(hkey);
  LtTuning t;
  t.algos = heuristic_algos(g, h.p, hkey, g.tune ? kLtCandidates : 1);
  t.best.assign(t.algos.size(), std::numeric_limits<double>::infinity());
  t.runs.assign(t.algos.size(), 0);
  if (t.algos.size() <= 1) t.chosen = t.algos.empty() ? -1 : 0;  // nothing to compare
  return g.tunings.emplace(hkey, std::move(t)).first->second;
}

LtPlan make_plan(LtGemm& g, const LtKey& key) {
  PlanGuard pg;
  pg.p = make_descriptors(key);
  pg.p.tuning = &tuning_of(g, key);
  pg.p.supported.assign(pg.p.tuning->algos.size(), 0);
  return pg.release();
}

bool supports(const LtGemm& g, LtPlan& p, size_t i) {
  if (p.supported[i] == 0) {
    cublasLtMatmulHeuristicResult_t check{};
    const bool ok = cublasLtMatmulAlgoCheck(g.handle, p.desc, p.a, p.b, p.c, p.c,
                                            &p.tuning->algos[i], &check) == CUBLAS_STATUS_SUCCESS &&
                    check.workspaceSize <= g.workspace_bytes;
    p.supported[i] = ok ? 1 : -1;
  }
  return p.supported[i] > 0;
}

// Folds completed timings into the candidates' best times; settles the class once every
// candidate has its runs and none is in flight.
void collect_timings(LtGemm& g, LtTuning& t) {
  size_t kept = 0;
  for (LtTuning::Timing& tm : t.pending) {
    const cudaError_t st = cudaEventQuery(tm.stop);
    if (st == cudaErrorNotReady) {
      t.pending[kept++] = tm;
      continue;
    }
    // A product costs the longer of its GPU time and the host time of its call: small products
    // can take longer to queue than to run (the host's path differs between kernels), and a
    // step of many such products waits for the host.
    float ms = 0;
    if (st == cudaSuccess && cudaEventElapsedTime(&ms, tm.start, tm.stop) == cudaSuccess)
      t.best[static_cast<size_t>(tm.algo)] =
          std::min(t.best[static_cast<size_t>(tm.algo)], std::max(1e-3 * ms, tm.host_s) / tm.work);
    else
      cudaGetLastError();  // a failed timing only loses its sample
    g.spare_events.push_back(tm.start);
    g.spare_events.push_back(tm.stop);
  }
  t.pending.resize(kept);
  if (t.chosen >= 0 || !t.pending.empty()) return;
  for (size_t i = 0; i < t.algos.size(); ++i)
    if (t.runs[i] < kLtTimedRuns) return;
  t.chosen = 0;
  for (size_t i = 1; i < t.algos.size(); ++i)
    if (t.best[i] < t.best[static_cast<size_t>(t.chosen)]) t.chosen = static_cast<int>(i);
}

cudaEvent_t take_event(LtGemm& g) {
  if (g.spare_events.empty()) {
    cudaEvent_t e;
    ET_CUDA(cudaEventCreate(&e));
    return e;
  }
  cudaEvent_t e = g.spare_events.back();
  g.spare_events.pop_back();
  return e;
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
  for (auto& [key, t] : g.tunings)
    for (const LtTuning::Timing& tm : t.pending) {
      cudaEventDestroy(tm.start);
      cudaEventDestroy(tm.stop);
    }
  g.tunings.clear();
  for (cudaEvent_t e : g.spare_events) cudaEventDestroy(e);
  g.spare_events.clear();
  if (g.handle) cublasLtDestroy(g.handle);
  g.handle = nullptr;
}

bool lt_gemm(LtGemm& g, const void* a, bool trans_a, int64_t lda, const void* b, bool trans_b,
             int64_t ldb, void* c, int64_t ldc, bool c_f32, int64_t m, int64_t n, int64_t k,
             float alpha, float beta, const void* bias) {
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
                  ldc,
                  c_f32,
                  bias != nullptr,
                  alignment_of(a),
                  alignment_of(b),
                  alignment_of(c)};
  auto it = g.plans.find(key);
  if (it == g.plans.end()) {
    // Varying lengths (real data) bring new shapes every step: keep the cache bounded (the
    // size classes and their tunings stay).
    if (g.plans.size() >= 4096) clear_plans(g);
    it = g.plans.emplace(key, make_plan(g, key)).first;
  }
  LtPlan& p = it->second;
  LtTuning& t = *p.tuning;
  collect_timings(g, t);
  // The class's choice; while tuning, the least-timed candidate; either one this exact problem
  // supports, else the fastest it does, else its own heuristic choice.
  int use = -1;
  bool timed = false;
  if (t.chosen >= 0 && supports(g, p, static_cast<size_t>(t.chosen))) use = t.chosen;
  for (size_t i = 0; t.chosen < 0 && i < t.algos.size(); ++i)
    if (t.runs[i] < kLtTimedRuns && supports(g, p, i) &&
        (use < 0 || t.runs[i] < t.runs[static_cast<size_t>(use)])) {
      use = static_cast<int>(i);
      timed = true;
    }
  if (use < 0)
    for (size_t i = 0; i < t.algos.size(); ++i)
      if (supports(g, p, i) && (use < 0 || t.best[i] < t.best[static_cast<size_t>(use)]))
        use = static_cast<int>(i);
  const cublasLtMatmulAlgo_t* algo = use >= 0 ? &t.algos[static_cast<size_t>(use)] : nullptr;
  if (!algo) {
    if (p.no_algorithm) return false;
    if (!p.own) {
      auto own = heuristic_algos(g, p, key, 1);
      p.no_algorithm = own.empty();
      if (p.no_algorithm) return false;
      p.own = own[0];
    }
    algo = &*p.own;
  }
  if (bias) set_desc(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
  LtTuning::Timing tm{use, nullptr, nullptr, static_cast<double>(m) * n * k, 0};
  std::chrono::steady_clock::time_point host_start;  // read only while timing
  if (timed) {
    tm.start = take_event(g);
    tm.stop = take_event(g);
    ET_CUDA(cudaEventRecord(tm.start, nullptr));
    host_start = std::chrono::steady_clock::now();
  }
  ET_CUBLAS(cublasLtMatmul(g.handle, p.desc, &alpha, b, p.a, a, p.b, &beta, c, p.c, c, p.c, algo,
                           g.workspace, g.workspace_bytes, nullptr));
  if (timed) {
    tm.host_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - host_start).count();
    ET_CUDA(cudaEventRecord(tm.stop, nullptr));
    t.pending.push_back(tm);
    ++t.runs[static_cast<size_t>(use)];
  }
  return true;
}

}  // namespace et::cuda
