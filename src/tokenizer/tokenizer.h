// A Hugging Face compatible tokenizer (tokenizer.json): added tokens -> normalizer ->
// pre-tokenizer -> model (WordPiece, BPE or Unigram) -> truncation -> post-processor (special
// tokens), with character offsets into the input text (code point indices, as Python counts).
// Reference: huggingface/tokenizers, tokenizers/src/tokenizer/mod.rs (encode_single_sequence).
#pragma once

#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tokenizer/bpe.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/unigram.h"
#include "tokenizer/wordpiece.h"

namespace et {

struct TokenizerModel {
  enum class Kind { WordPiece, Bpe, Unigram };
  Kind kind = Kind::WordPiece;
  WordPiece wordpiece;
  Bpe bpe;
  Unigram unigram;
};

struct AddedToken {
  std::u32string content;  // as written; normalized tokens match `match` instead
  std::u32string match;    // the text that is searched for
  int32_t id = 0;
  bool special = false, lstrip = false, rstrip = false, single_word = false;
  bool normalized = false;  // matched in the normalized text rather than the raw text
};

// One element of TemplateProcessing's "single" template.
struct TemplatePiece {
  bool is_sequence = false;  // the input sequence ($A)
  std::vector<int32_t> ids;  // special token ids otherwise
};

struct PostProcessor {
  std::vector<TemplatePiece> single{{true, {}}};
  // ByteLevel / RobertaProcessing: trim the whitespace a token carries off its offsets
  bool trim_offsets = false, add_prefix_space = false;
};

struct Tokenizer {
  std::string source;  // file it was read from, for messages
  Normalizer normalizer;
  PreTokenizer pre_tokenizer;
  TokenizerModel model;
  std::vector<AddedToken> added;
  // added tokens by first character, longest first: raw-text and normalized-text matching
  std::unordered_map<char32_t, std::vector<int32_t>> added_raw, added_norm;
  PostProcessor post;
  std::vector<std::string> id_to_token;
  // With post.trim_offsets: per id, the whitespace characters ('Ġ' or Unicode White_Space) a
  // token starts and ends with (counted once at load rather than per encoded token)
  std::vector<std::pair<int32_t, int32_t>> edge_spaces;
  int32_t pad_id = 0;

  int num_special_tokens() const;
  int32_t vocab_size() const { return static_cast<int32_t>(id_to_token.size()); }
};

struct Encoding {
  std::vector<int32_t> ids;
  std::vector<std::pair<int32_t, int32_t>> offsets;  // (0, 0) for special tokens
};

// Loads `tokenizer.json` from `dir`; else a SentencePiece `tokenizer.model` /
// `sentencepiece.bpe.model` (converted as transformers converts it, see sentencepiece_model.h);
// else builds a BERT WordPiece tokenizer from `vocab.txt` (lowercasing as `do_lower_case` in
// tokenizer_config.json says, default true).
Tokenizer load_tokenizer(const std::string& dir);
Tokenizer parse_tokenizer_json(const json& j, const std::string& where);

// Model output per pre-tokenized word (its UTF-8 as key), reused across texts: words repeat a
// lot, and BPE merging dominates the cost otherwise. One per thread; cleared when full.
struct WordCache {
  std::unordered_map<std::string, std::vector<Piece>> pieces;
  size_t capacity = 1 << 16;
};

// max_length <= 0: no truncation. Truncation keeps room for the special tokens.
Encoding encode(const Tokenizer& tok, std::string_view text, bool add_special_tokens = true,
                int max_length = 0, WordCache* cache = nullptr);
// Encodes many texts on `threads` threads (0: all cores); results in input order.
std::vector<Encoding> encode_batch(const Tokenizer& tok, const std::vector<std::string>& texts,
                                   bool add_special_tokens = true, int max_length = 0,
                                   int threads = 0);
std::vector<std::string> tokens_of(const Tokenizer& tok, const std::vector<int32_t>& ids);

}  // namespace et
