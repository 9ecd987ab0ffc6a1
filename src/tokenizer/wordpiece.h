// WordPiece (BERT): greedy longest-match-first over a vocabulary, continuation pieces carry a
// prefix ("##"); a word longer than max_input_chars_per_word, or one that cannot be covered,
// becomes the unknown token as a whole (as tokenizers' WordPiece model does).
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer/vocab.h"

namespace et {

struct WordPiece {
  TokenIds vocab;
  std::string unk_token = "[UNK]";
  std::string prefix = "##";
  int max_input_chars_per_word = 100;
};

WordPiece parse_wordpiece(const json& model, const std::string& where);
// vocab.txt: one token per line, id = line number.
WordPiece wordpiece_from_vocab_txt(const std::string& path);
void wordpiece_tokenize(const WordPiece& wp, const NormString& word, std::vector<Piece>& out);

}  // namespace et
