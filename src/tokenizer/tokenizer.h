// A Hugging Face compatible tokenizer: added tokens -> normalizer -> pre-tokenizer -> model ->
// truncation -> post-processor (special tokens), with character offsets into the input text
// (code point indices, as Python counts them).
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer/wordpiece.h"

namespace et {

struct AddedToken {
  std::u32string content;
  int32_t id = 0;
  bool special = false, lstrip = false, rstrip = false;
};

// One element of TemplateProcessing's "single" template.
struct TemplatePiece {
  bool is_sequence = false;  // the input sequence ($A)
  std::vector<int32_t> ids;  // special token ids otherwise
};

struct Tokenizer {
  std::string source;  // file it was read from, for messages
  Normalizer normalizer;
  PreTokenizer pre_tokenizer;
  WordPiece wordpiece;
  std::vector<AddedToken> added;      // matched in the raw text before normalization
  std::vector<TemplatePiece> single;  // post-processing template for one sequence
  std::vector<std::string> id_to_token;
  int32_t pad_id = 0;

  int num_special_tokens() const;
  int32_t vocab_size() const { return static_cast<int32_t>(id_to_token.size()); }
};

struct Encoding {
  std::vector<int32_t> ids;
  std::vector<std::pair<int32_t, int32_t>> offsets;  // (0, 0) for special tokens
};

// Loads `tokenizer.json` from `dir`, or builds a BERT WordPiece tokenizer from `vocab.txt`
// (lowercasing as `do_lower_case` in tokenizer_config.json says, default true).
Tokenizer load_tokenizer(const std::string& dir);
Tokenizer parse_tokenizer_json(const json& j, const std::string& where);

// max_length <= 0: no truncation. Truncation keeps room for the special tokens.
Encoding encode(const Tokenizer& tok, std::string_view text, bool add_special_tokens = true,
                int max_length = 0);
std::vector<std::string> tokens_of(const Tokenizer& tok, const std::vector<int32_t>& ids);

}  // namespace et
