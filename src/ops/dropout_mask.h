// Dropout masks as a pure function of (seed, row, column), shared by the CPU reference and the
// CUDA kernels (host and device), so that:
//   - backward regenerates the forward's mask instead of storing it (as FlashAttention does for
//     attention-probability dropout with its Philox counters), including inside the fused
//     attention kernels, whose forward and backward visit an element from different threads;
//   - the CPU and the GPU drop exactly the same elements, so the backends are compared
//     element for element with dropout on, and a training step is reproducible from its seed.
//
// Element (row, col) of a site with 64-bit seed s is kept iff bits(s, row, col) >= threshold(p):
//   key  = fmix32(fold(s) ^ row * 0x9E3779B9)     (one per row: a bijection of the row index)
//   bits = fmix32(key + col * 0x85EBCA77)         (a counter-based stream along the row)
// with fmix32 MurmurHash3's 32-bit finaliser (full avalanche, a bijection). P(drop) =
// threshold / 2^32, p to within 2^-32. Kept elements are scaled by 1 / (1 - p) (inverted
// dropout, torch.nn.functional.dropout in training). The masks are not torch's (its Philox
// stream cannot be reproduced without its generator state); the distribution is the same.
//
// Rows are the rows of the [rows, cols] activation (packed tokens); for attention
// probabilities, row = token * n_heads + head (the query's packed row and head) and col = the
// key's position in its sequence.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/error.h"

#ifdef __CUDACC__
#define ET_DROPOUT_HD __host__ __device__ __forceinline__
#else
#define ET_DROPOUT_HD inline
#endif

namespace et {

ET_DROPOUT_HD uint32_t dropout_fmix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x85EBCA6Bu;
  x ^= x >> 13;
  x *= 0xC2B2AE35u;
  x ^= x >> 16;
  return x;
}

// The site's seed folded to 32 bits (both halves through the finaliser).
ET_DROPOUT_HD uint32_t dropout_seed32(uint64_t seed) {
  return dropout_fmix32(static_cast<uint32_t>(seed) ^
                        dropout_fmix32(static_cast<uint32_t>(seed >> 32) + 0x2545F491u));
}

ET_DROPOUT_HD uint32_t dropout_row_key(uint32_t seed32, uint32_t row) {
  return dropout_fmix32(seed32 ^ (row * 0x9E3779B9u));
}

ET_DROPOUT_HD bool dropout_keep(uint32_t row_key, uint32_t col, uint32_t threshold) {
  return dropout_fmix32(row_key + col * 0x85EBCA77u) >= threshold;
}

// p in [0, 1) -> the 32-bit threshold (host side).
inline uint32_t dropout_threshold(float p) {
  const double t = std::round(static_cast<double>(p) * 4294967296.0);
  return t >= 4294967295.0 ? 4294967295u : static_cast<uint32_t>(t);
}

// One dropout site of a forward pass (an activation or a layer's attention probabilities):
// its probability and its seed, drawn from the training RNG in forward and kept for backward.
struct DropoutSite {
  float p = 0.0f;
  uint64_t seed = 0;
  bool active() const { return p > 0.0f; }
};

// A site's mask as the CPU and CUDA ops evaluate it, derived once per op by dropout_mask.
// Rows and columns are taken modulo 2^32, on every backend alike.
struct DropoutMask {
  uint32_t seed32 = 0, threshold = 0;
  float keep_scale = 1.0f;  // 1 / (1 - p)
  ET_DROPOUT_HD uint32_t row_key(int64_t row) const {
    return dropout_row_key(seed32, static_cast<uint32_t>(row));
  }
  ET_DROPOUT_HD bool keep(uint32_t key, int64_t col) const {
    return dropout_keep(key, static_cast<uint32_t>(col), threshold);
  }
  // keep / (1 - p): what the element is multiplied by
  ET_DROPOUT_HD float factor(uint32_t key, int64_t col) const {
    return keep(key, col) ? keep_scale : 0.0f;
  }
  // x scaled when kept, else 0
  ET_DROPOUT_HD float apply(uint32_t key, int64_t col, float x) const {
    return keep(key, col) ? x * keep_scale : 0.0f;
  }
};

// The mask of a site; its p must be in [0, 1) (otherwise an error naming the op).
inline DropoutMask dropout_mask(const DropoutSite& d, const char* op) {
  ET_CHECK(d.p >= 0 && d.p < 1, op, ": dropout probability must be in [0, 1), got ", d.p);
  return {dropout_seed32(d.seed), dropout_threshold(d.p), 1.0f / (1.0f - d.p)};
}

}  // namespace et
