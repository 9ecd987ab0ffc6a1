// Tokenizer parity with Hugging Face tokenizers on the tokenizer fixtures (real tokenizer files,
// real English and Japanese text, edge cases): ids with and without special tokens, truncation
// and offsets, for every pipeline (WordPiece, byte-level BPE, SentencePiece BPE with byte
// fallback, Unigram with the Precompiled normalizer).
#include <gtest/gtest.h>

#include "core/error.h"
#include "core/rng.h"
#include "fixtures.h"
#include "tokenizer/sentencepiece_model.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace et::test {
namespace {

// The error message parse_tokenizer_json gives for `j` (as file "tok.json"), or "no error".
std::string parse_error(const json& j) {
  try {
    parse_tokenizer_json(j, "tok.json");
  } catch (const Error& e) {
    return std::string(e.what());
  }
  return std::string("no error");
}

class TokenizerParity : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerParity, MatchesHuggingFace) {
  std::string dir = fixtures_root() + "/tokenizers/" + GetParam();
  SKIP_WITHOUT_FIXTURES(dir);
  Tokenizer tok = load_tokenizer(dir);
  json cases = read_json_file(dir + "/cases.json");
  int max_len = cases.value("truncation_max_length", 128);
  int n = 0, mismatches = 0;
  for (const auto& c : cases["cases"]) {
    std::string text = c["text"].get<std::string>();
    Encoding e = encode(tok, text, true);
    bool ok = e.ids == c["ids"].get<std::vector<int32_t>>();
    if (c.contains("offsets"))
      ok = ok && e.offsets == c["offsets"].get<std::vector<std::pair<int32_t, int32_t>>>();
    ok = ok && encode(tok, text, false).ids == c["ids_no_special"].get<std::vector<int32_t>>();
    ok = ok &&
         encode(tok, text, true, max_len).ids == c["ids_truncated"].get<std::vector<int32_t>>();
    if (!ok && ++mismatches <= 5) {
      ADD_FAILURE() << GetParam() << ": case " << n << " differs\n  text: " << text
                    << "\n  ours:   " << json(tokens_of(tok, e.ids)).dump() << " "
                    << json(e.offsets).dump() << "\n  theirs: " << c["tokens"].dump() << " "
                    << c.value("offsets", json()).dump();
    }
    ++n;
  }
  EXPECT_EQ(mismatches, 0) << "of " << n << " cases";
  EXPECT_GT(n, 100);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TokenizerParity,
                         ::testing::Values("bert-uncased-wordpiece", "bert-cased-wordpiece",
                                           "gpt2-bytelevel-bpe", "modernbert-style-bpe",
                                           "qwen3-style-bpe", "xlmr-style-unigram",
                                           "xlmr-style-unigram-ja", "gemma-style-spm-bpe"),
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
  EXPECT_NE(parse_error(json::object()).find("'model'"), std::string::npos);
  EXPECT_NE(parse_error({{"model", {{"type", "WordPiece"}, {"vocab", 3}}}}).find("model.vocab"),
            std::string::npos);
  EXPECT_NE(
      parse_error({{"model", {{"type", "WordPiece"}, {"vocab", {{"x", 0}}}}}}).find("unk_token"),
      std::string::npos);
  json j = {{"model", {{"type", "WordPiece"}, {"vocab", {{"[UNK]", 0}}}}},
            {"normalizer", {{"type", "Fancy"}}}};
  EXPECT_NE(parse_error(j).find("normalizer.type 'Fancy'"), std::string::npos);
}

