// Normalizers of Hugging Face `tokenizers` (tokenizer.json "normalizer"), applied to a string of
// code points that remembers, for every character, the index of the original character it
// came from; token offsets are read off that alignment.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "io/files.h"

namespace et {

struct NormChar {
  char32_t c;
  int32_t orig;  // index of the source code point in the original text
};
using NormString = std::vector<NormChar>;
using Span = std::pair<int32_t, int32_t>;  // [begin, end) character indices

struct Regex;  // tokenizer/regex.h

struct PrecompiledCharsmap;  // tokenizer/precompiled_charsmap.h

struct Normalizer {
  enum class Kind {
    None,
    Bert,
    Lowercase,
    StripAccents,
    NFC,
    NFD,
    NFKC,
    NFKD,
    Replace,
    Prepend,
    Strip,
    Precompiled,
    ByteLevel,
    Sequence
  };
  Kind kind = Kind::None;
  // BertNormalizer options (strip_accents: -1 = follow lowercase, as tokenizers does)
  bool clean_text = true, handle_chinese_chars = true, lowercase = true;
  int strip_accents = -1;
  // Replace: literal pattern (or regex) -> content; Prepend: content; Strip: sides
  std::u32string pattern, content;
  std::shared_ptr<const Regex> regex;  // Replace with {"Regex": ...}
  bool strip_left = true, strip_right = true;
  std::shared_ptr<const PrecompiledCharsmap> charsmap;  // Precompiled
  std::vector<Normalizer> sequence;
};

// The characters of a text, each aligned to its own index.
NormString to_norm_string(std::u32string_view text);

// Parses the "normalizer" object (null gives Kind::None); `where` names the file for errors.
Normalizer parse_normalizer(const json& j, const std::string& where);
void normalize(const Normalizer& n, NormString& s);

// One rewrite step in the form tokenizers uses to keep alignments: each output character with
// `change` = +1 when it is inserted (it takes the alignment of the previous source character),
// 0 when it replaces the source character at the cursor, and -k when it replaces that
// character and the k source characters after it are removed.
struct Rewrite {
  char32_t c;
  int change;
};
void apply_rewrites(NormString& s, const std::vector<Rewrite>& rw);

// Puts `prefix` before the first character; the inserted characters take its alignment.
void prepend_chars(NormString& s, std::u32string_view prefix);

}  // namespace et
