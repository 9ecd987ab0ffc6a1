// Inverted dropout on the GPU with the masks of ops/dropout_mask.h (the CPU reference's, element
// for element): y = (accumulate ? y : 0) + x * keep(first_row + r, c) / (1 - p) over x viewed
// as [rows, cols]. Regenerated from the seed, never stored.
#pragma once

#include <cstdint>

#include "ops/cuda/operand.cuh"
#include "ops/dropout_mask.h"

namespace et::cuda {

void dropout_rows(Ptr x, const DropoutSite& d, int64_t first_row, Ptr y, bool accumulate,
                  int64_t rows, int64_t cols);

}  // namespace et::cuda
