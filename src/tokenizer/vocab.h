// Vocabulary pieces shared by the tokenizer models: the token -> id object of tokenizer.json
// (WordPiece, BPE) and SentencePiece-style byte fallback (<0x00> ... <0xFF> tokens), which BPE
// and Unigram apply to text their vocabulary does not cover.
#pragma once

#include <array>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "io/files.h"
#include "tokenizer/normalizer.h"

namespace et {

using TokenIds = std::unordered_map<std::string, int32_t>;

// One token of a word: its id and the [begin, end) characters of the word it covers.
struct Piece {
  int32_t id;
  Span span;
};

// model.vocab as an object of token -> integer id; errors name `where` and the token.
TokenIds parse_vocab_object(const json& model, const std::string& where);

// Ids of the byte tokens <0xXX> (-1 where the vocabulary has none).
using ByteTokenIds = std::array<int32_t, 256>;
ByteTokenIds byte_token_ids(const TokenIds& vocab);
// Appends one byte token per byte of `bytes`, each covering `span`, when the vocabulary has
// all of them; otherwise appends nothing and returns false.
bool append_byte_tokens(const ByteTokenIds& ids, std::string_view bytes, Span span,
                        std::vector<Piece>& out);

}  // namespace et
