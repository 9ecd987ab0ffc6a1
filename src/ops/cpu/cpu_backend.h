// The CPU reference backend: fp32, straightforward loops (OpenBLAS for matrix products),
// parallel over rows/sequences with OpenMP where it is free of races.
#pragma once

#include <memory>

#include "ops/backend.h"

namespace et {

std::unique_ptr<Backend> make_cpu_backend();

}  // namespace et
