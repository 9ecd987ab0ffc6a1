#include "tokenizer/wordpiece.h"

#include <sstream>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace et {

WordPiece parse_wordpiece(const json& m, const std::string& where) {
  WordPiece wp;
  wp.vocab = parse_vocab_object(m, where);
  if (m.contains("unk_token") && m["unk_token"].is_string())
    wp.unk_token = m["unk_token"].get<std::string>();
  if (m.contains("continuing_subword_prefix") && m["continuing_subword_prefix"].is_string())
    wp.prefix = m["continuing_subword_prefix"].get<std::string>();
  if (m.contains("max_input_chars_per_word") && m["max_input_chars_per_word"].is_number_integer())
    wp.max_input_chars_per_word = m["max_input_chars_per_word"].get<int>();
  ET_CHECK(wp.vocab.count(wp.unk_token), where, ": model.unk_token '", wp.unk_token,
           "' is not in the vocabulary");
  return wp;
}

WordPiece wordpiece_from_vocab_txt(const std::string& path) {
  WordPiece wp;
  std::istringstream in(read_text_file(path));
  std::string line;
  int32_t id = 0;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    wp.vocab.emplace(line, id++);
  }
  ET_CHECK(wp.vocab.count(wp.unk_token), path, ": vocabulary has no '", wp.unk_token, "' token");
  return wp;
}

void wordpiece_tokenize(const WordPiece& wp, const NormString& s, std::vector<Piece>& out) {
  const int32_t b = 0, e = static_cast<int32_t>(s.size());
  const Span word{b, e};
  int32_t unk = wp.vocab.at(wp.unk_token);
  if (e - b > wp.max_input_chars_per_word) {
    out.push_back({unk, word});
    return;
  }
  // UTF-8 of the word, with the byte offset of every character, so that substrings are cheap.
  std::string utf8;
  std::vector<size_t> at;
  for (int32_t i = b; i < e; ++i) {
    at.push_back(utf8.size());
    unicode::append_utf8(utf8, s[i].c);
  }
  at.push_back(utf8.size());
  size_t first = out.size();
  int32_t start = 0, n = e - b;
  std::string key;
  while (start < n) {
    int32_t end = n, found = -1;
    while (start < end) {
      key.assign(start > 0 ? wp.prefix : "");
      key.append(utf8, at[start], at[end] - at[start]);
      auto it = wp.vocab.find(key);
      if (it != wp.vocab.end()) {
        found = it->second;
        break;
      }
      --end;
    }
    if (found < 0) {
      out.resize(first);
      out.push_back({unk, word});
      return;
    }
    out.push_back({found, {b + start, b + end}});
    start = end;
  }
}

}  // namespace et
