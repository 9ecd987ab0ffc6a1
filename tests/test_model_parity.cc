// Parity of the CPU reference forward with the fixtures: sentence embeddings of every column
// and the token-level hidden state, for both sentence-transformers folder layouts.
#include <gtest/gtest.h>

#include "fixtures.h"
#include "io/safetensors.h"
#include "model/sentence_model.h"
#include "ops/cpu/cpu_backend.h"

namespace et::test {
namespace {

struct Case {
  std::string arch, layout;
  friend void PrintTo(const Case& c, std::ostream* os) { *os << c.arch << "/" << c.layout; }
};

std::vector<Case> cases() {
  std::vector<Case> out;
  for (const auto& a : model_archs())
    for (const char* l : {"model", "model_saved_by_reference"}) out.push_back({a, l});
  return out;
}

std::vector<std::vector<int32_t>> column(const json& inputs, const std::string& name) {
  return inputs.at(name).get<std::vector<std::vector<int32_t>>>();
}

class Parity : public ::testing::TestWithParam<Case> {};

TEST_P(Parity, EmbeddingsAndHiddenState) {
  const Case& c = GetParam();
  std::string root = model_fixture(c.arch);
  SKIP_WITHOUT_FIXTURES(root);
  auto be = make_cpu_backend();
  auto m = load_sentence_model(root + "/" + c.layout, *be);
  json inputs = read_json_file(root + "/inputs.json");
  TensorFile exp = read_safetensors(root + "/expected.safetensors");
  for (const char* col : {"anchor", "positive", "negative"}) {
    PackedBatch b;
    for (const auto& ids : column(inputs, col)) b.add(ids);
    Tensor emb = embed_forward(*be, *m, b, nullptr, nullptr);
    double err = rel_error(emb, to_f32(exp.at(std::string("emb.") + col)));
    EXPECT_LT(err, 2e-5) << c.arch << "/" << c.layout << " emb." << col;
  }
  PackedBatch one;
  one.add(column(inputs, "anchor")[0]);
  Tensor hidden = encoder_forward(*be, m->encoder, one, nullptr, nullptr);
  EXPECT_LT(rel_error(hidden, to_f32(exp.at("hidden.anchor0"))), 2e-5) << c.arch;
}

// A packed batch must give each sequence exactly what it gets alone.
TEST_P(Parity, PackedBatchEqualsOneAtATime) {
  const Case& c = GetParam();
  std::string root = model_fixture(c.arch);
  SKIP_WITHOUT_FIXTURES(root);
  auto be = make_cpu_backend();
  auto m = load_sentence_model(root + "/" + c.layout, *be);
  json inputs = read_json_file(root + "/inputs.json");
  PackedBatch all;
  std::vector<std::vector<int32_t>> seqs;
  for (const char* col : {"anchor", "positive", "negative"})
    for (const auto& ids : column(inputs, col)) {
      all.add(ids);
      seqs.push_back(ids);
    }
  Tensor batched = embed_forward(*be, *m, all, nullptr, nullptr);
  const int64_t d = batched.dim(1);
  for (size_t i = 0; i < seqs.size(); ++i) {
    PackedBatch one;
    one.add(seqs[i]);
    Tensor alone = embed_forward(*be, *m, one, nullptr, nullptr);
    EXPECT_LT(rel_error(batched.f32() + i * d, alone.f32(), d), 1e-6) << c.arch << " row " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, Parity, ::testing::ValuesIn(cases()), [](const auto& info) {
  std::string n = info.param.arch + "_" + info.param.layout;
  for (char& ch : n)
    if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return n;
});

}  // namespace
}  // namespace et::test
