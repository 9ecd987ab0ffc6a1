// Pre-tokenizers of Hugging Face `tokenizers` ("pre_tokenizer" in tokenizer.json): cut a
// normalized string into words (each a NormString of its own, since some pre-tokenizers also
// rewrite characters: Metaspace puts "▁" for spaces, ByteLevel maps UTF-8 bytes to printable
// characters). The model then tokenizes each word independently.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tokenizer/normalizer.h"

namespace et {

struct Regex;

// What happens to the matched delimiter (tokenizers' SplitDelimiterBehavior).
enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

struct PreTokenizer {
  enum class Kind {
    None,
    Bert,
    WhitespaceSplit,
    Whitespace,
    Punctuation,
    Digits,
    CharDelimiterSplit,
    Split,
    Metaspace,
    ByteLevel,
    Sequence
  };
  enum class Prepend { Always, First, Never };
  Kind kind = Kind::None;
  SplitBehavior behavior = SplitBehavior::Isolated;
  bool invert = false;                 // Split
  std::u32string literal;              // Split with {"String": ...}, CharDelimiterSplit
  std::shared_ptr<const Regex> regex;  // Split with {"Regex": ...}; ByteLevel with use_regex
  bool individual_digits = false;      // Digits
  char32_t replacement = U'\u2581';    // Metaspace
  Prepend prepend = Prepend::Always;   // Metaspace
  bool split = true;                   // Metaspace
  bool add_prefix_space = false;       // ByteLevel
  std::vector<PreTokenizer> sequence;
};

PreTokenizer parse_pre_tokenizer(const json& j, const std::string& where);
// Splits (and rewrites) every word in `words`; start with one word holding the whole string.
// Empty words are dropped.
void pre_tokenize(const PreTokenizer& p, std::vector<NormString>& words);

// GPT-2's pre-tokenization pattern, which ByteLevel uses when use_regex is set.
extern const char* const kGpt2SplitPattern;

}  // namespace et
