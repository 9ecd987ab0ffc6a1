#include "tokenizer/normalizer.h"

#include <algorithm>

#include "core/error.h"
#include "io/base64.h"
#include "tokenizer/precompiled_charsmap.h"
#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"

namespace et {

namespace u = unicode;

// {"String": s} gives s; {"Regex": r} compiles r into *regex (when allowed) and gives "".
static std::u32string pattern_string(const json& j, const std::string& where, const char* what,
                                     std::shared_ptr<const Regex>* regex) {
  ET_CHECK(j.is_object(), where, ": ", what,
           ".pattern must be {\"String\": ...} or {\"Regex\": ...}");
  if (j.contains("String") && j["String"].is_string())
    return u::decode_utf8(j["String"].get<std::string>());
  if (j.contains("Regex") && j["Regex"].is_string() && regex) {
    *regex = compile_regex(j["Regex"].get<std::string>(), where + ": " + what);
    return {};
  }
  fail(where, ": ", what, ".pattern must be {\"String\": ...} or {\"Regex\": ...}");
}

Normalizer parse_normalizer(const json& j, const std::string& where) {
  Normalizer n;
  if (j.is_null()) return n;
  ET_CHECK(j.is_object() && j.contains("type") && j["type"].is_string(), where,
           ": normalizer must be an object with a string 'type'");
  std::string type = j["type"].get<std::string>();
  auto flag = [&](const char* key, bool dflt) {
    if (!j.contains(key) || j[key].is_null()) return dflt;
    ET_CHECK(j[key].is_boolean(), where, ": normalizer.", key, " must be a boolean");
    return j[key].get<bool>();
  };
  auto text = [&](const char* key) {
    ET_CHECK(j.contains(key) && j[key].is_string(), where, ": normalizer ", type, ".", key,
             " must be a string");
    return u::decode_utf8(j[key].get<std::string>());
  };
  using K = Normalizer::Kind;
  if (type == "BertNormalizer") {
    n.kind = K::Bert;
    n.clean_text = flag("clean_text", true);
    n.handle_chinese_chars = flag("handle_chinese_chars", true);
    n.lowercase = flag("lowercase", true);
    if (j.contains("strip_accents") && !j["strip_accents"].is_null())
      n.strip_accents = flag("strip_accents", false) ? 1 : 0;
  } else if (type == "Lowercase") {
    n.kind = K::Lowercase;
  } else if (type == "StripAccents") {
    n.kind = K::StripAccents;
  } else if (type == "NFC") {
    n.kind = K::NFC;
  } else if (type == "NFD") {
    n.kind = K::NFD;
  } else if (type == "NFKC") {
    n.kind = K::NFKC;
  } else if (type == "NFKD") {
    n.kind = K::NFKD;
  } else if (type == "Replace") {
    n.kind = K::Replace;
    ET_CHECK(j.contains("pattern"), where, ": normalizer Replace needs 'pattern'");
    n.pattern = pattern_string(j["pattern"], where, "normalizer Replace", &n.regex);
    n.content = text("content");
    ET_CHECK(n.regex || !n.pattern.empty(), where,
             ": normalizer Replace.pattern must not be empty");
  } else if (type == "Prepend") {
    n.kind = K::Prepend;
    n.content = text("prepend");
  } else if (type == "Strip") {
    n.kind = K::Strip;
    n.strip_left = flag("strip_left", true);
    n.strip_right = flag("strip_right", true);
  } else if (type == "Precompiled") {
    n.kind = K::Precompiled;
    ET_CHECK(j.contains("precompiled_charsmap"), where,
             ": normalizer Precompiled needs 'precompiled_charsmap'");
    // null or "" (some converted models): no normalization at all
    if (j["precompiled_charsmap"].is_string() &&
        !j["precompiled_charsmap"].get<std::string>().empty()) {
      std::string what = where + ": normalizer.precompiled_charsmap";
      std::string bytes = base64_decode(j["precompiled_charsmap"].get<std::string>(), what);
      n.charsmap = std::make_shared<PrecompiledCharsmap>(parse_precompiled_charsmap(bytes, what));
    }
  } else if (type == "ByteLevel") {
    n.kind = K::ByteLevel;
  } else if (type == "Sequence") {
    n.kind = K::Sequence;
    ET_CHECK(j.contains("normalizers") && j["normalizers"].is_array(), where,
             ": normalizer Sequence needs an array 'normalizers'");
    for (const auto& s : j["normalizers"]) n.sequence.push_back(parse_normalizer(s, where));
  } else {
    fail(where, ": normalizer.type '", type, "' is not supported");
  }
  return n;
}

NormString to_norm_string(std::u32string_view text) {
  NormString s(text.size());
  for (size_t i = 0; i < text.size(); ++i) s[i] = {text[i], static_cast<int32_t>(i)};
  return s;
}

void apply_rewrites(NormString& s, const std::vector<Rewrite>& rw) {
  NormString out;
  out.reserve(rw.size());
  size_t cursor = 0;  // next source character
  for (const Rewrite& r : rw) {
    int32_t orig;
    if (r.change > 0) {
      orig = cursor > 0 ? s[cursor - 1].orig : (s.empty() ? 0 : s[0].orig);
    } else {
      orig = cursor < s.size() ? s[cursor].orig : (s.empty() ? 0 : s.back().orig);
      cursor += static_cast<size_t>(1 - r.change);
    }
    out.push_back({r.c, orig});
  }
  s.swap(out);
}

void prepend_chars(NormString& s, std::u32string_view prefix) {
  if (s.empty() || prefix.empty()) return;
  NormString out;
  out.reserve(s.size() + prefix.size());
  for (char32_t c : prefix) out.push_back({c, s[0].orig});
  out.insert(out.end(), s.begin(), s.end());
  s.swap(out);
}

// Maps every character to zero or more characters that keep its alignment.
template <typename F>
static void map_chars(NormString& s, F f) {
  NormString out;
  out.reserve(s.size());
  std::u32string tmp;
  for (const NormChar& ch : s) {
    tmp.clear();
    f(ch.c, tmp);
    for (char32_t c : tmp) out.push_back({c, ch.orig});
  }
  s.swap(out);
}

static void strip_marks(NormString& s) {
  std::erase_if(s, [](const NormChar& ch) { return u::is_mark_nonspacing(ch.c); });
}

// Unicode normalization forms. Text is cut into runs that cannot compose with each other
// (a run starts at a character of combining class 0 that is not itself a mark or a Hangul
// vowel/trailing jamo), each run is normalized on its own, and its characters keep their
// sources where the length is unchanged; a run that shrinks (composition) gives the i-th
// output the i-th source, and one that grows (decomposition) is aligned by decomposing
// each source character alone.
static void unicode_form(NormString& s, u::Form form) {
  const char32_t identity_below = (form == u::Form::NFC || form == u::Form::NFD) ? 0xC0 : 0xA0;
  if (std::all_of(s.begin(), s.end(), [&](const NormChar& ch) { return ch.c < identity_below; }))
    return;
  NormString out;
  out.reserve(s.size());
  std::u32string run, normalized, piece;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = i + 1;
    while (j < s.size() && !u::starts_composition_run(s[j].c)) ++j;
    run.clear();
    for (size_t k = i; k < j; ++k) run.push_back(s[k].c);
    normalized = u::normalize_form(run, form);
    size_t n_in = j - i, n_out = normalized.size();
    if (n_out <= n_in) {
      for (size_t k = 0; k < n_out; ++k) out.push_back({normalized[k], s[i + k].orig});
    } else {
      // decomposition: source k owns as many outputs as its own decomposition has
      size_t at = 0;
      for (size_t k = i; k < j && at < n_out; ++k) {
        piece = u::normalize_form(std::u32string(1, s[k].c), form);
        size_t take = std::max<size_t>(1, piece.size());
        if (k + 1 == j) take = n_out - at;
        for (size_t t = 0; t < take && at < n_out; ++t)
          out.push_back({normalized[at++], s[k].orig});
      }
    }
    i = j;
  }
  s.swap(out);
}

