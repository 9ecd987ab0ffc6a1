// NumPy .npy writer (format version 1.0: magic, header dict padded to 64 bytes, raw data).
#pragma once

#include <string>

#include "core/tensor.h"

namespace et {

void write_npy(const std::string& path, const Tensor& host_f32);

}  // namespace et
