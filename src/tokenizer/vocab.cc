#include "tokenizer/vocab.h"

#include <cstdio>

#include "core/error.h"

namespace et {

TokenIds parse_vocab_object(const json& m, const std::string& where) {
  ET_CHECK(m.contains("vocab") && m["vocab"].is_object(), where,
           ": model.vocab must be an object of token -> id");
  TokenIds vocab;
  vocab.reserve(m["vocab"].size());
  for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
    ET_CHECK(it->is_number_integer(), where, ": model.vocab['", it.key(), "'] must be an integer");
    vocab[it.key()] = it->get<int32_t>();
  }
  return vocab;
}

ByteTokenIds byte_token_ids(const TokenIds& vocab) {
  ByteTokenIds ids;
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    auto it = vocab.find(name);
    ids[static_cast<size_t>(b)] = it == vocab.end() ? -1 : it->second;
  }
  return ids;
}

bool append_byte_tokens(const ByteTokenIds& ids, std::string_view bytes, Span span,
                        std::vector<Piece>& out) {
  for (unsigned char c : bytes)
    if (ids[c] < 0) return false;
  for (unsigned char c : bytes) out.push_back({ids[c], span});
  return true;
}

}  // namespace et
