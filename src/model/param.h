// Parameters: a named tensor on the backend device, with a gradient buffer when trainable.
#pragma once

#include <deque>
#include <string>

#include "core/tensor.h"

namespace et {

struct Param {
  std::string name;  // transformers name inside its module, e.g. "encoder.layer.0.attention..."
  Tensor value;
  Tensor grad;  // defined only while trainable
  bool trainable = false;
  // Defined while `value` is a bf16 device copy of a frozen weight (LoRA training on a backend
  // whose products run in bf16 anyway): the fp32 values, on the host, which exports and merges
  // read (see store_frozen_weights_bf16).
  Tensor host_f32;
  // On a backend whose products run in bf16: an fp32 `value` that feeds products (LoRA factors,
  // biases) rounded to bf16, so that each product does not convert it again. Made at the start
  // of every encoder forward (refresh_product_copies), so it equals the values the optimizer, a
  // checkpoint load or a merge last wrote; read through product_operand.
  Tensor value_bf16;
};

// The tensor a matrix product reads for `p`: its bf16 copy where one is kept, else its value.
inline const Tensor& product_operand(const Param& p) {
  return p.value_bf16.defined() ? p.value_bf16 : p.value;
}

// Owns parameters at stable addresses (modules keep Param pointers).
struct ParamStore {
  std::deque<Param> params;
  Param* add(std::string name, Tensor value) {
    params.push_back(Param{std::move(name), std::move(value), Tensor{}, false, Tensor{}, Tensor{}});
    return &params.back();
  }
  Param* find(const std::string& name) {
    for (Param& p : params)
      if (p.name == name) return &p;
    return nullptr;
  }
};

}  // namespace et
