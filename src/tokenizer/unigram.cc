#include "tokenizer/unigram.h"

#include <algorithm>
#include <limits>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace et {

static int32_t trie_child(const Unigram& ug, int32_t node, char32_t c) {
  const auto& ch = ug.trie[static_cast<size_t>(node)].children;
  auto it = std::lower_bound(ch.begin(), ch.end(), std::make_pair(c, int32_t{-1}));
  return it != ch.end() && it->first == c ? it->second : -1;
}

Unigram make_unigram(std::vector<std::pair<std::string, double>> vocab, int32_t unk_id,
                     bool byte_fallback, const std::string& where) {
  Unigram ug;
  ug.vocab = std::move(vocab);
  ug.unk_id = unk_id;
  ug.byte_fallback = byte_fallback;
  ET_CHECK(!ug.vocab.empty(), where, ": model.vocab is empty (Unigram needs at least <unk>)");
  ET_CHECK(unk_id < static_cast<int32_t>(ug.vocab.size()), where, ": model.unk_id ", unk_id,
           " is outside the vocabulary of ", ug.vocab.size());
  ug.min_score = std::numeric_limits<double>::infinity();
  // built with hash maps of children and the id ending at each node, then frozen sorted
  std::vector<std::unordered_map<char32_t, int32_t>> building(1);
  std::vector<int32_t> token_at(1, -1);
  TokenIds ids;
  for (size_t id = 0; id < ug.vocab.size(); ++id) {
    const auto& [piece, score] = ug.vocab[id];
    ug.min_score = std::min(ug.min_score, score);
    ids[piece] = static_cast<int32_t>(id);  // a repeated piece resolves to its last id
    int32_t node = 0;
    for (char32_t c : unicode::decode_utf8(piece)) {
      auto it = building[static_cast<size_t>(node)].find(c);
      if (it == building[static_cast<size_t>(node)].end()) {
        int32_t fresh = static_cast<int32_t>(building.size());
        building[static_cast<size_t>(node)][c] = fresh;
        building.emplace_back();
        token_at.push_back(-1);
        node = fresh;
      } else {
        node = it->second;
      }
    }
    if (node != 0) token_at[static_cast<size_t>(node)] = static_cast<int32_t>(id);
  }
  ug.trie.resize(building.size());
  for (size_t k = 0; k < building.size(); ++k) {
    ug.trie[k].token = token_at[k];
    auto& ch = ug.trie[k].children;
    ch.assign(building[k].begin(), building[k].end());
    std::sort(ch.begin(), ch.end());
  }
  ug.byte_ids = byte_token_ids(ids);
  return ug;
}

Unigram parse_unigram(const json& m, const std::string& where) {
  ET_CHECK(m.contains("vocab") && m["vocab"].is_array(), where,
           ": model.vocab must be an array of [piece, score]");
  std::vector<std::pair<std::string, double>> vocab;
  vocab.reserve(m["vocab"].size());
  for (size_t i = 0; i < m["vocab"].size(); ++i) {
    const json& e = m["vocab"][i];
    ET_CHECK(e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_number(), where,
             ": model.vocab[", i, "] must be [piece, score]");
    vocab.emplace_back(e[0].get<std::string>(), e[1].get<double>());
  }
  int32_t unk = -1;
  if (m.contains("unk_id") && !m["unk_id"].is_null()) {
    ET_CHECK(m["unk_id"].is_number_integer() && m["unk_id"].get<int64_t>() >= 0, where,
             ": model.unk_id must be a non-negative integer");
    unk = m["unk_id"].get<int32_t>();
  }
  bool byte_fallback = m.contains("byte_fallback") && m["byte_fallback"].is_boolean() &&
                       m["byte_fallback"].get<bool>();
  return make_unigram(std::move(vocab), unk, byte_fallback, where);
}

void unigram_tokenize(const Unigram& ug, const NormString& word, std::vector<Piece>& out) {
  const int32_t n = static_cast<int32_t>(word.size());
  if (n == 0) return;
  constexpr double kUnkPenalty = 10.0;
  const double unk_score = ug.min_score - kUnkPenalty;
  struct Best {
    int32_t id = -1;
    double score = 0;
    int32_t start = -1;  // -1: not reached yet
  };
  std::vector<Best> best(static_cast<size_t>(n) + 1);
  for (int32_t s = 0; s < n; ++s) {
    const double base = best[s].score;
    bool has_single = false;
    // Pieces starting at s, shortest first (strictly better replaces: ties keep the first).
    int32_t node = 0;
    for (int32_t e = s; e < n; ++e) {
      node = trie_child(ug, node, word[e].c);
      if (node < 0) break;
      int32_t id = ug.trie[static_cast<size_t>(node)].token;
      if (id < 0) continue;
      Best& t = best[static_cast<size_t>(e) + 1];
      double cand = ug.vocab[static_cast<size_t>(id)].second + base;
      if (t.start < 0 || cand > t.score) t = {id, cand, s};
      if (e == s) has_single = true;
    }
    if (!has_single) {
      ET_CHECK(ug.unk_id >= 0,
               "Unigram: a character is not in the vocabulary and there is no "
               "unknown token (model.unk_id)");
      Best& t = best[static_cast<size_t>(s) + 1];
      double cand = unk_score + base;
      if (t.start < 0 || cand > t.score) t = {ug.unk_id, cand, s};
    }
  }
  // Back-track; consecutive unknown pieces are fused into one.
  std::vector<Piece> rev;
  for (int32_t e = n; e > 0;) {
    const Best& b = best[static_cast<size_t>(e)];
    if (b.id == ug.unk_id && !rev.empty() && rev.back().id == ug.unk_id &&
        rev.back().span.first == e) {
      rev.back().span.first = b.start;
    } else {
      rev.push_back({b.id, {b.start, e}});
    }
    e = b.start;
  }
  for (auto it = rev.rbegin(); it != rev.rend(); ++it) {
    if (it->id == ug.unk_id && ug.byte_fallback) {
      // the fused text is not a piece: its bytes become <0xXX> tokens if all exist
      std::string utf8;
      for (int32_t k = it->span.first; k < it->span.second; ++k)
        unicode::append_utf8(utf8, word[k].c);
      if (append_byte_tokens(ug.byte_ids, utf8, it->span, out)) continue;
    }
    out.push_back(*it);
  }
}

}  // namespace et
