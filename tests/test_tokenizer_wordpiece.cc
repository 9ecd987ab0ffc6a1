// WordPiece parity with Hugging Face tokenizers on the tokenizer fixtures (real BERT vocab,
// real text and edge cases): ids with and without special tokens, truncation and offsets.
#include <gtest/gtest.h>

#include "core/error.h"
#include "fixtures.h"
#include "tokenizer/tokenizer.h"

namespace et::test {
namespace {

class WordPieceParity : public ::testing::TestWithParam<std::string> {};

TEST_P(WordPieceParity, MatchesHuggingFace) {
  std::string dir = fixtures_root() + "/tokenizers/" + GetParam();
  SKIP_WITHOUT_FIXTURES(dir);
  Tokenizer tok = load_tokenizer(dir);
  json cases = read_json_file(dir + "/cases.json");
  int max_len = cases.value("truncation_max_length", 128);
  int n = 0;
  for (const auto& c : cases["cases"]) {
    std::string text = c["text"].get<std::string>();
    Encoding e = encode(tok, text, true);
    EXPECT_EQ(e.ids, c["ids"].get<std::vector<int32_t>>()) << "text: " << text;
    if (c.contains("offsets")) {
      auto off = c["offsets"].get<std::vector<std::pair<int32_t, int32_t>>>();
      EXPECT_EQ(e.offsets, off) << "text: " << text;
    }
    EXPECT_EQ(encode(tok, text, false).ids, c["ids_no_special"].get<std::vector<int32_t>>())
        << "text: " << text;
    EXPECT_EQ(encode(tok, text, true, max_len).ids, c["ids_truncated"].get<std::vector<int32_t>>())
        << "text: " << text;
    ++n;
  }
  EXPECT_GT(n, 100);
}

INSTANTIATE_TEST_SUITE_P(Bert, WordPieceParity,
                         ::testing::Values("bert-uncased-wordpiece", "bert-cased-wordpiece"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (char& ch : s)
                             if (ch == '-') ch = '_';
                           return s;
                         });

// vocab.txt alone must tokenize like the tokenizer.json built from it.
TEST(WordPiece, VocabTxtFallbackMatchesTokenizerJson) {
  std::string dir = fixtures_root() + "/tokenizers/bert-uncased-wordpiece";
  std::string vocab = std::string(EMBEDTUNE_SOURCE_DIR) + "/../shared/data/tokenizers/vocab.txt";
  SKIP_WITHOUT_FIXTURES(dir);
  if (!file_exists(vocab)) GTEST_SKIP() << "skipped: no " << vocab;
  std::string tmp = temp_dir("vocab_fallback");
  write_text_atomic(tmp + "/vocab.txt", read_text_file(vocab));
  Tokenizer from_txt = load_tokenizer(tmp);
  Tokenizer from_json = load_tokenizer(dir);
  json cases = read_json_file(dir + "/cases.json");
  for (const auto& c : cases["cases"]) {
    std::string text = c["text"].get<std::string>();
    EXPECT_EQ(encode(from_txt, text).ids, encode(from_json, text).ids) << text;
  }
}

TEST(WordPiece, RobustToBadInput) {
  json j = {{"model", {{"type", "WordPiece"}, {"vocab", {{"[UNK]", 0}, {"a", 1}, {"##b", 2}}}}},
            {"normalizer", {{"type", "BertNormalizer"}}},
            {"pre_tokenizer", {{"type", "BertPreTokenizer"}}}};
  Tokenizer t = parse_tokenizer_json(j, "test.json");
  EXPECT_EQ(encode(t, "ab a").ids, (std::vector<int32_t>{1, 2, 1}));
  EXPECT_EQ(encode(t, "").ids.size(), 0u);
  EXPECT_EQ(encode(t, "\xff\xfe a").ids, (std::vector<int32_t>{1}));  // invalid UTF-8 dropped
  std::string big(1 << 20, 'a');
  EXPECT_EQ(encode(t, big).ids, (std::vector<int32_t>{0}));  // over max_input_chars_per_word
  EXPECT_EQ(encode(t, big, true, 8).ids.size(), 1u);
}

TEST(WordPiece, MalformedTokenizerJsonNamesTheField) {
  auto msg = [](const json& j) {
    try {
      parse_tokenizer_json(j, "tok.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(msg(json::object()).find("'model'"), std::string::npos);
  EXPECT_NE(msg({{"model", {{"type", "WordPiece"}, {"vocab", 3}}}}).find("model.vocab"),
            std::string::npos);
  EXPECT_NE(msg({{"model", {{"type", "WordPiece"}, {"vocab", {{"x", 0}}}}}}).find("unk_token"),
            std::string::npos);
  json j = {{"model", {{"type", "WordPiece"}, {"vocab", {{"[UNK]", 0}}}}},
            {"normalizer", {{"type", "Fancy"}}}};
  EXPECT_NE(msg(j).find("normalizer.type 'Fancy'"), std::string::npos);
}

}  // namespace
}  // namespace et::test
