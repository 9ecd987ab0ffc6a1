// safetensors reader/writer: round trips of every dtype, sharded folders, and clear errors for
// corrupt, truncated and inconsistent files.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "fixtures.h"
#include "io/safetensors.h"

namespace et::test {
namespace {

void write_raw(const std::string& path, const std::string& header, const std::string& data) {
  std::ofstream f(path, std::ios::binary);
  uint64_t n = header.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f << header << data;
}

// Expects read_safetensors(path) to throw an et::Error whose text contains `needle`.
void expect_error(const std::string& path, const std::string& needle) {
  try {
    read_safetensors(path);
    ADD_FAILURE() << "no error for " << path;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

TEST(Safetensors, RoundTripAllDtypes) {
  std::string dir = temp_dir("st_roundtrip");
  std::vector<std::pair<std::string, Tensor>> ts;
  const DType all[] = {DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64,
                       DType::I32, DType::I8,  DType::U8,  DType::BOOL};
  int k = 0;
  for (DType d : all) {
    Tensor t = cpu_empty({3, 5}, d);
    auto* p = static_cast<uint8_t*>(t.data);
    for (size_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<uint8_t>(37 * i + 11 * k + 1);
    ts.emplace_back(std::string("t.") + dtype_name(d), t);
    ++k;
  }
  write_safetensors(dir + "/a.safetensors", ts, {{"format", "pt"}});
  TensorFile f = read_safetensors(dir + "/a.safetensors");
  EXPECT_EQ(f.metadata.at("format"), "pt");
  for (const auto& [name, t] : ts) {
    const Tensor& r = f.at(name);
    EXPECT_EQ(r.dtype, t.dtype);
    EXPECT_EQ(r.shape, t.shape);
    EXPECT_EQ(std::memcmp(r.data, t.data, t.nbytes()), 0) << name;
  }
}

TEST(Safetensors, ConvertsFloatsToF32) {
  Tensor bf = cpu_empty({2}, DType::BF16), hf = cpu_empty({2}, DType::F16);
  static_cast<uint16_t*>(bf.data)[0] = f32_to_bf16(1.5f);
  static_cast<uint16_t*>(bf.data)[1] = f32_to_bf16(-3.25f);
  static_cast<uint16_t*>(hf.data)[0] = 0x3e00;  // 1.5
  static_cast<uint16_t*>(hf.data)[1] = 0xc280;  // -3.25
  for (const Tensor& t : {bf, hf}) {
    Tensor f = to_f32(t);
    EXPECT_FLOAT_EQ(f.f32()[0], 1.5f);
    EXPECT_FLOAT_EQ(f.f32()[1], -3.25f);
  }
}

TEST(Safetensors, ShardedIndex) {
  std::string dir = temp_dir("st_sharded");
  Tensor a = cpu_from({1, 2, 3}, {3}), b = cpu_from({4, 5}, {2});
  write_safetensors(dir + "/model-00001-of-00002.safetensors", {{"a", a}});
  write_safetensors(dir + "/model-00002-of-00002.safetensors", {{"b", b}});
  write_json_atomic(dir + "/model.safetensors.index.json",
                    json{{"weight_map",
                          {{"a", "model-00001-of-00002.safetensors"},
                           {"b", "model-00002-of-00002.safetensors"}}}});
  TensorFile f = read_model_weights(dir);
  EXPECT_EQ(f.at("a").f32()[2], 3.0f);
  EXPECT_EQ(f.at("b").f32()[1], 5.0f);
  write_json_atomic(dir + "/model.safetensors.index.json",
                    json{{"weight_map", {{"c", "model-00001-of-00002.safetensors"}}}});
  EXPECT_THROW(read_model_weights(dir), Error);
}

TEST(Safetensors, ErrorsNameTheProblem) {
  std::string dir = temp_dir("st_errors");
  std::string p = dir + "/x.safetensors";
  { std::ofstream(p, std::ios::binary) << "abc"; }
  expect_error(p, "truncated");
  write_raw(p, "{}", "");
  p = dir + "/big.safetensors";
  {
    std::ofstream f(p, std::ios::binary);
    uint64_t n = 1000;
    f.write(reinterpret_cast<const char*>(&n), 8);
    f << "{}";
  }
  expect_error(p, "exceeds file size");
  p = dir + "/json.safetensors";
  write_raw(p, "{not json", "");
  expect_error(p, "not valid JSON");
  p = dir + "/dtype.safetensors";
  write_raw(p, R"({"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", "ab");
  expect_error(p, "unsupported dtype 'F8_E4M3'");
  p = dir + "/size.safetensors";
  write_raw(p, R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", "abcdefgh");
  expect_error(p, "need 12");
  p = dir + "/range.safetensors";
  write_raw(p, R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "abcd");
  expect_error(p, "outside the data section");
  p = dir + "/overlap.safetensors";
  write_raw(p,
            R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
            R"("b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})",
            "abcdefgh");
  expect_error(p, "overlap");
  p = dir + "/fields.safetensors";
  write_raw(p, R"({"a":{"dtype":"F32"}})", "");
  expect_error(p, "needs dtype, shape and data_offsets");
  EXPECT_THROW(read_safetensors(dir + "/missing.safetensors"), Error);
  EXPECT_THROW(read_model_weights(dir + "/nothing"), Error);
}

TEST(Safetensors, AtomicWriteLeavesNoTemporaries) {
  std::string dir = temp_dir("st_atomic");
  write_safetensors(dir + "/a.safetensors", {{"x", cpu_from({1}, {1})}});
  write_safetensors(dir + "/a.safetensors", {{"x", cpu_from({2}, {1})}});
  int files = 0;
  for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator(dir)) ++files;
  EXPECT_EQ(files, 1);
  EXPECT_EQ(read_safetensors(dir + "/a.safetensors").at("x").f32()[0], 2.0f);
}

}  // namespace
}  // namespace et::test