// BertNormalizer, in the order tokenizers applies it: clean text, pad CJK characters with
// spaces, strip accents (NFD, then drop Mn), lowercase.
static void bert_normalize(const Normalizer& n, NormString& s) {
  NormString out;
  out.reserve(s.size() * 2);
  for (const NormChar& ch : s) {
    if (n.clean_text) {
      if (ch.c == 0 || ch.c == 0xFFFD || u::is_control(ch.c)) continue;
      if (u::is_whitespace(ch.c)) {
        out.push_back({U' ', ch.orig});
        continue;
      }
    }
    if (n.handle_chinese_chars && u::is_cjk(ch.c)) {
      out.push_back({U' ', ch.orig});
      out.push_back(ch);
      out.push_back({U' ', ch.orig});
      continue;
    }
    out.push_back(ch);
  }
  s.swap(out);
  bool strip = n.strip_accents < 0 ? n.lowercase : n.strip_accents == 1;
  if (strip) {
    map_chars(s, u::nfd_append);
    strip_marks(s);
  }
  if (n.lowercase) map_chars(s, u::lower_append);
}

// Replace every occurrence of a literal (left to right, non-overlapping) or regex match.
// The i-th replacement character takes the i-th replaced character's source (the last one's
// when the replacement is longer), as tokenizers' alignment does.
static void replace_all(const Normalizer& n, NormString& s) {
  const std::vector<std::pair<Span, bool>> parts =
      n.regex ? regex_find_matches(*n.regex, s, 0, static_cast<int32_t>(s.size()))
              : literal_find_matches(s, n.pattern);
  NormString out;
  out.reserve(s.size());
  for (const auto& [span, is_match] : parts) {
    if (!is_match) {
      out.insert(out.end(), s.begin() + span.first, s.begin() + span.second);
      continue;
    }
    int32_t len = span.second - span.first;
    for (size_t k = 0; k < n.content.size(); ++k) {
      int32_t src = span.first + std::min<int32_t>(static_cast<int32_t>(k), len - 1);
      out.push_back({n.content[k], len > 0 ? s[src].orig : (s.empty() ? 0 : s[0].orig)});
    }
  }
  s.swap(out);
}

