// Unigram language-model tokenization (SentencePiece, as tokenizers' Unigram::encode_optimized
// does it): the segmentation of a word that maximises the sum of piece scores (log
// probabilities), found by Viterbi over a trie of the vocabulary. A character no piece of
// length one covers may be taken as the unknown token, scored min_score - 10; consecutive
// unknown characters are fused into one unknown token; with byte_fallback an unknown span
// becomes its <0xXX> byte tokens instead.
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer/wordpiece.h"

namespace et {

struct Unigram {
  std::vector<std::pair<std::string, double>> vocab;  // id -> (piece, score)
  int32_t unk_id = -1;
  bool byte_fallback = false;
  double min_score = 0;
  ByteTokenIds byte_ids;  // <0xXX> ids
  // Trie over code points: node 0 is the root; children sorted by character.
  struct Node {
    int32_t token = -1;  // id of the piece ending here
    std::vector<std::pair<char32_t, int32_t>> children;
  };
  std::vector<Node> trie;
};

Unigram parse_unigram(const json& model, const std::string& where);
Unigram make_unigram(std::vector<std::pair<std::string, double>> vocab, int32_t unk_id,
                     bool byte_fallback, const std::string& where);
void unigram_tokenize(const Unigram& ug, const NormString& word, std::vector<Piece>& out);

}  // namespace et
