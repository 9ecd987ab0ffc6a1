#include "tokenizer/pre_tokenizer.h"

#include "core/error.h"
#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"

namespace et {

namespace u = unicode;

const char* const kGpt2SplitPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

static SplitBehavior parse_behavior(const json& j, const std::string& where, SplitBehavior dflt) {
  if (!j.contains("behavior") || j["behavior"].is_null()) return dflt;
  std::string b = j["behavior"].is_string() ? j["behavior"].get<std::string>() : "";
  if (b == "Removed") return SplitBehavior::Removed;
  if (b == "Isolated") return SplitBehavior::Isolated;
  if (b == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (b == "Contiguous") return SplitBehavior::Contiguous;
  fail(where, ": pre_tokenizer.behavior '", b,
       "' is not one of Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous");
}

PreTokenizer parse_pre_tokenizer(const json& j, const std::string& where) {
  PreTokenizer p;
  if (j.is_null()) return p;
  ET_CHECK(j.is_object() && j.contains("type") && j["type"].is_string(), where,
           ": pre_tokenizer must be an object with a string 'type'");
  std::string type = j["type"].get<std::string>();
  std::string what = where + ": pre_tokenizer " + type;
  auto flag = [&](const char* key, bool dflt) {
    if (!j.contains(key) || j[key].is_null()) return dflt;
    ET_CHECK(j[key].is_boolean(), what, ".", key, " must be a boolean");
    return j[key].get<bool>();
  };
  using K = PreTokenizer::Kind;
  if (type == "BertPreTokenizer") {
    p.kind = K::Bert;
  } else if (type == "WhitespaceSplit") {
    p.kind = K::WhitespaceSplit;
  } else if (type == "Whitespace") {
    p.kind = K::Whitespace;
  } else if (type == "Punctuation") {
    p.kind = K::Punctuation;
    p.behavior = parse_behavior(j, what, SplitBehavior::Isolated);
  } else if (type == "Digits") {
    p.kind = K::Digits;
    p.individual_digits = flag("individual_digits", false);
  } else if (type == "CharDelimiterSplit") {
    p.kind = K::CharDelimiterSplit;
    ET_CHECK(j.contains("delimiter") && j["delimiter"].is_string(), what,
             ".delimiter must be a one-character string");
    p.literal = u::decode_utf8(j["delimiter"].get<std::string>());
    ET_CHECK(p.literal.size() == 1, what, ".delimiter must be a one-character string");
  } else if (type == "Split") {
    p.kind = K::Split;
    ET_CHECK(j.contains("pattern") && j["pattern"].is_object(), what,
             ".pattern must be {\"String\": ...} or {\"Regex\": ...}");
    const json& pat = j["pattern"];
    if (pat.contains("Regex") && pat["Regex"].is_string()) {
      p.regex = compile_regex(pat["Regex"].get<std::string>(), what + ".pattern");
    } else if (pat.contains("String") && pat["String"].is_string()) {
      p.literal = u::decode_utf8(pat["String"].get<std::string>());
    } else {
      fail(what, ".pattern must be {\"String\": ...} or {\"Regex\": ...}");
    }
    ET_CHECK(j.contains("behavior"), what, " needs 'behavior'");
    p.behavior = parse_behavior(j, what, SplitBehavior::Isolated);
    p.invert = flag("invert", false);
  } else if (type == "Metaspace") {
    p.kind = K::Metaspace;
    if (j.contains("replacement")) {
      ET_CHECK(j["replacement"].is_string(), what, ".replacement must be a one-character string");
      std::u32string r = u::decode_utf8(j["replacement"].get<std::string>());
      ET_CHECK(r.size() == 1, what, ".replacement must be a one-character string");
      p.replacement = r[0];
    }
    if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) {
      std::string s = j["prepend_scheme"].get<std::string>();
      if (s == "always")
        p.prepend = PreTokenizer::Prepend::Always;
      else if (s == "first")
        p.prepend = PreTokenizer::Prepend::First;
      else if (s == "never")
        p.prepend = PreTokenizer::Prepend::Never;
      else
        fail(what, ".prepend_scheme '", s, "' is not one of always, first, never");
    } else {  // files written before prepend_scheme existed
      p.prepend = flag("add_prefix_space", true) ? PreTokenizer::Prepend::Always
                                                 : PreTokenizer::Prepend::Never;
    }
    p.split = flag("split", true);
  } else if (type == "ByteLevel") {
    p.kind = K::ByteLevel;
    p.add_prefix_space = flag("add_prefix_space", true);
    if (flag("use_regex", true)) p.regex = compile_regex(kGpt2SplitPattern, what);
  } else if (type == "Sequence") {
    p.kind = K::Sequence;
    ET_CHECK(j.contains("pretokenizers") && j["pretokenizers"].is_array(), where,
             ": pre_tokenizer Sequence needs an array 'pretokenizers'");
    for (const auto& s : j["pretokenizers"]) p.sequence.push_back(parse_pre_tokenizer(s, where));
  } else {
    fail(where, ": pre_tokenizer.type '", type, "' is not supported");
  }
  return p;
}

// Applies a split behaviour to consecutive (piece, is_delimiter) ranges of `w`, appending the
// resulting non-empty words to `out` (tokenizers' NormalizedString::split).
static void split_word(const NormString& w, std::vector<std::pair<Span, bool>> parts,
                       SplitBehavior behavior, bool invert, std::vector<NormString>& out) {
  if (invert)
    for (auto& p : parts) p.second = !p.second;
  std::vector<std::pair<Span, bool>> kept;  // (range, removed)
  kept.reserve(parts.size());
  switch (behavior) {
    case SplitBehavior::Removed:
      kept = parts;
      break;
    case SplitBehavior::Isolated:
      for (const auto& [span, m] : parts) kept.push_back({span, false});
      break;
    case SplitBehavior::Contiguous: {
      bool prev = false;
      for (const auto& [span, m] : parts) {
        if (m == prev && !kept.empty())
          kept.back().first.second = span.second;
        else
          kept.push_back({span, false});
        prev = m;
      }
      break;
    }
    case SplitBehavior::MergedWithPrevious: {
      bool prev = false;
      for (const auto& [span, m] : parts) {
        if (m && !prev && !kept.empty())
          kept.back().first.second = span.second;
        else
          kept.push_back({span, false});
        prev = m;
      }
      break;
    }
    case SplitBehavior::MergedWithNext: {
      bool prev = false;
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
        if (it->second && !prev && !kept.empty())
          kept.back().first.first = it->first.first;
        else
          kept.push_back({it->first, false});
        prev = it->second;
      }
      std::reverse(kept.begin(), kept.end());
      break;
    }
  }
  for (const auto& [span, removed] : kept) {
    if (removed || span.first >= span.second) continue;
    out.emplace_back(w.begin() + span.first, w.begin() + span.second);
  }
}

