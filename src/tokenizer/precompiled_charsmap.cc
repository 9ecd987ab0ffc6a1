#include "tokenizer/precompiled_charsmap.h"

#include <cstring>

#include "core/error.h"

namespace et {

PrecompiledCharsmap parse_precompiled_charsmap(std::string_view bytes, const std::string& where) {
  ET_CHECK(bytes.size() >= 4, where, ": precompiled_charsmap is shorter than its 4-byte header");
  uint32_t trie_bytes = 0;
  std::memcpy(&trie_bytes, bytes.data(), 4);  // little endian on every supported host
  ET_CHECK(trie_bytes % 4 == 0 && trie_bytes <= bytes.size() - 4, where,
           ": precompiled_charsmap trie size ", trie_bytes, " does not fit the ", bytes.size(),
           "-byte map");
  PrecompiledCharsmap m;
  m.trie.resize(trie_bytes / 4);
  if (trie_bytes) std::memcpy(m.trie.data(), bytes.data() + 4, trie_bytes);
  m.blob.assign(bytes.substr(4 + trie_bytes));
  ET_CHECK(!m.trie.empty(), where, ": precompiled_charsmap has an empty trie");
  return m;
}

static bool unit_has_leaf(uint32_t u) {
  return (u >> 8) & 1;
}
static uint32_t unit_value(uint32_t u) {
  return u & ((1u << 31) - 1);
}
static uint32_t unit_label(uint32_t u) {
  return u & ((1u << 31) | 0xFF);
}
static uint32_t unit_offset(uint32_t u) {
  return (u >> 10) << ((u & (1u << 9)) >> 6);
}

std::optional<std::string_view> charsmap_transform(const PrecompiledCharsmap& m,
                                                   std::string_view chunk) {
  const size_t n = m.trie.size();
  size_t pos = unit_offset(m.trie[0]);
  for (unsigned char c : chunk) {
    if (c == 0) break;
    pos ^= c;
    if (pos >= n || unit_label(m.trie[pos]) != c) return std::nullopt;
    const uint32_t unit = m.trie[pos];
    pos ^= unit_offset(unit);
    if (pos >= n) return std::nullopt;
    if (unit_has_leaf(unit)) {
      size_t at = unit_value(m.trie[pos]);
      if (at >= m.blob.size()) return std::nullopt;
      size_t end = m.blob.find('\0', at);
      if (end == std::string::npos) end = m.blob.size();
      return std::string_view(m.blob).substr(at, end - at);
    }
  }
  return std::nullopt;
}

}  // namespace et
