// Elementwise activations and their derivatives on the device, by code: the order of
// et::Act (ops/backend.h), so that a kernel templated on int(act) or taking it at run time agrees
// with the host enum. f(x) and f'(x) in fp32; GELU "erf" is x Phi(x), GELU "tanh" the
// approximation 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), SiLU x sigmoid(x).
#pragma once

#include <type_traits>

#include "core/error.h"
#include "ops/cuda/cuda_common.h"

namespace et::cuda {

__device__ __forceinline__ float act_f(int act, float x) {
  switch (act) {
    case 0:
      return x;
    case 1:
      return tanhf(x);
    case 2:
      return x > 0 ? x : 0;
    case 3:
      return 1.0f / (1.0f + __expf(-x));
    case 4:
      return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case 5: {
      float u = 0.79788456080286536f * (x + 0.044715f * x * x * x);
      return 0.5f * x * (1.0f + tanhf(u));
    }
    default:
      return x / (1.0f + __expf(-x));
  }
}

__device__ __forceinline__ float act_df(int act, float x) {
  switch (act) {
    case 0:
      return 1;
    case 1: {
      float t = tanhf(x);
      return 1 - t * t;
    }
    case 2:
      return x > 0 ? 1.0f : 0.0f;
    case 3: {
      float s = 1.0f / (1.0f + __expf(-x));
      return s * (1 - s);
    }
    case 4:
      return 0.5f * (1.0f + erff(x * 0.70710678118654752f)) +
             x * 0.39894228040143268f * __expf(-0.5f * x * x);
    case 5: {
      float u = 0.79788456080286536f * (x + 0.044715f * x * x * x);
      float t = tanhf(u);
      return 0.5f * (1.0f + t) +
             0.5f * x * (1 - t * t) * 0.79788456080286536f * (1.0f + 0.134145f * x * x);
    }
    default: {
      float s = 1.0f / (1.0f + __expf(-x));
      return s * (1 + x * (1 - s));
    }
  }
}

// with_constant_in over the FFN activations' codes (ReLU, GELU erf and tanh, SiLU): the kernels
// that fuse an activation into a LoRA product are built for these.
template <typename F>
bool with_ffn_act(int code, F&& f) {
  return with_constant_in<2, 4, 5, 6>(code, f);
}

// The same over every activation code (et::Act's seven).
template <typename F>
void with_act_code(int code, F&& f) {
  const bool known = with_constant_in<0, 1, 2, 3, 4, 5, 6>(code, f);
  ET_CHECK(known, "activation code ", code, " is not one of et::Act's");
}

}  // namespace et::cuda
