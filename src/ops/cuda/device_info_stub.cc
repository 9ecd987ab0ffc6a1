// Built when CUDA is off: no devices.
#include "ops/cuda/device_info.h"

namespace et {

int cuda_device_count() {
  return 0;
}
std::string cuda_device_name(int) {
  return "none";
}

}  // namespace et
