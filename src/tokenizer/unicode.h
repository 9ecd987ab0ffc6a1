// Unicode helpers over code points (char32_t), backed by utf8proc's tables.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace et::unicode {

// Decodes UTF-8; each invalid byte becomes U+FFFD (never throws).
std::u32string decode_utf8(std::string_view s);
void append_utf8(std::string& out, char32_t c);
std::string encode_utf8(std::u32string_view s);
// Whether `s` is valid UTF-8; `bad_offset` receives the first invalid byte's offset.
bool is_valid_utf8(std::string_view s, size_t* bad_offset = nullptr);

bool is_whitespace(char32_t c);        // Unicode White_Space (as Rust's char::is_whitespace)
bool is_control(char32_t c);           // categories Cc Cf Cn Co Cs, except \t \n \r
bool is_punctuation(char32_t c);       // categories P*
bool is_bert_punctuation(char32_t c);  // ASCII symbol ranges or P* (BERT's _is_punctuation)
bool is_mark_nonspacing(char32_t c);   // category Mn
bool is_cjk(char32_t c);               // CJK ideograph blocks, as BERT defines them
// Full canonical decomposition (NFD) of one code point.
void nfd_append(char32_t c, std::u32string& out);
// Lowercase mapping of one code point (possibly several code points).
void lower_append(char32_t c, std::u32string& out);

bool is_numeric(char32_t c);    // categories Nd Nl No (Rust's char::is_numeric)
bool is_word_char(char32_t c);  // regex \w: letters, marks, decimal digits, connector punct.

enum class Form { NFC, NFD, NFKC, NFKD };
std::u32string normalize_form(std::u32string_view s, Form form);
// Whether no composition can join `c` to what precedes it: combining class 0, not a mark,
// not a Hangul medial vowel or final consonant jamo.
bool starts_composition_run(char32_t c);
// Extended grapheme cluster boundary between `a` and `b` (UAX #29); `state` starts at 0 for
// each text and is carried from pair to pair.
bool grapheme_break(char32_t a, char32_t b, int32_t* state);

// GPT-2's byte-to-unicode table: printable Latin-1 bytes map to themselves, the other 68
// bytes to U+0100.. in order, so that every byte string is a printable string.
char32_t byte_level_char(uint8_t byte);
// Appends the byte-level characters of the UTF-8 bytes of `c`.
void byte_level_append(char32_t c, std::u32string& out);

}  // namespace et::unicode
