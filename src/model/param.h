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
};

// Owns parameters at stable addresses (modules keep Param pointers).
struct ParamStore {
  std::deque<Param> params;
  Param* add(std::string name, Tensor value) {
    params.push_back(Param{std::move(name), std::move(value), Tensor{}, false, Tensor{}});
    return &params.back();
  }
  Param* find(const std::string& name) {
    for (Param& p : params)
      if (p.name == name) return &p;
    return nullptr;
  }
};

}  // namespace et