// Consecutive ranges of characters that satisfy `is_delim` (one range per character when
// `each` is set) and of those that do not.
template <typename F>
static std::vector<std::pair<Span, bool>> char_matches(const NormString& w, F is_delim, bool each) {
  std::vector<std::pair<Span, bool>> parts;
  const int32_t n = static_cast<int32_t>(w.size());
  int32_t i = 0;
  while (i < n) {
    bool d = is_delim(w[i].c);
    int32_t j = i + 1;
    if (!(d && each))
      while (j < n && is_delim(w[j].c) == d) ++j;
    parts.push_back({{i, j}, d});
    i = j;
  }
  return parts;
}

// \w+|[^\w\s]+ (the Whitespace pre-tokenizer): runs of word characters and runs of other
// non-space characters; spaces are dropped.
static void whitespace_words(const NormString& w, std::vector<NormString>& out) {
  auto klass = [](char32_t c) { return u::is_whitespace(c) ? 0 : u::is_word_char(c) ? 1 : 2; };
  const size_t n = w.size();
  size_t i = 0;
  while (i < n) {
    int k = klass(w[i].c);
    size_t j = i + 1;
    while (j < n && klass(w[j].c) == k) ++j;
    if (k != 0)
      out.emplace_back(w.begin() + static_cast<long>(i), w.begin() + static_cast<long>(j));
    i = j;
  }
}

