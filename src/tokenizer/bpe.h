// Byte-pair encoding as tokenizers' BPE model does it: a word starts as one symbol per
// character (continuation prefix on non-initial ones, end-of-word suffix on the last), then
// the adjacent pair with the lowest merge rank is merged, leftmost first on ties, until no
// pair has a merge. Characters missing from the vocabulary become <0xXX> byte tokens with
// byte_fallback, else the unknown token (consecutive ones fused with fuse_unk), else vanish.
// Used both for GPT-2 style byte-level BPE (ModernBERT, Qwen3) and SentencePiece-style BPE
// with byte fallback (Gemma).
#pragma once

#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer/wordpiece.h"

namespace et {

struct Bpe {
  TokenIds vocab;
  // (left id << 32 | right id) -> (rank, merged id)
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;
  std::optional<int32_t> unk_id;
  std::string prefix, suffix;  // continuing_subword_prefix, end_of_word_suffix
  bool fuse_unk = false, byte_fallback = false, ignore_merges = false;
  ByteTokenIds byte_ids;  // <0xXX> token ids for byte_fallback
};

Bpe parse_bpe(const json& model, const std::string& where);
void bpe_tokenize(const Bpe& bpe, const NormString& word, std::vector<Piece>& out);

}  // namespace et
