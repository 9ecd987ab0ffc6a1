// Deterministic random numbers (xoshiro256**, seeded by splitmix64): small state that
// checkpoints can save and restore exactly, identical on every platform.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace et {

struct Rng {
  std::array<uint64_t, 4> s{};

  Rng() { reseed(0); }
  explicit Rng(uint64_t seed) { reseed(seed); }
  void reseed(uint64_t seed);
  uint64_t next_u64();
  double uniform();            // [0, 1)
  uint64_t below(uint64_t n);  // uniform integer in [0, n), unbiased
  template <typename T>
  void shuffle(std::vector<T>& v) {  // Fisher-Yates
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[below(i)]);
  }
};

}  // namespace et
