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

// Appending a batch equals adding its sequences one by one, prompt lengths included where only
// one side has them; token ids outside the table are named.
TEST(PackedBatchTest, AppendEqualsAddingEachSequence) {
  const std::vector<std::vector<int32_t>> first{{1, 2, 3}, {4}}, second{{5, 6}, {7, 8, 9, 10}};
  for (bool prompts_first : {false, true})
    for (bool prompts_second : {false, true}) {
      PackedBatch a, b, one_by_one;
      for (size_t i = 0; i < first.size(); ++i) {
        const int32_t p = prompts_first ? static_cast<int32_t>(i + 1) : 0;
        a.add(first[i], p);
        one_by_one.add(first[i], p);
      }
      for (size_t i = 0; i < second.size(); ++i) {
        const int32_t p = prompts_second ? static_cast<int32_t>(i + 2) : 0;
        b.add(second[i], p);
        one_by_one.add(second[i], p);
      }
      a.append(b);
      EXPECT_EQ(a.ids, one_by_one.ids);
      EXPECT_EQ(a.cu_seqlens, one_by_one.cu_seqlens);
      EXPECT_EQ(a.max_seqlen, one_by_one.max_seqlen);
      EXPECT_EQ(a.prompt_lengths, one_by_one.prompt_lengths)
          << "prompts first " << prompts_first << ", second " << prompts_second;
    }
  PackedBatch bad;
  bad.add({3, 2});
  bad.add({1, 11, 4});
  EXPECT_NO_THROW(check_token_ids(bad, 12));
  try {
    check_token_ids(bad, 11);
    FAIL() << "an id past the table passed";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("token id 11 at position 3"), std::string::npos)
        << e.what();
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