// ByteLevel offset trimming (tokenizers' process_offsets): a token that carries the space
// before a word ('Ġworld') reports the word's characters only.
TEST(TokenizerComponents, ByteLevelTrimOffsets) {
  std::string dir = fixtures_root() + "/tokenizers/gpt2-bytelevel-bpe";
  SKIP_WITHOUT_FIXTURES(dir);
  json j = read_json_file(dir + "/tokenizer.json");
  Tokenizer plain = parse_tokenizer_json(j, "plain");
  j["post_processor"] = {
      {"type", "ByteLevel"}, {"trim_offsets", true}, {"add_prefix_space", false}};
  Tokenizer trimmed = parse_tokenizer_json(j, "trimmed");
  Encoding a = encode(plain, "hello  world"), b = encode(trimmed, "hello  world");
  ASSERT_EQ(a.ids, b.ids);
  ASSERT_GE(a.ids.size(), 2u);
  const auto toks = tokens_of(plain, a.ids);
  EXPECT_NE(a.offsets, b.offsets) << "no token carried a space";
  for (size_t i = 0; i < a.ids.size(); ++i) {
    int lead = 0;
    for (size_t k = 0; k + 1 < toks[i].size() && toks[i].compare(k, 2, "\xC4\xA0") == 0; k += 2)
      ++lead;  // 'Ġ' (U+0120) is two UTF-8 bytes
    EXPECT_EQ(b.offsets[i].first, std::min(a.offsets[i].first + lead, a.offsets[i].second))
        << toks[i];
  }
}

// A SentencePiece BPE .model converted here must give the tokenizer.json transformers made from
// it (gemma-style-spm-bpe was converted from this file): same merges in the same order, same
// ids on every fixture text.
TEST(SentencePieceModel, ConvertsLikeTransformers) {
  std::string root = fixtures_root() + "/tokenizers";
  std::string model = root + "/sp_bpe_bytefallback.model";
  SKIP_WITHOUT_FIXTURES(root + "/gemma-style-spm-bpe");
  if (!file_exists(model)) GTEST_SKIP() << "skipped: no " << model;
  std::string dir = temp_dir("spm_model");
  write_text_atomic(dir + "/tokenizer.model", read_text_file(model));
  json converted = sentencepiece_to_tokenizer_json(dir + "/tokenizer.model");
  json reference = read_json_file(root + "/gemma-style-spm-bpe/tokenizer.json");
  const json& ours = converted["model"]["merges"];
  const json& theirs = reference["model"]["merges"];
  ASSERT_EQ(ours.size(), theirs.size());
  for (size_t i = 0; i < ours.size(); ++i) {
    std::string a = ours[i][0].get<std::string>() + " " + ours[i][1].get<std::string>();
    std::string b = theirs[i].is_string()
                        ? theirs[i].get<std::string>()
                        : theirs[i][0].get<std::string>() + " " + theirs[i][1].get<std::string>();
    ASSERT_EQ(a, b) << "merge " << i;
  }
  Tokenizer from_model = load_tokenizer(dir);
  Tokenizer from_json = load_tokenizer(root + "/gemma-style-spm-bpe");
  json cases = read_json_file(root + "/gemma-style-spm-bpe/cases.json");
  int compared = 0;
  for (const auto& c : cases["cases"]) {
    std::string text = c["text"].get<std::string>();
    // <bos>, <eos>, <mask> were added by transformers' tokenizer class, not the .model
    if (text.find("<bos>") != std::string::npos || text.find("<eos>") != std::string::npos ||
        text.find("<mask>") != std::string::npos)
      continue;
    EXPECT_EQ(encode(from_model, text, false).ids, encode(from_json, text, false).ids) << text;
    ++compared;
  }
  EXPECT_GT(compared, 300);
}

// The XLM-R-style fixtures were converted by transformers from these SentencePiece Unigram
// models: the same file as sentencepiece.bpe.model must give identical ids and offsets.
TEST(SentencePieceModel, UnigramConvertsLikeXlmRoberta) {
  const std::string data = std::string(EMBEDTUNE_SOURCE_DIR) + "/../shared/data/tokenizers/";
  for (auto [model, fixture] : {std::pair{"sp_test_model.model", "xlmr-style-unigram"},
                                std::pair{"sp_test_ja_model.model", "xlmr-style-unigram-ja"}}) {
    std::string fx = fixtures_root() + "/tokenizers/" + fixture;
    SKIP_WITHOUT_FIXTURES(fx);
    if (!file_exists(data + model)) GTEST_SKIP() << "skipped: no " << data + model;
    std::string dir = temp_dir(std::string("spm_unigram_") + fixture);
    write_text_atomic(dir + "/sentencepiece.bpe.model", read_text_file(data + model));
    Tokenizer tok = load_tokenizer(dir);
    json cases = read_json_file(fx + "/cases.json");
    int mismatches = 0;
    for (const auto& c : cases["cases"]) {
      Encoding e = encode(tok, c["text"].get<std::string>(), true);
      bool ok = e.ids == c["ids"].get<std::vector<int32_t>>() &&
                e.offsets == c["offsets"].get<std::vector<std::pair<int32_t, int32_t>>>();
      if (!ok && ++mismatches <= 3) ADD_FAILURE() << fixture << ": " << c["text"];
    }
    EXPECT_EQ(mismatches, 0) << fixture;
  }
}

