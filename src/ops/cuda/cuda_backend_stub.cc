// Built when CUDA is off.
#include "core/error.h"
#include "ops/cuda/cuda_backend.h"

namespace et {

std::unique_ptr<Backend> make_cuda_backend(int, DType) {
  fail("this embedtune was built without CUDA (rebuild with a CUDA toolkit, EMBEDTUNE_CUDA=ON)");
}

}  // namespace et
