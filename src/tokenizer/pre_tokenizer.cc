#include "tokenizer/pre_tokenizer.h"

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace et {

PreTokenizer parse_pre_tokenizer(const json& j, const std::string& where) {
  PreTokenizer p;
  if (j.is_null()) return p;
  ET_CHECK(j.is_object() && j.contains("type") && j["type"].is_string(), where,
           ": pre_tokenizer must be an object with a string 'type'");
  std::string type = j["type"].get<std::string>();
  if (type == "BertPreTokenizer") {
    p.kind = PreTokenizer::Kind::Bert;
  } else if (type == "WhitespaceSplit") {
    p.kind = PreTokenizer::Kind::WhitespaceSplit;
  } else if (type == "Sequence") {
    p.kind = PreTokenizer::Kind::Sequence;
    ET_CHECK(j.contains("pretokenizers") && j["pretokenizers"].is_array(), where,
             ": pre_tokenizer Sequence needs an array 'pretokenizers'");
    for (const auto& s : j["pretokenizers"]) p.sequence.push_back(parse_pre_tokenizer(s, where));
  } else {
    fail(where, ": pre_tokenizer.type '", type, "' is not supported");
  }
  return p;
}

// Splits every span at whitespace (dropped) and, when `punct` is set, isolates each
// punctuation character as its own word (BERT's BasicTokenizer behaviour).
static void split_spans(const NormString& s, std::vector<Span>& words, bool punct) {
  std::vector<Span> out;
  for (auto [b, e] : words) {
    int32_t start = -1;
    for (int32_t i = b; i < e; ++i) {
      char32_t c = s[i].c;
      if (unicode::is_whitespace(c)) {
        if (start >= 0) out.emplace_back(start, i);
        start = -1;
      } else if (punct && unicode::is_bert_punctuation(c)) {
        if (start >= 0) out.emplace_back(start, i);
        out.emplace_back(i, i + 1);
        start = -1;
      } else if (start < 0) {
        start = i;
      }
    }
    if (start >= 0) out.emplace_back(start, e);
  }
  words.swap(out);
}

void pre_tokenize(const PreTokenizer& p, const NormString& s, std::vector<Span>& words) {
  switch (p.kind) {
    case PreTokenizer::Kind::None:
      return;
    case PreTokenizer::Kind::Bert:
      split_spans(s, words, true);
      return;
    case PreTokenizer::Kind::WhitespaceSplit:
      split_spans(s, words, false);
      return;
    case PreTokenizer::Kind::Sequence:
      for (const PreTokenizer& x : p.sequence) pre_tokenize(x, s, words);
      return;
  }
}

}  // namespace et
