// The CUDA backend (fp32 storage; matrix products on tensor cores through cuBLAS in TF32
// mode, fp32 accumulation everywhere). Elementwise and row-wise kernels are one thread per
// element or one warp per row; see each kernel's comment for its formula.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <map>
#include <mutex>
#include <vector>

#include "ops/cuda/attention.h"
#include "ops/cuda/cuda_backend.h"
#include "ops/cuda/cuda_common.h"

namespace et {

namespace cuda {
namespace {

// ---- memory -------------------------------------------------------------------------------

// Caching allocator: blocks are rounded up (to 1/8 of their power of two) and kept on free
// lists when released, so repeated steps of the same shapes never call cudaMalloc.
struct Pool {
  std::mutex mu;
  std::multimap<size_t, void*> free_blocks;
  size_t reserved = 0, peak_reserved = 0, in_use = 0, peak_in_use = 0;

  static size_t round(size_t n) {
    if (n <= 4096) return 4096;
    size_t p = 1;
    while (p < n) p <<= 1;
    size_t step = p / 8;
    return (n + step - 1) / step * step;
  }
  void* get(size_t bytes) {
    size_t n = round(bytes);
    std::lock_guard<std::mutex> g(mu);
    auto it = free_blocks.find(n);
    void* p = nullptr;
    if (it != free_blocks.end()) {
      p = it->second;
      free_blocks.erase(it);
    } else {
      cudaError_t e = cudaMalloc(&p, n);
      if (e != cudaSuccess) {  // release the cache and retry once
        cudaGetLastError();
        for (auto& [sz, q] : free_blocks) {
          cudaFree(q);
          reserved -= sz;
        }
        free_blocks.clear();
        e = cudaMalloc(&p, n);
        if (e != cudaSuccess) {
          size_t fr = 0, tot = 0;
          cudaGetLastError();
          cudaMemGetInfo(&fr, &tot);
          fail("out of GPU memory allocating ", n >> 20, " MiB (", fr >> 20, " MiB free of ",
               tot >> 20, "); lower the batch size or the sequence length");
        }
      }
      reserved += n;
      peak_reserved = std::max(peak_reserved, reserved);
    }
    in_use += n;
    peak_in_use = std::max(peak_in_use, in_use);
    return p;
  }
  void put(void* p, size_t bytes) {
    std::lock_guard<std::mutex> g(mu);
    size_t n = round(bytes);
    in_use -= n;
    free_blocks.emplace(n, p);
  }
  ~Pool() {
    for (auto& [sz, p] : free_blocks) cudaFree(p);
  }
};

// ---- elementwise kernels -----------------------------------------------------------------

#define GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); i += static_cast<int64_t>(gridDim.x) * blockDim.x)

__global__ void fill_kernel(float* y, float v, int64_t n) { GRID_STRIDE(i, n) y[i] = v; }
__global__ void add_kernel(const float* a, const float* b, float* y, int64_t n) {
  GRID_STRIDE(i, n) y[i] = a[i] + b[i];
}
__global__ void mul_kernel(const float* a, const float* b, float* y, int64_t n) {
  GRID_STRIDE(i, n) y[i] = a[i] * b[i];
}
__global__ void scale_kernel(float* y, float s, int64_t n) { GRID_STRIDE(i, n) y[i] *= s; }
__global__ void add_bias_kernel(float* y, const float* b, int64_t n, int64_t cols) {
  GRID_STRIDE(i, n) y[i] += b[i % cols];
}

// dbias[c] += sum_r dy[r, c]: blocks take 64-row slabs, one thread per column, then one
// atomic add per (slab, column).
__global__ void bias_backward_kernel(const float* dy, float* db, int64_t rows, int64_t cols) {
  int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  int64_t r0 = static_cast<int64_t>(blockIdx.y) * 64, r1 = min(rows, r0 + 64);
  float s = 0;
  for (int64_t r = r0; r < r1; ++r) s += dy[r * cols + c];
  atomicAdd(&db[c], s);
}

__device__ __forceinline__ float act_f(int act, float x) {
  switch (act) {
    case 0: return x;
    case 1: return tanhf(x);
    case 2: return x > 0 ? x : 0;
    case 3: return 1.0f / (1.0f + __expf(-x));
    case 4: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case 5: {
      float u = 0.79788456080286536f * (x + 0.044715f * x * x * x);
      return 0.5f * x * (1.0f + tanhf(u));
    }
    default: return x / (1.0f + __expf(-x));
  }
}

__device__ __forceinline__ float act_df(int act, float x) {
  switch (act) {
    case 0: return 1;
    case 1: {
      float t = tanhf(x);
      return 1 - t * t;
    }
    case 2: return x > 0 ? 1.0f : 0.0f;
    case 3: {
      float s = 1.0f / (1.0f + __expf(-x));
      return s * (1 - s);
    }
    case 4:
      return 0.5f * (1.0f + erff(x * 0.70710678118654752f)) +
             x * 0.39894228040143268f * __expf(-0.5f * x * x);
    case 5: {
      float u = 0.79788456080286536f * (x + 0.044715f * x * x * x);
      float t = tanhf(u);
      return 0.5f * (1.0f + t) + 0.5f * x * (1 - t * t) * 0.79788456080286536f * (1.0f + 0.134145f * x * x);
    }
    default: {
      float s = 1.0f / (1.0f + __expf(-x));
      return s * (1 + x * (1 - s));
    }
  }
}

__global__ void act_forward_kernel(int act, const float* x, float* y, int64_t n) {
  GRID_STRIDE(i, n) y[i] = act_f(act, x[i]);
}
__global__ void act_backward_kernel(int act, const float* x, const float* dy, float* dx, int64_t n) {
  GRID_STRIDE(i, n) dx[i] = act_df(act, x[i]) * dy[i];
}

// ---- row-wise kernels (one warp per row) ------------------------------------------------

__global__ void layernorm_forward_kernel(const float* x, const float* w, const float* b, float eps,
                                         float* y, float* mean, float* rstd, int64_t rows, int n) {
  int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const float* xr = x + r * n;
  float s = 0;
  for (int c = lane; c < n; c += 32) s += xr[c];
  float mu = warp_sum(s) / n;
  float v = 0;
  for (int c = lane; c < n; c += 32) v += (xr[c] - mu) * (xr[c] - mu);
  float rs = rsqrtf(warp_sum(v) / n + eps);
  for (int c = lane; c < n; c += 32) {
    float o = (xr[c] - mu) * rs * w[c];
    y[r * n + c] = b ? o + b[c] : o;
  }
  if (lane == 0) {
    mean[r] = mu;
    rstd[r] = rs;
  }
}

// dx = rstd (dy w - mean(dy w) - xhat mean(dy w xhat)); dw, db accumulated per block in shared
// memory, then added once per block.
__global__ void layernorm_backward_kernel(const float* dy, const float* x, const float* w,
                                          const float* mean, const float* rstd, float* dx,
                                          float* dw, float* db, int64_t rows, int n) {
  extern __shared__ float acc[];  // [2n]
  for (int c = threadIdx.x; c < 2 * n; c += blockDim.x) acc[c] = 0;
  __syncthreads();
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * warps + warp; r < rows;
       r += static_cast<int64_t>(gridDim.x) * warps) {
    const float* g = dy + r * n;
    const float* xr = x + r * n;
    const float mu = mean[r], rs = rstd[r];
    float a = 0, bsum = 0;
    for (int c = lane; c < n; c += 32) {
      float xh = (xr[c] - mu) * rs;
      float d = g[c] * w[c];
      a += d;
      bsum += d * xh;
      if (dw) atomicAdd(&acc[c], g[c] * xh);
      if (db) atomicAdd(&acc[n + c], g[c]);
    }
    a = warp_sum(a) / n;
    bsum = warp_sum(bsum) / n;
    for (int c = lane; c < n; c += 32) {
      float xh = (xr[c] - mu) * rs;
      dx[r * n + c] = rs * (g[c] * w[c] - a - xh * bsum);
    }
  }
  __syncthreads();
  for (int c = threadIdx.x; c < n; c += blockDim.x) {
    if (dw) atomicAdd(&dw[c], acc[c]);
    if (db) atomicAdd(&db[c], acc[n + c]);
  }
}

__global__ void l2norm_forward_kernel(const float* x, float* y, float* norms, int64_t rows, int n) {
  int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  int lane = threadIdx.x % 32;
  if (r >= rows) return;
  float s = 0;
  for (int c = lane; c < n; c += 32) s += x[r * n + c] * x[r * n + c];
  float nv = sqrtf(warp_sum(s));
  float den = fmaxf(nv, 1e-12f);
  for (int c = lane; c < n; c += 32) y[r * n + c] = x[r * n + c] / den;
  if (lane == 0) norms[r] = nv;
}

__global__ void l2norm_backward_kernel(const float* dy, const float* y, const float* norms,
                                       float* dx, int64_t rows, int n) {
  int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  int lane = threadIdx.x % 32;
  if (r >= rows) return;
  float nv = norms[r];
  if (nv <= 1e-12f) {
    for (int c = lane; c < n; c += 32) dx[r * n + c] = dy[r * n + c] / 1e-12f;
    return;
  }
  float dot = 0;
  for (int c = lane; c < n; c += 32) dot += y[r * n + c] * dy[r * n + c];
  dot = warp_sum(dot);
  for (int c = lane; c < n; c += 32) dx[r * n + c] = (dy[r * n + c] - y[r * n + c] * dot) / nv;
}

// ---- embeddings, pooling, optimizer ------------------------------------------------------

__global__ void embedding_forward_kernel(const int32_t* ids, const float* table, float* y,
                                         int64_t t, int n, int accumulate) {
  GRID_STRIDE(i, t * n) {
    float v = table[static_cast<int64_t>(ids[i / n]) * n + i % n];
    y[i] = accumulate ? y[i] + v : v;
  }
}
__global__ void embedding_backward_kernel(const int32_t* ids, const float* dy, float* dtable,
                                          int64_t t, int n) {
  GRID_STRIDE(i, t * n) atomicAdd(&dtable[static_cast<int64_t>(ids[i / n]) * n + i % n], dy[i]);
}

// One thread per (sequence, column). mode: PoolMode as int.
__global__ void pool_forward_kernel(int mode, const float* x, const int32_t* cu, const int32_t* skip,
                                    float* out, int32_t* argmax, int nseq, int c) {
  GRID_STRIDE(idx, static_cast<int64_t>(nseq) * c) {
    int b = static_cast<int>(idx / c), j = static_cast<int>(idx % c);
    int start = cu[b], len = cu[b + 1] - cu[b];
    float* o = out + idx;
    if (len == 0) {
      *o = 0;
      continue;
    }
    if (mode == 0) {  // cls
      *o = x[static_cast<int64_t>(start) * c + j];
    } else if (mode == 5) {  // last token
      *o = x[static_cast<int64_t>(start + len - 1) * c + j];
    } else {
      int first = skip ? min(skip[b], len) : 0;
      if (mode == 2) {  // max; masked prompt tokens count as -1e9 (sentence-transformers)
        float best = first > 0 ? -1e9f : -INFINITY;
        int arg = -1;
        for (int t = first; t < len; ++t) {
          float v = x[static_cast<int64_t>(start + t) * c + j];
          if (v > best) {
            best = v;
            arg = start + t;
          }
        }
        *o = best;
        argmax[idx] = arg;
      } else {
        double s = 0, wsum = 0;
        for (int t = first; t < len; ++t) {
          float w = mode == 4 ? static_cast<float>(t + 1) : 1.0f;
          wsum += w;
          s += w * x[static_cast<int64_t>(start + t) * c + j];
        }
        double den = fmax(wsum, 1e-9);
        if (mode == 3) den = sqrt(den);
        *o = static_cast<float>(s / den);
      }
    }
  }
}

__global__ void pool_backward_kernel(int mode, const float* dout, const int32_t* cu,
                                     const int32_t* skip, const int32_t* argmax, float* dx,
                                     int nseq, int c) {
  GRID_STRIDE(idx, static_cast<int64_t>(nseq) * c) {
    int b = static_cast<int>(idx / c), j = static_cast<int>(idx % c);
    int start = cu[b], len = cu[b + 1] - cu[b];
    if (len == 0) continue;
    float g = dout[idx];
    if (mode == 0) {
      dx[static_cast<int64_t>(start) * c + j] = g;
    } else if (mode == 5) {
      dx[static_cast<int64_t>(start + len - 1) * c + j] = g;
    } else if (mode == 2) {
      if (argmax[idx] >= 0) dx[static_cast<int64_t>(argmax[idx]) * c + j] = g;
    } else {
      int first = skip ? min(skip[b], len) : 0;
      double wsum = 0;
      for (int t = first; t < len; ++t) wsum += mode == 4 ? t + 1.0 : 1.0;
      double den = fmax(wsum, 1e-9);
      if (mode == 3) den = sqrt(den);
      for (int t = first; t < len; ++t)
        dx[static_cast<int64_t>(start + t) * c + j] =
            static_cast<float>((mode == 4 ? t + 1.0 : 1.0) / den * g);
    }
  }
}

__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, float lr, float b1,
                             float b2, float eps, float wd, float step_size, float bc2_sqrt, int64_t n) {
  GRID_STRIDE(i, n) {
    float pi = p[i] * (1.0f - lr * wd);
    float mi = b1 * m[i] + (1 - b1) * g[i];
    float vi = b2 * v[i] + (1 - b2) * g[i] * g[i];
    m[i] = mi;
    v[i] = vi;
    p[i] = pi - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
  }
}

__global__ void sum_squares_kernel(const float* x, int64_t n, double* out) {
  __shared__ double part[32];
  double s = 0;
  GRID_STRIDE(i, n) s += static_cast<double>(x[i]) * x[i];
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) t += part[w];
    atomicAdd(out, t);
  }
}

