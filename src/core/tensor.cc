#include "core/tensor.h"

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace et {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F64:
    case DType::I64:
      return 8;
    case DType::F32:
    case DType::I32:
      return 4;
    case DType::F16:
    case DType::BF16:
      return 2;
    case DType::I8:
    case DType::U8:
    case DType::BOOL:
      return 1;
  }
  return 0;
}

static const char* kNames[] = {"F64", "F32", "F16", "BF16", "I64", "I32", "I8", "U8", "BOOL"};

const char* dtype_name(DType t) {
  return kNames[static_cast<int>(t)];
}

bool dtype_from_name(const std::string& name, DType* out) {
  for (int i = 0; i < 9; ++i) {
    if (name == kNames[i]) {
      *out = static_cast<DType>(i);
      return true;
    }
  }
  return false;
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

std::string shape_str(const Shape& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

float* Tensor::f32() const {
  ET_CHECK(dtype == DType::F32, "tensor dtype is ", dtype_name(dtype), ", expected F32");
  ET_CHECK(pitch == 0, "a strided view ", shape_str(shape), " (row pitch ", pitch,
           ") where a contiguous tensor is expected");
  return static_cast<float*>(data);
}

int32_t* Tensor::i32() const {
  ET_CHECK(dtype == DType::I32, "tensor dtype is ", dtype_name(dtype), ", expected I32");
  ET_CHECK(pitch == 0, "a strided view ", shape_str(shape),
           " where a contiguous tensor is expected");
  return static_cast<int32_t*>(data);
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  ET_CHECK(!shape.empty() && begin >= 0 && begin <= end && end <= shape[0], "row range [", begin,
           ", ", end, ") out of ", shape_str(shape));
  Tensor v = *this;
  v.shape[0] = end - begin;
  const int64_t row_elems = pitch ? pitch : (shape[0] ? numel() / shape[0] : 0);
  v.data =
      static_cast<uint8_t*>(data) + begin * row_elems * static_cast<int64_t>(dtype_size(dtype));
  return v;
}

Tensor Tensor::leading_cols(int64_t n) const {
  ET_CHECK(ndim() == 2 && n >= 0 && n <= shape[1], "leading_cols(", n, ") of ", shape_str(shape));
  Tensor v = *this;
  v.pitch = row_pitch();
  v.shape[1] = n;
  if (v.pitch == n) v.pitch = 0;
  return v;
}

Tensor Tensor::column_view(int64_t begin, int64_t end) const {
  ET_CHECK(ndim() == 2 && begin >= 0 && begin <= end && end <= shape[1], "column range [", begin,
           ", ", end, ") of ", shape_str(shape));
  Tensor v = leading_cols(end);
  v.pitch = row_pitch();
  v.shape[1] = end - begin;
  v.data = static_cast<uint8_t*>(data) + begin * static_cast<int64_t>(dtype_size(dtype));
  if (v.pitch == v.shape[1]) v.pitch = 0;
  return v;
}

Tensor Tensor::pitch_rows() const {
  ET_CHECK(ndim() == 2, "pitch_rows of ", shape_str(shape), ": not 2-D");
  Tensor v = *this;
  v.shape[1] = row_pitch();
  v.pitch = 0;
  return v;
}

Tensor Tensor::reshape(const Shape& s) const {
  ET_CHECK(shape_numel(s) == numel(), "cannot reshape ", shape_str(shape), " to ", shape_str(s));
  ET_CHECK(pitch == 0, "cannot reshape the strided view ", shape_str(shape), " (row pitch ", pitch,
           ")");
  Tensor v = *this;
  v.shape = s;
  return v;
}

Tensor cpu_empty(const Shape& shape, DType dtype) {
  Tensor t;
  t.dtype = dtype;
  t.shape = shape;
  size_t bytes = (t.nbytes() + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes ? bytes : 64);
  ET_CHECK(p != nullptr, "out of host memory allocating ", bytes, " bytes");
  t.owner = std::shared_ptr<void>(p, std::free);
  t.data = p;
  return t;
}

Tensor cpu_zeros(const Shape& shape, DType dtype) {
  Tensor t = cpu_empty(shape, dtype);
  std::memset(t.data, 0, t.nbytes());
  return t;
}

Tensor cpu_from(const std::vector<float>& values, const Shape& shape) {
  ET_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "value count ", values.size(),
           " does not match shape ", shape_str(shape));
  Tensor t = cpu_empty(shape);
  std::memcpy(t.data, values.data(), t.nbytes());
  return t;
}

Tensor cpu_from_i32(const std::vector<int32_t>& values, const Shape& shape) {
  ET_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "value count ", values.size(),
           " does not match shape ", shape_str(shape));
  Tensor t = cpu_empty(shape, DType::I32);
  std::memcpy(t.data, values.data(), t.nbytes());
  return t;
}

float bf16_to_f32(uint16_t v) {
  uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_bf16(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if (std::isnan(v)) return 0x7fc0;
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  float v;
  if (exp == 0) {
    v = std::ldexp(static_cast<float>(man), -24);
  } else if (exp == 31) {
    v = man ? NAN : INFINITY;
  } else {
    v = std::ldexp(static_cast<float>(man | 0x400), static_cast<int>(exp) - 25);
  }
  return sign ? -v : v;
}

Tensor to_f32(const Tensor& t) {
  ET_CHECK(t.device == Device::CPU, "to_f32 needs a host tensor");
  Tensor r = cpu_empty(t.shape);
  float* o = r.f32();
  int64_t n = t.numel();
  switch (t.dtype) {
    case DType::F32:
      std::memcpy(o, t.data, t.nbytes());
      break;
    case DType::F64:
      for (int64_t i = 0; i < n; ++i)
        o[i] = static_cast<float>(static_cast<const double*>(t.data)[i]);
      break;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) o[i] = bf16_to_f32(static_cast<const uint16_t*>(t.data)[i]);
      break;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) o[i] = f16_to_f32(static_cast<const uint16_t*>(t.data)[i]);
      break;
    default:
      fail("cannot convert a ", dtype_name(t.dtype), " tensor to F32");
  }
  return r;
}

Tensor cpu_clone(const Tensor& t) {
  ET_CHECK(t.pitch == 0, "cannot copy the strided view ", shape_str(t.shape), " (row pitch ",
           t.pitch, ")");
  Tensor r = cpu_empty(t.shape, t.dtype);
  std::memcpy(r.data, t.data, t.nbytes());
  return r;
}

}  // namespace et
