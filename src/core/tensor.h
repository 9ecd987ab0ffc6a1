// Tensor: a typed, shaped view of memory on one device, optionally owning it.
// Layout is always row-major and contiguous; the last dimension is the fastest.
// Packed batches use [total_tokens, hidden] with per-sequence offsets (cu_seqlens).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace et {

enum class DType : uint8_t { F64, F32, F16, BF16, I64, I32, I8, U8, BOOL };
enum class Device : uint8_t { CPU, CUDA };

size_t dtype_size(DType t);
const char* dtype_name(DType t);  // safetensors spelling: "F32", "BF16", ...
bool dtype_from_name(const std::string& name, DType* out);

using Shape = std::vector<int64_t>;
int64_t shape_numel(const Shape& s);
std::string shape_str(const Shape& s);

struct Tensor {
  std::shared_ptr<void> owner;  // keeps the memory alive; null for borrowed views
  void* data = nullptr;
  DType dtype = DType::F32;
  Device device = Device::CPU;
  Shape shape;
  // Row pitch in elements of a 2-D view whose rows are not adjacent (leading_cols), 0 when the
  // tensor is contiguous. Only matrix products take such views (as the BLAS leading
  // dimension); every other op requires contiguous tensors and says so.
  int64_t pitch = 0;

  int64_t numel() const { return shape_numel(shape); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  int64_t dim(int i) const { return shape[i < 0 ? shape.size() + i : i]; }
  int ndim() const { return static_cast<int>(shape.size()); }
  bool defined() const { return data != nullptr || (!shape.empty() && numel() == 0); }

  // Typed access; checks dtype and device so that a mixup is an error, not garbage.
  float* f32() const;
  int32_t* i32() const;

  // A view of rows [begin, end) of the first dimension, sharing memory.
  Tensor rows(int64_t begin, int64_t end) const;
  // A view of the first `n` columns of a 2-D tensor (rows keep their pitch).
  Tensor leading_cols(int64_t n) const;
  // A view of columns [begin, end) of a 2-D tensor (rows keep their pitch).
  Tensor column_view(int64_t begin, int64_t end) const;
  // A 2-D view's rows in full, [rows, row_pitch()] from its first element, contiguous: the buffer
  // behind a strided view (a Linear's input or weight with its spare columns, model/linear.h).
  Tensor pitch_rows() const;
  // Elements from one row to the next of a 2-D tensor: the BLAS leading dimension.
  int64_t row_pitch() const { return pitch ? pitch : shape.back(); }
  // A view with another shape of the same element count.
  Tensor reshape(const Shape& s) const;
};

// Host tensors (CPU memory, 64-byte aligned).
Tensor cpu_empty(const Shape& shape, DType dtype = DType::F32);
Tensor cpu_zeros(const Shape& shape, DType dtype = DType::F32);
Tensor cpu_from(const std::vector<float>& values, const Shape& shape);
Tensor cpu_from_i32(const std::vector<int32_t>& values, const Shape& shape);
// Converts any floating dtype to a new F32 host tensor (F64/F16/BF16/F32 sources).
Tensor to_f32(const Tensor& t);
// Deep copy on the host.
Tensor cpu_clone(const Tensor& t);

// bf16/f16 <-> f32 conversions (round to nearest even).
float bf16_to_f32(uint16_t v);
uint16_t f32_to_bf16(float v);
float f16_to_f32(uint16_t v);

}  // namespace et