// ---- the backend ------------------------------------------------------------------------

int64_t cols_of(const Tensor& t) { return t.shape.empty() ? 1 : t.shape.back(); }
int64_t rows_of(const Tensor& t) { return t.numel() / std::max<int64_t>(cols_of(t), 1); }

const float* F(const Tensor& t) {
  ET_CHECK(t.device == Device::CUDA && t.dtype == DType::F32, "CUDA op: expected an F32 device tensor, got ",
           dtype_name(t.dtype), t.device == Device::CUDA ? " on the GPU" : " on the host");
  return static_cast<const float*>(t.data);
}
float* W(Tensor& t) { return const_cast<float*>(F(t)); }
const int32_t* I(const Tensor& t) {
  ET_CHECK(t.device == Device::CUDA && t.dtype == DType::I32, "CUDA op: expected an I32 device tensor");
  return static_cast<const int32_t*>(t.data);
}

// EMBEDTUNE_PROFILE=1: every op synchronizes before and after and adds its wall time to a
// per-op total, printed when the backend is destroyed (for finding where a step's time goes;
// the synchronization itself costs time, so totals are upper bounds).
struct Profiler {
  bool on = std::getenv("EMBEDTUNE_PROFILE") != nullptr;
  std::map<std::string, std::pair<double, int64_t>> totals;
  ~Profiler() {
    if (!on || totals.empty()) return;
    std::vector<std::pair<double, std::string>> rows;
    double all = 0;
    for (auto& [k, v] : totals) {
      rows.emplace_back(v.first, k);
      all += v.first;
    }
    std::sort(rows.rbegin(), rows.rend());
    std::fprintf(stderr, "op profile (synchronized wall time):\n");
    for (auto& [t, k] : rows)
      std::fprintf(stderr, "  %-22s %9.1f ms %6.1f%%  %8lld calls\n", k.c_str(), t * 1e3, 100 * t / all,
                   static_cast<long long>(totals[k].second));
  }
};