TEST(SentencePieceModel, RejectsGarbage) {
  std::string dir = temp_dir("spm_bad");
  write_text_atomic(dir + "/tokenizer.model", std::string("\x0a\xff\xff\xff\x0f", 5));
  try {
    load_tokenizer(dir);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.model"), std::string::npos) << e.what();
  }
}

// Hostile input through every fixture pipeline: nothing crashes, hangs or loses text.
TEST(TokenizerRobustness, HostileInputEveryPipeline) {
  std::string root = fixtures_root() + "/tokenizers";
  SKIP_WITHOUT_FIXTURES(root);
  Rng rng(11);
  std::string random_bytes(1 << 20, '\0');
  for (char& c : random_bytes) c = static_cast<char>(rng.next_u64() & 0xFF);
  std::string prose;
  while (prose.size() < (1u << 20))
    prose += "Tokenizers split text, naïve café 東京 🙂\u200d x\t\n";
  const std::vector<std::string> inputs = {"",
                                           " ",
                                           "\xff\xfe\xfd",
                                           std::string("a\0b", 3),
                                           "\x01\x02\x1b[31m\x7f",
                                           "\xe2\x80\xae\xe2\x80\x8f RTL",
                                           std::string(1 << 20, 'a'),
                                           random_bytes,
                                           prose};
  for (const char* name : {"bert-uncased-wordpiece", "gpt2-bytelevel-bpe", "qwen3-style-bpe",
                           "xlmr-style-unigram", "gemma-style-spm-bpe"}) {
    Tokenizer tok = load_tokenizer(root + "/" + name);
    for (const std::string& text : inputs) {
      Encoding e = encode(tok, text, true);
      ASSERT_EQ(e.ids.size(), e.offsets.size()) << name;
      for (int32_t id : e.ids) ASSERT_TRUE(id >= 0 && id < tok.vocab_size()) << name;
      int32_t n_chars = static_cast<int32_t>(unicode::decode_utf8(text).size());
      for (auto [b, en] : e.offsets) ASSERT_TRUE(b >= 0 && b <= en && en <= n_chars) << name;
      if (text.size() > 1000 && std::string(name) != "bert-uncased-wordpiece") {
        EXPECT_GT(e.ids.size(), 1000u) << name << ": long text lost";
      }
      EXPECT_LE(encode(tok, text, true, 64).ids.size(), 64u) << name;
    }
  }
}

