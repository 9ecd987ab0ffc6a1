#include "tokenizer/normalizer.h"

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace et {

namespace u = unicode;

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
  if (type == "BertNormalizer") {
    n.kind = Normalizer::Kind::Bert;
    n.clean_text = flag("clean_text", true);
    n.handle_chinese_chars = flag("handle_chinese_chars", true);
    n.lowercase = flag("lowercase", true);
    if (j.contains("strip_accents") && !j["strip_accents"].is_null())
      n.strip_accents = flag("strip_accents", false) ? 1 : 0;
  } else if (type == "Lowercase") {
    n.kind = Normalizer::Kind::Lowercase;
  } else if (type == "StripAccents") {
    n.kind = Normalizer::Kind::StripAccents;
  } else if (type == "NFD") {
    n.kind = Normalizer::Kind::NFD;
  } else if (type == "Sequence") {
    n.kind = Normalizer::Kind::Sequence;
    ET_CHECK(j.contains("normalizers") && j["normalizers"].is_array(), where,
             ": normalizer Sequence needs an array 'normalizers'");
    for (const auto& s : j["normalizers"]) n.sequence.push_back(parse_normalizer(s, where));
  } else {
    fail(where, ": normalizer.type '", type, "' is not supported");
  }
  return n;
}

static void nfd(NormString& s) {
  NormString out;
  out.reserve(s.size());
  std::u32string tmp;
  for (const NormChar& ch : s) {
    tmp.clear();
    u::nfd_append(ch.c, tmp);
    for (char32_t c : tmp) out.push_back({c, ch.orig});
  }
  s.swap(out);
}

static void strip_marks(NormString& s) {
  NormString out;
  out.reserve(s.size());
  for (const NormChar& ch : s)
    if (!u::is_mark_nonspacing(ch.c)) out.push_back(ch);
  s.swap(out);
}

static void lower(NormString& s) {
  NormString out;
  out.reserve(s.size());
  std::u32string tmp;
  for (const NormChar& ch : s) {
    tmp.clear();
    u::lower_append(ch.c, tmp);
    for (char32_t c : tmp) out.push_back({c, ch.orig});
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
    nfd(s);
    strip_marks(s);
  }
  if (n.lowercase) lower(s);
}

void normalize(const Normalizer& n, NormString& s) {
  switch (n.kind) {
    case Normalizer::Kind::None:
      return;
    case Normalizer::Kind::Bert:
      bert_normalize(n, s);
      return;
    case Normalizer::Kind::Lowercase:
      lower(s);
      return;
    case Normalizer::Kind::StripAccents:
      strip_marks(s);
      return;
    case Normalizer::Kind::NFD:
      nfd(s);
      return;
    case Normalizer::Kind::Sequence:
      for (const Normalizer& x : n.sequence) normalize(x, s);
      return;
  }
}

}  // namespace et
