// Matrix products with bf16 operands through cuBLASLt: fp32 accumulation, C in bf16 or fp32,
// and optionally the bias in the epilogue (CUBLASLT_EPILOGUE_BIAS: added to the fp32
// accumulator before the one rounding of C, so C is written once instead of being written by
// the product and then read and rewritten by a bias kernel). Bias-free products take the same
// path (one way to call the library; measured within 1% of cublasGemmEx, whose host cost per
// call is the same: bench/NOTES.md).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <tuple>
#include <vector>

namespace et::cuda {

// cuBLASLt's first heuristic choice is not always its fastest: for a rank-16 down-projection
// [32768, 768] x [768, 16] it runs 90 us where another of its candidates runs 22 us, and base
// products gain 1-11% from the best of its top eight (H100, bench/NOTES.md). So each size class
// of problems (heuristic_key in gemm_lt.cu: the long dimensions rounded up to 1/8 octave, so
// that real batches' token counts share it) keeps the heuristic's candidates and times them on
// the real calls: each call while tuning runs the least-timed candidate between two events,
// and once every candidate has kLtTimedRuns timings the fastest (per multiply-add, the longer
// of its GPU time and the host time of its call, the minimum over its runs) serves the class. No
// extra work and no scratch memory: every candidate computes the real product.
constexpr int kLtCandidates = 8;
constexpr int kLtTimedRuns = 3;

struct LtTuning {
  std::vector<cublasLtMatmulAlgo_t> algos;  // cuBLASLt's candidates, its first choice first
  std::vector<double> best;                 // fastest seconds per multiply-add seen (inf: none)
  std::vector<int> runs;                    // timed runs queued per candidate
  int chosen = -1;                          // once settled: the candidate that serves the class
  struct Timing {
    int algo;
    cudaEvent_t start, stop;
    double work;    // m n k
    double host_s;  // host time of the cublasLtMatmul call
  };
  std::vector<Timing> pending;  // queued timings whose events have not completed yet
};

// One exact problem: its descriptors, the size class that chooses its algorithm, and which of
// the class's candidates cuBLASLt confirms for this problem (0: not asked yet, 1: yes, -1: no).
struct LtPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  LtTuning* tuning = nullptr;
  std::vector<int8_t> supported;
  std::optional<cublasLtMatmulAlgo_t> own;  // its own heuristic choice when no candidate fits
  bool no_algorithm = false;                // cuBLASLt offers none for it: the caller falls back
};

// (m, n, k, trans_a, trans_b, lda, ldb, ldc, C is fp32, with bias, alignment of a, b, c in
// bytes)
using LtKey = std::tuple<int64_t, int64_t, int64_t, bool, bool, int64_t, int64_t, int64_t, bool,
                         bool, int, int, int>;

struct LtGemm {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;  // owned by the caller, at least workspace_bytes, 256-byte aligned
  size_t workspace_bytes = 0;
  // Time the candidates of size classes created from now on (Backend::set_gemm_tuning); false:
  // the heuristic's first choice, so that the same inputs give the same bits.
  bool tune = false;
  std::mutex mu;
  std::map<LtKey, LtPlan> plans;      // exact problems
  std::map<LtKey, LtTuning> tunings;  // size classes
  std::vector<cudaEvent_t> spare_events;
};

void lt_gemm_init(LtGemm& g, void* workspace, size_t workspace_bytes);
void lt_gemm_destroy(LtGemm& g);

// Row-major C[m, n] = alpha * op(A) op(B) + beta * C (+ bias[n]); A, B bf16 and C bf16 or
// (c_f32) fp32 with leading dimensions lda, ldb, ldc (elements; ldc >= n), the bias (or
// null) bf16: cuBLASLt takes it in C's type and finds no algorithm for an fp32 bias with bf16
// C. Returns false, having done nothing, when cuBLASLt has no algorithm for the case.
bool lt_gemm(LtGemm& g, const void* a, bool trans_a, int64_t lda, const void* b, bool trans_b,
             int64_t ldb, void* c, int64_t ldc, bool c_f32, int64_t m, int64_t n, int64_t k,
             float alpha, float beta, const void* bias);

}  // namespace et::cuda