static void pre_tokenize_one(const PreTokenizer& p, NormString& w, std::vector<NormString>& out) {
  using K = PreTokenizer::Kind;
  switch (p.kind) {
    case K::None:
    case K::Sequence:
      out.push_back(std::move(w));
      return;
    case K::Bert: {
      // whitespace removed, then each punctuation character isolated
      std::vector<NormString> pieces;
      split_word(w, char_matches(w, u::is_whitespace, false), SplitBehavior::Removed, false,
                 pieces);
      for (const NormString& x : pieces)
        split_word(x, char_matches(x, u::is_bert_punctuation, true), SplitBehavior::Isolated, false,
                   out);
      return;
    }
    case K::WhitespaceSplit:
      split_word(w, char_matches(w, u::is_whitespace, false), SplitBehavior::Removed, false, out);
      return;
    case K::Whitespace:
      whitespace_words(w, out);
      return;
    case K::Punctuation:
      split_word(w,
                 char_matches(
                     w, [](char32_t c) { return u::is_bert_punctuation(c); }, true),
                 p.behavior, false, out);
      return;
    case K::Digits:
      split_word(w, char_matches(w, u::is_numeric, p.individual_digits),
                 p.individual_digits ? SplitBehavior::Isolated : SplitBehavior::Contiguous, false,
                 out);
      return;
    case K::CharDelimiterSplit:
      split_word(w, literal_find_matches(w, p.literal), SplitBehavior::Removed, false, out);
      return;
    case K::Split:
      split_word(w,
                 p.regex ? regex_find_matches(*p.regex, w, 0, static_cast<int32_t>(w.size()))
                         : literal_find_matches(w, p.literal),
                 p.behavior, p.invert, out);
      return;
    case K::Metaspace: {
      for (NormChar& ch : w)
        if (ch.c == U' ') ch.c = p.replacement;
      bool add = p.prepend == PreTokenizer::Prepend::Always ||
                 (p.prepend == PreTokenizer::Prepend::First && !w.empty() && w[0].orig == 0);
      if (add && !w.empty() && w[0].c != p.replacement)
        prepend_chars(w, std::u32string(1, p.replacement));
      if (!p.split) {
        out.push_back(std::move(w));
        return;
      }
      char32_t r = p.replacement;
      split_word(w,
                 char_matches(
                     w, [r](char32_t c) { return c == r; }, true),
                 SplitBehavior::MergedWithNext, false, out);
      return;
    }
    case K::ByteLevel: {
      if (p.add_prefix_space && !w.empty() && w[0].c != U' ') prepend_chars(w, U" ");
      size_t first = out.size();
      if (p.regex)
        split_word(w, regex_find_matches(*p.regex, w, 0, static_cast<int32_t>(w.size())),
                   SplitBehavior::Isolated, false, out);
      else
        out.push_back(std::move(w));
      std::u32string bytes;
      for (size_t k = first; k < out.size(); ++k) {
        NormString mapped;
        mapped.reserve(out[k].size());
        for (const NormChar& ch : out[k]) {
          bytes.clear();
          u::byte_level_append(ch.c, bytes);
          for (char32_t b : bytes) mapped.push_back({b, ch.orig});
        }
        out[k].swap(mapped);
      }
      return;
    }
  }
}

void pre_tokenize(const PreTokenizer& p, std::vector<NormString>& words) {
  if (p.kind == PreTokenizer::Kind::Sequence) {
    for (const PreTokenizer& x : p.sequence) pre_tokenize(x, words);
    return;
  }
  if (p.kind == PreTokenizer::Kind::None) return;
  std::vector<NormString> out;
  out.reserve(words.size() * 2);
  for (NormString& w : words)
    if (!w.empty()) pre_tokenize_one(p, w, out);
  std::erase_if(out, [](const NormString& w) { return w.empty(); });
  words.swap(out);
}

}  // namespace et
