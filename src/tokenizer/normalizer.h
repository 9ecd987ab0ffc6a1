// Normalizers of Hugging Face `tokenizers` (tokenizer.json "normalizer"), applied to a string of
// code points that remembers, for every character, the index of the original character it
// came from; token offsets are read off that alignment.
#pragma once

#include <string>
#include <vector>

#include "io/files.h"

namespace et {

struct NormChar {
  char32_t c;
  int32_t orig;  // index of the source code point in the original text
};
using NormString = std::vector<NormChar>;

struct Normalizer {
  enum class Kind { None, Bert, Lowercase, StripAccents, NFD, Sequence };
  Kind kind = Kind::None;
  // BertNormalizer options (strip_accents: -1 = follow lowercase, as tokenizers does)
  bool clean_text = true, handle_chinese_chars = true, lowercase = true;
  int strip_accents = -1;
  std::vector<Normalizer> sequence;
};

// Parses the "normalizer" object (null gives Kind::None); `where` names the file for errors.
Normalizer parse_normalizer(const json& j, const std::string& where);
void normalize(const Normalizer& n, NormString& s);

}  // namespace et
