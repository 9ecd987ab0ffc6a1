// Regular expressions of tokenizer.json (Split patterns, Replace, ByteLevel's GPT-2 pattern),
// compiled with PCRE2 in UTF mode with Unicode properties for \d \s \w and JIT compilation.
// tokenizers itself uses Oniguruma; the patterns these files use (\p{L}, \p{N}, (?i:...),
// look-ahead) mean the same in both.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer/normalizer.h"

namespace et {

struct Regex;  // compiled pattern (opaque; safe to share between threads)

// Throws et::Error naming `where` and the position of a syntax error.
std::shared_ptr<const Regex> compile_regex(const std::string& pattern, const std::string& where);

// Splits [b, e) of `s` into consecutive pieces that are matches (true) or the text between
// them (false), like tokenizers' Pattern::find_matches; empty matches are skipped.
std::vector<std::pair<Span, bool>> regex_find_matches(const Regex& re, const NormString& s,
                                                      int32_t b, int32_t e);
// The same for a literal pattern ({"String": ...}): occurrences left to right, not overlapping.
std::vector<std::pair<Span, bool>> literal_find_matches(const NormString& s,
                                                        std::u32string_view literal);

}  // namespace et
