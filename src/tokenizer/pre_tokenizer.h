// Pre-tokenizers of Hugging Face `tokenizers` ("pre_tokenizer" in tokenizer.json): split a
// normalized string into words, given as [begin, end) ranges of NormString indices.
#pragma once

#include <utility>
#include <vector>

#include "tokenizer/normalizer.h"

namespace et {

using Span = std::pair<int32_t, int32_t>;

struct PreTokenizer {
  enum class Kind { None, Bert, WhitespaceSplit, Sequence };
  Kind kind = Kind::None;
  std::vector<PreTokenizer> sequence;
};

PreTokenizer parse_pre_tokenizer(const json& j, const std::string& where);
// Splits the spans in `words` further (start with one span covering the whole string).
void pre_tokenize(const PreTokenizer& p, const NormString& s, std::vector<Span>& words);

}  // namespace et