struct OpScope {
  Profiler* p;
  const char* name;
  std::chrono::steady_clock::time_point t0;
  OpScope(Profiler* prof, const char* n) : p(prof), name(n) {
    if (!p->on) return;
    cudaDeviceSynchronize();
    t0 = std::chrono::steady_clock::now();
  }
  ~OpScope() {
    if (!p->on) return;
    cudaDeviceSynchronize();
    auto& e = p->totals[name];
    e.first += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    e.second += 1;
  }
};

struct CudaBackend final : Backend {
  std::unique_ptr<Profiler> prof = std::make_unique<Profiler>();
  std::shared_ptr<Pool> pool = std::make_shared<Pool>();
  cublasHandle_t blas = nullptr;
  int device_index = 0;

  explicit CudaBackend(int dev) : device_index(dev) {
    ET_CUDA(cudaSetDevice(dev));
    ET_CUBLAS(cublasCreate(&blas));
    // TF32 tensor-core products with fp32 accumulation (as torch's allow_tf32).
    ET_CUBLAS(cublasSetMathMode(blas, CUBLAS_TF32_TENSOR_OP_MATH));
  }
  ~CudaBackend() override {
    if (blas) cublasDestroy(blas);
  }

  Device device() const override { return Device::CUDA; }
  const char* name() const override { return "cuda"; }

