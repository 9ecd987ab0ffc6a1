// Dropout kernels (see dropout.h). Bandwidth-bound: 8 elements per thread in 16-byte accesses
// where the columns allow, one row key per 8 elements (a row of cols % 8 == 0 never splits an
// 8-element group), one 32-bit hash per element.
#include "ops/cuda/cuda_common.h"
#include "ops/cuda/dropout.h"

namespace et::cuda {

namespace {

struct DropoutArgs {
  DropoutMask mask;
  int64_t first_row, cols;
};

template <bool kAccumulate>
__global__ void dropout_vec8_kernel(Ptr x, Ptr y, DropoutArgs a, int64_t n8) {
  GRID_STRIDE(i, n8) {
    const int64_t e = 8 * i, row = e / a.cols, col = e - row * a.cols;
    const uint32_t key = a.mask.row_key(a.first_row + row);
    float v[8], w[8];
    x.load8(e, v);
    if (kAccumulate) y.load8(e, w);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const float d = a.mask.apply(key, col + k, v[k]);
      v[k] = kAccumulate ? w[k] + d : d;
    }
    y.store8(e, v);
  }
}

template <bool kAccumulate>
__global__ void dropout_kernel(Ptr x, Ptr y, DropoutArgs a, int64_t n) {
  GRID_STRIDE(i, n) {
    const int64_t row = i / a.cols, col = i - row * a.cols;
    const uint32_t key = a.mask.row_key(a.first_row + row);
    const float d = a.mask.apply(key, col, x.get(i));
    y.set(i, kAccumulate ? y.get(i) + d : d);
  }
}

}  // namespace

void dropout_rows(Ptr x, const DropoutSite& d, int64_t first_row, Ptr y, bool accumulate,
                  int64_t rows, int64_t cols) {
  const DropoutArgs a{dropout_mask(d, accumulate ? "dropout_add" : "dropout"), first_row, cols};
  const int64_t n = rows * cols;
  if (n == 0) return;
  if (cols % 8 == 0 && vec8_aligned(x.p) && vec8_aligned(y.p)) {
    auto k = accumulate ? dropout_vec8_kernel<true> : dropout_vec8_kernel<false>;
    k<<<blocks_for(n / 8, 256), 256>>>(x, y, a, n / 8);
  } else {
    auto k = accumulate ? dropout_kernel<true> : dropout_kernel<false>;
    k<<<blocks_for(n, 256), 256>>>(x, y, a, n);
  }
  ET_LAUNCH_CHECK();
}

}  // namespace et::cuda
