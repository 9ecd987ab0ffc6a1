// Binding named weights of a ParamStore to model modules, with shape checks whose errors name
// the weight and the file.
#pragma once

#include <string>

#include "core/error.h"
#include "model/linear.h"
#include "model/param.h"

namespace et {

struct WeightBinder {
  ParamStore& store;
  std::string prefix, where;

  Param* need(const std::string& name) {
    Param* p = store.find(prefix + name);
    ET_CHECK(p, where, ": missing weight '", prefix + name, "'");
    return p;
  }
  Param* maybe(const std::string& name) { return store.find(prefix + name); }

  Linear linear(const std::string& name, int64_t in, int64_t out, bool bias = true) {
    Linear l;
    l.name = prefix + name;
    l.in = in;
    l.out = out;
    l.weight = need(name + ".weight");
    ET_CHECK(l.weight->value.shape == Shape({out, in}), where, ": weight '", l.weight->name,
             "' has shape ", shape_str(l.weight->value.shape), ", expected ", shape_str({out, in}));
    if (bias) {
      l.bias = need(name + ".bias");
      ET_CHECK(l.bias->value.numel() == out, where, ": bias '", l.bias->name, "' has ",
               l.bias->value.numel(), " values, expected ", out);
    }
    return l;
  }
  Param* vec(const std::string& name, int64_t n) {
    Param* p = need(name);
    ET_CHECK(p->value.numel() == n, where, ": '", p->name, "' has ", p->value.numel(),
             " values, expected ", n);
    return p;
  }
  Param* table(const std::string& name, int64_t cols) {
    Param* p = need(name);
    ET_CHECK(p->value.ndim() == 2 && p->value.dim(1) == cols, where, ": '", p->name, "' has shape ",
             shape_str(p->value.shape), ", expected [rows, ", cols, "]");
    return p;
  }
};

// The gradient buffer of a trainable parameter, else null (frozen or absent).
inline Tensor* grad_of(Param* p) {
  return p && p->trainable ? &p->grad : nullptr;
}

}  // namespace et