// Precompiled (SentencePiece charsmap), as tokenizers applies it: per extended grapheme
// cluster, the whole cluster is looked up when it is under 6 bytes; otherwise (or when not
// found) each character is looked up alone.
static void precompiled(const PrecompiledCharsmap& m, NormString& s) {
  std::vector<Rewrite> rw;
  rw.reserve(s.size());
  bool modified = false;
  std::string chunk;
  auto replace = [&](size_t old_count, std::string_view repl) {
    std::u32string nc = u::decode_utf8(repl);
    for (char32_t c : nc) rw.push_back({c, 0});
    long diff = static_cast<long>(nc.size()) - static_cast<long>(old_count);
    if (diff > 0) {
      for (long k = 0; k < diff; ++k) rw[rw.size() - 1 - static_cast<size_t>(k)].change = 1;
    } else if (diff < 0 && !rw.empty()) {
      // the removal is charged to the last character written so far; with nothing written
      // yet it is lost, and later characters align one source earlier (tokenizers does so)
      rw.back().change += static_cast<int>(diff);
    }
  };
  size_t i = 0;
  while (i < s.size()) {
    size_t j = i + 1;
    int32_t state = 0;
    while (j < s.size() && !u::grapheme_break(s[j - 1].c, s[j].c, &state)) ++j;
    chunk.clear();
    for (size_t k = i; k < j; ++k) u::append_utf8(chunk, s[k].c);
    if (chunk.size() < 6) {
      if (auto repl = charsmap_transform(m, chunk)) {
        modified = true;
        replace(j - i, *repl);
        i = j;
        continue;
      }
    }
    for (size_t k = i; k < j; ++k) {
      chunk.clear();
      u::append_utf8(chunk, s[k].c);
      if (auto repl = charsmap_transform(m, chunk)) {
        modified = true;
        replace(1, *repl);
      } else {
        rw.push_back({s[k].c, 0});
      }
    }
    i = j;
  }
  if (!modified) return;
  apply_rewrites(s, rw);
}

void normalize(const Normalizer& n, NormString& s) {
  using K = Normalizer::Kind;
  switch (n.kind) {
    case K::None:
      return;
    case K::Bert:
      bert_normalize(n, s);
      return;
    case K::Lowercase:
      map_chars(s, u::lower_append);
      return;
    case K::StripAccents:
      strip_marks(s);
      return;
    case K::NFC:
      unicode_form(s, u::Form::NFC);
      return;
    case K::NFD:
      unicode_form(s, u::Form::NFD);
      return;
    case K::NFKC:
      unicode_form(s, u::Form::NFKC);
      return;
    case K::NFKD:
      unicode_form(s, u::Form::NFKD);
      return;
    case K::Replace:
      replace_all(n, s);
      return;
    case K::Prepend:
      prepend_chars(s, n.content);
      return;
    case K::Strip: {
      size_t b = 0, e = s.size();
      if (n.strip_left)
        while (b < e && u::is_whitespace(s[b].c)) ++b;
      if (n.strip_right)
        while (e > b && u::is_whitespace(s[e - 1].c)) --e;
      s = NormString(s.begin() + static_cast<long>(b), s.begin() + static_cast<long>(e));
      return;
    }
    case K::Precompiled:
      if (n.charsmap) precompiled(*n.charsmap, s);
      return;
    case K::ByteLevel:
      map_chars(s, u::byte_level_append);
      return;
    case K::Sequence:
      for (const Normalizer& x : n.sequence) normalize(x, s);
      return;
  }
}

}  // namespace et