  Tensor empty(const Shape& shape, DType dtype) const override {
    Tensor t;
    t.shape = shape;
    t.dtype = dtype;
    t.device = Device::CUDA;
    size_t bytes = std::max<size_t>(t.nbytes(), 1);
    void* p = pool->get(bytes);
    auto pl = pool;
    t.owner = std::shared_ptr<void>(p, [pl, bytes](void* q) { pl->put(q, bytes); });
    t.data = p;
    return t;
  }
  Tensor zeros(const Shape& shape, DType dtype) const override {
    Tensor t = empty(shape, dtype);
    ET_CUDA(cudaMemsetAsync(t.data, 0, t.nbytes()));
    return t;
  }
  Tensor upload(const Tensor& host) const override {
    OpScope scope_(prof.get(), "upload");
    ET_CHECK(host.device == Device::CPU, "upload: tensor is not on the host");
    Tensor t = empty(host.shape, host.dtype);
    if (host.nbytes()) ET_CUDA(cudaMemcpy(t.data, host.data, host.nbytes(), cudaMemcpyHostToDevice));
    return t;
  }
  Tensor download(const Tensor& dev) const override {
    OpScope scope_(prof.get(), "download");
    if (dev.device == Device::CPU) return cpu_clone(dev);
    Tensor h = cpu_empty(dev.shape, dev.dtype);
    if (dev.nbytes()) ET_CUDA(cudaMemcpy(h.data, dev.data, dev.nbytes(), cudaMemcpyDeviceToHost));
    return h;
  }
  void fill(Tensor& t, float value) const override {
    OpScope scope_(prof.get(), "fill");
    int64_t n = t.numel();
    if (value == 0.0f) {
      ET_CUDA(cudaMemsetAsync(t.data, 0, t.nbytes()));
      return;
    }
    fill_kernel<<<blocks_for(n, 256), 256>>>(W(t), value, n);
    ET_LAUNCH_CHECK();
  }
  void copy(Tensor& dst, const Tensor& src) const override {
    OpScope scope_(prof.get(), "copy");
    ET_CHECK(dst.nbytes() == src.nbytes(), "copy: size mismatch ", shape_str(dst.shape), " vs ",
             shape_str(src.shape));
    if (dst.data != src.data && src.nbytes())
      ET_CUDA(cudaMemcpyAsync(dst.data, src.data, src.nbytes(), cudaMemcpyDeviceToDevice));
  }

