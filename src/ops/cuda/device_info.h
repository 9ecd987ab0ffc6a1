// Which CUDA devices this build can use (0 when built without CUDA or when none is present).
#pragma once

#include <string>

namespace et {

int cuda_device_count();
std::string cuda_device_name(int index);

}  // namespace et
