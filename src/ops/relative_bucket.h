// MPNet's relative position bucket, shared by the CPU and CUDA kernels (host and device).
// transformers' MPNetEncoder.relative_position_bucket with n = -(key - query): bidirectional,
// half the buckets per direction, exact below max_exact = buckets / 4, logarithmic up to
// max_distance. The logarithmic branch runs in float32 as torch does (n.float()), so bucket
// edges match exactly.
#pragma once

#include <cmath>
#include <cstdlib>

#ifdef __CUDACC__
#define ET_HOST_DEVICE __host__ __device__
#else
#define ET_HOST_DEVICE
#endif

namespace et {

ET_HOST_DEVICE inline int relative_position_bucket(int relative_position, int num_buckets,
                                                   int max_distance) {
  int ret = 0;
  int n = -relative_position;
  num_buckets /= 2;
  if (n < 0) ret += num_buckets;
  n = n < 0 ? -n : n;
  const int max_exact = num_buckets / 2;
  if (n < max_exact) return ret + n;
  const float scaled = logf(static_cast<float>(n) / static_cast<float>(max_exact)) /
                       static_cast<float>(log(static_cast<double>(max_distance) / max_exact)) *
                       static_cast<float>(num_buckets - max_exact);
  const int large = max_exact + static_cast<int>(scaled);
  return ret + (large < num_buckets - 1 ? large : num_buckets - 1);
}

}  // namespace et
