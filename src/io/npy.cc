#include "io/npy.h"

#include <cstring>

#include "core/error.h"
#include "io/files.h"

namespace et {

void write_npy(const std::string& path, const Tensor& t) {
  ET_CHECK(t.dtype == DType::F32 && t.device == Device::CPU, "write_npy: needs a host F32 tensor");
  std::string shape = "(";
  for (size_t i = 0; i < t.shape.size(); ++i) shape += std::to_string(t.shape[i]) + ", ";
  if (t.shape.size() > 1) shape.resize(shape.size() - 2);
  shape += ")";
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }";
  while ((10 + header.size() + 1) % 64 != 0) header.push_back(' ');
  header.push_back('\n');
  std::string buf = "\x93NUMPY";
  buf.push_back(1);
  buf.push_back(0);
  uint16_t n = static_cast<uint16_t>(header.size());
  buf.push_back(static_cast<char>(n & 0xff));
  buf.push_back(static_cast<char>(n >> 8));
  buf += header;
  buf.append(static_cast<const char*>(t.data), t.nbytes());
  write_file_atomic(path, buf.data(), buf.size());
}

}  // namespace et
