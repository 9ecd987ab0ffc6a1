// SentencePiece's precompiled normalization map ("precompiled_charsmap" of a Precompiled
// normalizer, or normalizer_spec of a .model file).
//
// Layout (sentencepiece/src/normalizer.cc, Darts-clone double array):
//   u32 little endian: trie size in bytes, then that many bytes of u32 units, then a blob of
//   NUL-terminated replacement strings. A key (UTF-8 bytes) found in the trie yields the offset
//   of its replacement in the blob.
// Unit bit fields: has_leaf = bit 8; value = low 31 bits; label = bits 0-7 and bit 31;
// offset = (unit >> 10) << ((unit & (1 << 9)) >> 6).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace et {

struct PrecompiledCharsmap {
  std::vector<uint32_t> trie;
  std::string blob;
};

// `where` names the source for errors (truncated map, bad sizes).
PrecompiledCharsmap parse_precompiled_charsmap(std::string_view bytes, const std::string& where);

// The replacement for `chunk` as tokenizers' Precompiled::transform defines it: the entry of
// the SHORTEST key that is a prefix of `chunk` (a quirk kept for parity), or nothing.
std::optional<std::string_view> charsmap_transform(const PrecompiledCharsmap& m,
                                                   std::string_view chunk);

}  // namespace et