TEST(TokenizerRobustness, MalformedFilesNameTheField) {
  json bpe = {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", 1}, {"ab", 2}}}, {"merges", {"a b"}}};
  EXPECT_EQ(parse_error({{"model", bpe}}), "no error");
  json bad = bpe;
  bad["merges"] = {"a c"};
  EXPECT_NE(parse_error({{"model", bad}}).find("model.merges[0]"), std::string::npos);
  bad = bpe;
  bad["merges"] = {"ab"};
  EXPECT_NE(parse_error({{"model", bad}}).find("model.merges[0]"), std::string::npos);
  json ug = {{"type", "Unigram"},
             {"vocab", json::array({json::array({"<unk>", 0.0}), json::array({"a", -1.0})})},
             {"unk_id", 0}};
  EXPECT_EQ(parse_error({{"model", ug}}), "no error");
  bad = ug;
  bad["vocab"][1] = "a";
  EXPECT_NE(parse_error({{"model", bad}}).find("model.vocab[1]"), std::string::npos);
  bad = ug;
  bad["unk_id"] = 7;
  EXPECT_NE(parse_error({{"model", bad}}).find("unk_id"), std::string::npos);
  json split = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  EXPECT_NE(
      parse_error({{"model", ug}, {"pre_tokenizer", split}}).find("pre_tokenizer Split.pattern"),
      std::string::npos);
  split["pattern"] = {{"String", " "}};
  split["behavior"] = "Sideways";
  EXPECT_NE(parse_error({{"model", ug}, {"pre_tokenizer", split}}).find("behavior 'Sideways'"),
            std::string::npos);
  json pre = {{"type", "Precompiled"}, {"precompiled_charsmap", "!!!"}};
  EXPECT_NE(parse_error({{"model", ug}, {"normalizer", pre}}).find("precompiled_charsmap"),
            std::string::npos);
  EXPECT_NE(parse_error({{"model", {{"type", "WordLevel"}}}}).find("model.type 'WordLevel'"),
            std::string::npos);
}

// Pre-tokenizers and normalizers that no fixture pipeline uses, against outputs worked out by
// hand from tokenizers' definitions.
TEST(TokenizerComponents, SplitBehavioursAndNormalizers) {
  auto words = [](const json& pre, const std::string& text, const json& norm = json()) {
    NormString s = to_norm_string(unicode::decode_utf8(text));
    normalize(parse_normalizer(norm, "t"), s);
    std::vector<NormString> w{s};
    pre_tokenize(parse_pre_tokenizer(pre, "t"), w);
    std::vector<std::string> out;
    for (const auto& x : w) {
      std::u32string u;
      for (const auto& c : x) u.push_back(c.c);
      out.push_back(unicode::encode_utf8(u));
    }
    return out;
  };
  using V = std::vector<std::string>;
  auto split = [](const char* b) {
    return json{{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", b}};
  };
  const std::string t = "The-final--countdown";
  EXPECT_EQ(words(split("Removed"), t), (V{"The", "final", "countdown"}));
  EXPECT_EQ(words(split("Isolated"), t), (V{"The", "-", "final", "-", "-", "countdown"}));
  EXPECT_EQ(words(split("MergedWithPrevious"), t), (V{"The-", "final-", "-", "countdown"}));
  EXPECT_EQ(words(split("MergedWithNext"), t), (V{"The", "-final", "-", "-countdown"}));
  EXPECT_EQ(words(split("Contiguous"), t), (V{"The", "-", "final", "--", "countdown"}));
  EXPECT_EQ(words({{"type", "Whitespace"}}, "Hey man!! ça va?"),
            (V{"Hey", "man", "!!", "ça", "va", "?"}));
  EXPECT_EQ(words({{"type", "Digits"}, {"individual_digits", true}}, "a123b"),
            (V{"a", "1", "2", "3", "b"}));
  EXPECT_EQ(words({{"type", "Digits"}, {"individual_digits", false}}, "a123b"),
            (V{"a", "123", "b"}));
  EXPECT_EQ(words({{"type", "Punctuation"}}, "a,b"), (V{"a", ",", "b"}));
  EXPECT_EQ(words({{"type", "Metaspace"}, {"prepend_scheme", "first"}}, "hi there"),
            (V{"\u2581hi", "\u2581there"}));
  EXPECT_EQ(words(json(), "\uFB01 \u00C5", {{"type", "NFKC"}}), (V{"fi \u00C5"}));
  EXPECT_EQ(words(json(), "A\u030A", {{"type", "NFC"}}), (V{"\u00C5"}));
  EXPECT_EQ(words(json(), "  x  ", {{"type", "Strip"}}), (V{"x"}));
  EXPECT_EQ(words(json(), "x", {{"type", "Prepend"}, {"prepend", "\u2581"}}), (V{"\u2581x"}));
  EXPECT_EQ(words(json(), "a  b",
                  {{"type", "Replace"}, {"pattern", {{"Regex", " {2,}"}}}, {"content", " "}}),
            (V{"a b"}));
}

}  // namespace
}  // namespace et::test
