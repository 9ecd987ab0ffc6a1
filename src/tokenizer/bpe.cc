#include "tokenizer/bpe.h"

#include <queue>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace et {

static uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

Bpe parse_bpe(const json& m, const std::string& where) {
  Bpe bpe;
  bpe.vocab = parse_vocab_object(m, where);
  auto opt_string = [&](const char* key) {
    return m.contains(key) && m[key].is_string() ? m[key].get<std::string>() : std::string();
  };
  auto flag = [&](const char* key) {
    return m.contains(key) && m[key].is_boolean() && m[key].get<bool>();
  };
  bpe.prefix = opt_string("continuing_subword_prefix");
  bpe.suffix = opt_string("end_of_word_suffix");
  bpe.fuse_unk = flag("fuse_unk");
  bpe.byte_fallback = flag("byte_fallback");
  bpe.ignore_merges = flag("ignore_merges");
  ET_CHECK(!m.contains("dropout") || m["dropout"].is_null() ||
               (m["dropout"].is_number() && m["dropout"].get<double>() == 0.0),
           where, ": model.dropout must be null (BPE dropout is a training-time augmentation)");
  if (m.contains("unk_token") && m["unk_token"].is_string()) {
    std::string unk = m["unk_token"].get<std::string>();
    auto it = bpe.vocab.find(unk);
    ET_CHECK(it != bpe.vocab.end(), where, ": model.unk_token '", unk,
             "' is not in the vocabulary");
    bpe.unk_id = it->second;
  }
  bpe.byte_ids = byte_token_ids(bpe.vocab);
  ET_CHECK(m.contains("merges") && m["merges"].is_array(), where,
           ": model.merges must be an array");
  const json& merges = m["merges"];
  bpe.merges.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const json& e = merges[rank];
    std::string a, b;
    if (e.is_string()) {  // "a b"
      const std::string& s = e.get_ref<const std::string&>();
      size_t sp = s.find(' ', 1);
      ET_CHECK(sp != std::string::npos, where, ": model.merges[", rank, "] '", s,
               "' is not two tokens separated by a space");
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      a = e[0].get<std::string>();
      b = e[1].get<std::string>();
    } else {
      fail(where, ": model.merges[", rank, "] must be \"a b\" or [\"a\", \"b\"]");
    }
    auto ia = bpe.vocab.find(a), ib = bpe.vocab.find(b);
    ET_CHECK(ia != bpe.vocab.end() && ib != bpe.vocab.end(), where, ": model.merges[", rank,
             "] uses a token that is not in the vocabulary");
    std::string merged = a + b.substr(std::min(bpe.prefix.size(), b.size()));
    auto im = bpe.vocab.find(merged);
    ET_CHECK(im != bpe.vocab.end(), where, ": model.merges[", rank, "] gives '", merged,
             "', which is not in the vocabulary");
    bpe.merges[pair_key(ia->second, ib->second)] = {static_cast<int32_t>(rank), im->second};
  }
  return bpe;
}

namespace {

struct Symbol {
  int32_t id;
  int32_t begin, end;  // characters of the word
  int32_t prev, next;  // linked list of live symbols; -1 at the ends
  bool live;
};

struct MergeCandidate {
  int32_t rank, pos, new_id;
  // std::priority_queue is a max-heap: order so that the lowest rank, then leftmost, is on top
  bool operator<(const MergeCandidate& o) const {
    return rank != o.rank ? rank > o.rank : pos > o.pos;
  }
};

}  // namespace

void bpe_tokenize(const Bpe& bpe, const NormString& word, std::vector<Piece>& out) {
  const int32_t n = static_cast<int32_t>(word.size());
  if (n == 0) return;
  std::string key;
  if (bpe.ignore_merges && bpe.prefix.empty() && bpe.suffix.empty()) {
    for (const NormChar& ch : word) unicode::append_utf8(key, ch.c);
    auto it = bpe.vocab.find(key);
    if (it != bpe.vocab.end()) {
      out.push_back({it->second, {0, n}});
      return;
    }
  }
  // Initial symbols, one per character (or per byte with byte_fallback).
  std::vector<Symbol> sym;
  sym.reserve(static_cast<size_t>(n));
  int32_t unk_begin = -1, unk_end = -1;
  auto flush_unk = [&]() {
    if (unk_begin >= 0) sym.push_back({*bpe.unk_id, unk_begin, unk_end, 0, 0, true});
    unk_begin = -1;
  };
  std::string ch_utf8;
  std::vector<Piece> bytes;
  for (int32_t i = 0; i < n; ++i) {
    ch_utf8.clear();
    unicode::append_utf8(ch_utf8, word[i].c);
    key.clear();
    if (i > 0) key += bpe.prefix;
    key += ch_utf8;
    if (i == n - 1) key += bpe.suffix;
    auto it = bpe.vocab.find(key);
    if (it != bpe.vocab.end()) {
      flush_unk();
      sym.push_back({it->second, i, i + 1, 0, 0, true});
      continue;
    }
    if (bpe.byte_fallback) {
      // Byte tokens are final: a merge never joins them (their pairs are not in merges).
      bytes.clear();
      if (append_byte_tokens(bpe.byte_ids, key, {i, i + 1}, bytes)) {
        for (const Piece& p : bytes) sym.push_back({p.id, i, i + 1, 0, 0, true});
        continue;
      }
    }
    if (!bpe.unk_id) continue;  // no unknown token: the character is dropped
    if (unk_begin >= 0 && bpe.fuse_unk) {
      unk_end = i + 1;
    } else {
      flush_unk();
      unk_begin = i;
      unk_end = i + 1;
    }
  }
  flush_unk();
  const int32_t m = static_cast<int32_t>(sym.size());
  for (int32_t i = 0; i < m; ++i) {
    sym[i].prev = i - 1;
    sym[i].next = i + 1 < m ? i + 1 : -1;
  }
  std::priority_queue<MergeCandidate> queue;
  auto consider = [&](int32_t pos) {
    if (pos < 0 || sym[pos].next < 0) return;
    auto it = bpe.merges.find(pair_key(sym[pos].id, sym[sym[pos].next].id));
    if (it != bpe.merges.end()) queue.push({it->second.first, pos, it->second.second});
  };
  for (int32_t i = 0; i + 1 < m; ++i) consider(i);
  while (!queue.empty()) {
    MergeCandidate top = queue.top();
    queue.pop();
    Symbol& left = sym[top.pos];
    if (!left.live || left.next < 0) continue;
    Symbol& right = sym[left.next];
    // Stale entry: the pair at this position changed since it was queued.
    auto it = bpe.merges.find(pair_key(left.id, right.id));
    if (it == bpe.merges.end() || it->second.second != top.new_id) continue;
    left.id = top.new_id;
    left.end = right.end;
    right.live = false;
    left.next = right.next;
    if (right.next >= 0) sym[right.next].prev = top.pos;
    consider(left.prev);
    consider(top.pos);
  }
  for (int32_t i = 0; i < m; ++i)
    if (sym[i].live) out.push_back({sym[i].id, {sym[i].begin, sym[i].end}});
}

}  // namespace et
