#include <cmath>
#include <cstdlib>

#include "ops/backend.h"

namespace et {

// transformers MPNetEncoder.relative_position_bucket, with n = -(j - i). The logarithmic
// branch is evaluated in float32 as torch does (n.float()), so bucket edges match exactly.
int relative_position_bucket(int relative_position, int num_buckets, int max_distance) {
  int ret = 0;
  int n = -relative_position;
  num_buckets /= 2;
  if (n < 0) ret += num_buckets;
  n = std::abs(n);
  int max_exact = num_buckets / 2;
  if (n < max_exact) return ret + n;
  float scaled = std::log(static_cast<float>(n) / static_cast<float>(max_exact)) /
                 static_cast<float>(std::log(static_cast<double>(max_distance) / max_exact)) *
                 static_cast<float>(num_buckets - max_exact);
  int large = max_exact + static_cast<int>(scaled);
  if (large > num_buckets - 1) large = num_buckets - 1;
  return ret + large;
}

}  // namespace et
