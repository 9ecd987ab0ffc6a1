// The CUDA backend: the op interface on an NVIDIA GPU. Tensors live in device memory from a
// caching allocator (freed blocks are reused, so a training step allocates nothing after the
// first); matrix products go through cuBLAS; attention is a variable-length fused kernel
// (online softmax forward, recomputing backward) of our own.
#pragma once

#include <memory>

#include "ops/backend.h"

namespace et {

// Throws when the build has no CUDA or no device is present.
// `act`: storage type of activations (BF16 by default; F32 for reference runs). The
// environment variable EMBEDTUNE_ACT_DTYPE=f32 selects F32 as well.
std::unique_ptr<Backend> make_cuda_backend(int device = 0, DType act = DType::BF16);
// "cpu" or "cuda".
std::unique_ptr<Backend> make_backend(const std::string& name);

}  // namespace et
