// safetensors (https://github.com/huggingface/safetensors, format described in its README):
//   [u64 little-endian N][N bytes of JSON header][data]
//   header: {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//            "__metadata__": {"key": "value"}}; offsets are relative to the start of data.
// The reader maps the file and returns views into it; every structural inconsistency is an
// error naming the file and the tensor.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "io/files.h"

namespace et {

struct TensorFile {
  std::string path;
  std::map<std::string, Tensor> tensors;  // views into the mapping (owner keeps it alive)
  std::map<std::string, std::string> metadata;

  const Tensor& at(const std::string& name) const;
  bool has(const std::string& name) const { return tensors.count(name) != 0; }
};

TensorFile read_safetensors(const std::string& path);

// Reads all weights of a model folder: `model.safetensors`, or the shards listed in
// `model.safetensors.index.json` ({"weight_map": {"name": "shard file"}}).
TensorFile read_model_weights(const std::string& dir);

// Writes host tensors (any dtype) atomically; names are stored sorted.
void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace et