  // Row-major C[m,n] = op(A) op(B) is column-major C^T = op(B)^T op(A)^T.
  void matmul(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c, float alpha,
              float beta) const override {
    OpScope scope_(prof.get(), "matmul");
    ET_CHECK(a.ndim() == 2 && b.ndim() == 2 && c.ndim() == 2, "matmul: operands must be 2-D");
    int64_t m = ta ? a.dim(1) : a.dim(0), k = ta ? a.dim(0) : a.dim(1);
    int64_t kb = tb ? b.dim(1) : b.dim(0), n = tb ? b.dim(0) : b.dim(1);
    ET_CHECK(k == kb && c.dim(0) == m && c.dim(1) == n, "matmul: shapes ", shape_str(a.shape),
             (ta ? "^T" : ""), " x ", shape_str(b.shape), (tb ? "^T" : ""), " -> ",
             shape_str(c.shape), " do not match");
    if (m == 0 || n == 0) return;
    ET_CUBLAS(cublasSgemm(blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                          static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha,
                          F(b), static_cast<int>(b.dim(1)), F(a), static_cast<int>(a.dim(1)), &beta,
                          W(c), static_cast<int>(n)));
  }
  void add_bias(Tensor& y, const Tensor& bias) const override {
    OpScope scope_(prof.get(), "add_bias");
    int64_t n = y.numel(), cols = cols_of(y);
    ET_CHECK(bias.numel() == cols, "add_bias: bias size mismatch");
    add_bias_kernel<<<blocks_for(n, 256), 256>>>(W(y), F(bias), n, cols);
    ET_LAUNCH_CHECK();
  }
  void bias_backward(const Tensor& dy, Tensor& db) const override {
    OpScope scope_(prof.get(), "bias_backward");
    int64_t rows = rows_of(dy), cols = cols_of(dy);
    ET_CHECK(db.numel() == cols, "bias_backward: size mismatch");
    dim3 grid(static_cast<unsigned>((cols + 255) / 256), static_cast<unsigned>((rows + 63) / 64));
    if (rows > 0) bias_backward_kernel<<<grid, 256>>>(F(dy), W(db), rows, cols);
    ET_LAUNCH_CHECK();
  }
  void add(const Tensor& a, const Tensor& b, Tensor& y) const override {
    OpScope scope_(prof.get(), "add");
    ET_CHECK(a.numel() == b.numel() && a.numel() == y.numel(), "add: size mismatch");
    add_kernel<<<blocks_for(a.numel(), 256), 256>>>(F(a), F(b), W(y), a.numel());
    ET_LAUNCH_CHECK();
  }
  void mul(const Tensor& a, const Tensor& b, Tensor& y) const override {
    OpScope scope_(prof.get(), "mul");
    ET_CHECK(a.numel() == b.numel() && a.numel() == y.numel(), "mul: size mismatch");
    mul_kernel<<<blocks_for(a.numel(), 256), 256>>>(F(a), F(b), W(y), a.numel());
    ET_LAUNCH_CHECK();
  }
  void scale(Tensor& y, float s) const override {
    OpScope scope_(prof.get(), "scale");
    scale_kernel<<<blocks_for(y.numel(), 256), 256>>>(W(y), s, y.numel());
    ET_LAUNCH_CHECK();
  }
  void layernorm_forward(const Tensor& x, const Tensor& w, const Tensor* b, float eps, Tensor& y,
                         Tensor& mean, Tensor& rstd) const override {
    OpScope scope_(prof.get(), "layernorm_forward");
    int64_t rows = rows_of(x);
    int n = static_cast<int>(cols_of(x));
    layernorm_forward_kernel<<<blocks_for(rows * 32, 256), 256>>>(F(x), F(w), b ? F(*b) : nullptr, eps,
                                                                   W(y), W(mean), W(rstd), rows, n);
    ET_LAUNCH_CHECK();
  }
  void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& mean,
                          const Tensor& rstd, Tensor& dx, Tensor* dw, Tensor* db) const override {
    OpScope scope_(prof.get(), "layernorm_backward");
    int64_t rows = rows_of(x);
    int n = static_cast<int>(cols_of(x));
    unsigned blocks = static_cast<unsigned>(std::min<int64_t>((rows + 7) / 8, 1024));
    size_t smem = 2 * sizeof(float) * n;
    if (smem > 48 * 1024)
      ET_CUDA(cudaFuncSetAttribute(layernorm_backward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   static_cast<int>(smem)));
    if (rows > 0)
      layernorm_backward_kernel<<<blocks, 256, smem>>>(F(dy), F(x), F(w), F(mean), F(rstd), W(dx),
                                                       dw ? W(*dw) : nullptr, db ? W(*db) : nullptr,
                                                       rows, n);
    ET_LAUNCH_CHECK();
  }
  void act_forward(Act act, const Tensor& x, Tensor& y) const override {
    OpScope scope_(prof.get(), "act_forward");
    act_forward_kernel<<<blocks_for(x.numel(), 256), 256>>>(static_cast<int>(act), F(x), W(y), x.numel());
    ET_LAUNCH_CHECK();
  }
  void act_backward(Act act, const Tensor& x, const Tensor& dy, Tensor& dx) const override {
    OpScope scope_(prof.get(), "act_backward");
    act_backward_kernel<<<blocks_for(x.numel(), 256), 256>>>(static_cast<int>(act), F(x), F(dy), W(dx),
                                                              x.numel());
    ET_LAUNCH_CHECK();
  }
  void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& y,
                         bool accumulate) const override {
    OpScope scope_(prof.get(), "embedding_forward");
    int64_t t = ids.numel();
    int n = static_cast<int>(cols_of(table));
    const int64_t vocab = rows_of(table);
    // Ids are validated on the host copy before upload by callers that take user input; here a
    // bad id would read out of bounds, so check the values once more cheaply on the host.
    Tensor h = download(ids);
    for (int64_t i = 0; i < t; ++i)
      ET_CHECK(h.i32()[i] >= 0 && h.i32()[i] < vocab, "token id ", h.i32()[i], " at position ", i,
               " is outside the embedding table of ", vocab, " rows");
    embedding_forward_kernel<<<blocks_for(t * n, 256), 256>>>(I(ids), F(table), W(y), t, n, accumulate);
    ET_LAUNCH_CHECK();
  }
  void embedding_backward(const Tensor& ids, const Tensor& dy, Tensor& dtable) const override {
    OpScope scope_(prof.get(), "embedding_backward");
    int64_t t = ids.numel();
    int n = static_cast<int>(cols_of(dtable));
    embedding_backward_kernel<<<blocks_for(t * n, 256), 256>>>(I(ids), F(dy), W(dtable), t, n);
    ET_LAUNCH_CHECK();
  }

  // (sequence, first row) of every 64-row tile, for the attention kernels' grids.
  Tensor tiles_of(const AttentionArgs& a, int* n) const {
    std::vector<int32_t> tiles;
    for (size_t b = 0; b + 1 < a.cu_seqlens.size(); ++b)
      for (int r = 0; r < a.cu_seqlens[b + 1] - a.cu_seqlens[b]; r += kAttnTileRows) {
        tiles.push_back(static_cast<int32_t>(b));
        tiles.push_back(r);
      }
    *n = static_cast<int>(tiles.size() / 2);
    return upload(cpu_from_i32(tiles, {static_cast<int64_t>(tiles.size())}));
  }
  Tensor cu_of(const AttentionArgs& a) const {
    if (a.cu_seqlens_dev.defined()) return a.cu_seqlens_dev;
    return upload(cpu_from_i32(a.cu_seqlens, {static_cast<int64_t>(a.cu_seqlens.size())}));
  }
  void attention_forward(const AttentionArgs& a, const Tensor& q, const Tensor& k, const Tensor& v,
                         Tensor& out, Tensor& lse) const override {
    OpScope scope_(prof.get(), "attention_forward");
    int n = 0;
    Tensor tiles = tiles_of(a, &n), cu = cu_of(a);
    cuda::attention_forward(a, F(q), F(k), F(v), W(out), W(lse), I(tiles), n, I(cu));
  }
  void attention_backward(const AttentionArgs& a, const Tensor& q, const Tensor& k, const Tensor& v,
                          const Tensor& out, const Tensor& lse, const Tensor& dout, Tensor& dq,
                          Tensor& dk, Tensor& dv, Tensor* d_rel_bias) const override {
    OpScope scope_(prof.get(), "attention_backward");
    int n = 0;
    Tensor tiles = tiles_of(a, &n), cu = cu_of(a);
    Tensor delta = empty({lse.numel()}, DType::F32);
    cuda::attention_backward(a, F(q), F(k), F(v), F(out), F(lse), F(dout), W(dq), W(dk), W(dv),
                             d_rel_bias ? W(*d_rel_bias) : nullptr, W(delta), I(tiles), n, I(cu));
  }

  void pool_forward(PoolMode mode, const Tensor& x, const std::vector<int32_t>& cu,
                    const std::vector<int32_t>& skip, Tensor& out, Tensor* argmax) const override {
    OpScope scope_(prof.get(), "pool_forward");
    const int nseq = static_cast<int>(cu.size()) - 1;
    const int c = static_cast<int>(cols_of(x));
    Tensor dcu = upload(cpu_from_i32(cu, {nseq + 1}));
    Tensor dskip;
    if (!skip.empty()) dskip = upload(cpu_from_i32(skip, {nseq}));
    pool_forward_kernel<<<blocks_for(static_cast<int64_t>(nseq) * c, 256), 256>>>(
        static_cast<int>(mode), F(x), I(dcu), skip.empty() ? nullptr : I(dskip), W(out),
        argmax ? static_cast<int32_t*>(argmax->data) : nullptr, nseq, c);
    ET_LAUNCH_CHECK();
  }
  void pool_backward(PoolMode mode, const Tensor& dout, const std::vector<int32_t>& cu,
                     const std::vector<int32_t>& skip, const Tensor* argmax, Tensor& dx) const override {
    OpScope scope_(prof.get(), "pool_backward");
    const int nseq = static_cast<int>(cu.size()) - 1;
    const int c = static_cast<int>(cols_of(dx));
    fill(dx, 0);
    Tensor dcu = upload(cpu_from_i32(cu, {nseq + 1}));
    Tensor dskip;
    if (!skip.empty()) dskip = upload(cpu_from_i32(skip, {nseq}));
    pool_backward_kernel<<<blocks_for(static_cast<int64_t>(nseq) * c, 256), 256>>>(
        static_cast<int>(mode), F(dout), I(dcu), skip.empty() ? nullptr : I(dskip),
        argmax ? I(*argmax) : nullptr, W(dx), nseq, c);
    ET_LAUNCH_CHECK();
  }
  void adamw_step(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int64_t step) const override {
    OpScope scope_(prof.get(), "adamw_step");
    const double bc1 = 1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(step));
    const double bc2 = 1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(step));
    adamw_kernel<<<blocks_for(p.numel(), 256), 256>>>(W(p), F(g), W(m), W(v), lr, beta1, beta2, eps,
                                                       weight_decay, static_cast<float>(lr / bc1),
                                                       static_cast<float>(std::sqrt(bc2)), p.numel());
    ET_LAUNCH_CHECK();
  }
  double sum_squares(const Tensor& t) const override {
    OpScope scope_(prof.get(), "sum_squares");
    Tensor acc = zeros({1}, DType::F64);
    sum_squares_kernel<<<std::min(blocks_for(t.numel(), 256), 1024u), 256>>>(
        F(t), t.numel(), static_cast<double*>(acc.data));
    ET_LAUNCH_CHECK();
    double out = 0;
    ET_CUDA(cudaMemcpy(&out, acc.data, sizeof(double), cudaMemcpyDeviceToHost));
    return out;
  }
  void l2norm_forward(const Tensor& x, Tensor& y, Tensor& norms) const override {
    OpScope scope_(prof.get(), "l2norm_forward");
    int64_t rows = rows_of(x);
    l2norm_forward_kernel<<<blocks_for(rows * 32, 256), 256>>>(F(x), W(y), W(norms), rows,
                                                                static_cast<int>(cols_of(x)));
    ET_LAUNCH_CHECK();
  }
  void l2norm_backward(const Tensor& dy, const Tensor& y, const Tensor& norms,
                       Tensor& dx) const override {
    OpScope scope_(prof.get(), "l2norm_backward");
    int64_t rows = rows_of(y);
    l2norm_backward_kernel<<<blocks_for(rows * 32, 256), 256>>>(F(dy), F(y), F(norms), W(dx), rows,
                                                                 static_cast<int>(cols_of(y)));
    ET_LAUNCH_CHECK();
  }
  size_t peak_bytes() const override { return pool->peak_in_use; }
  void synchronize() const override { ET_CUDA(cudaDeviceSynchronize()); }
};

}  // namespace
}  // namespace cuda

std::unique_ptr<Backend> make_cuda_backend(int device) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    cudaGetLastError();
    fail("no CUDA device is available");
  }
  ET_CHECK(device >= 0 && device < n, "CUDA device ", device, " does not exist (", n, " present)");
  return std::make_unique<cuda::CudaBackend>(device);
}

}  // namespace et
