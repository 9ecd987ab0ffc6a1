#include "tokenizer/regex.h"

#include <pcre2.h>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace et {

struct Regex {
  pcre2_code* code = nullptr;
  ~Regex() { pcre2_code_free(code); }
};

std::shared_ptr<const Regex> compile_regex(const std::string& pattern, const std::string& where) {
  int err = 0;
  PCRE2_SIZE at = 0;
  auto re = std::make_shared<Regex>();
  re->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                           PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &at, nullptr);
  if (!re->code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    fail(where, ": regular expression '", pattern, "' is invalid at offset ", at, ": ",
         reinterpret_cast<const char*>(msg));
  }
  pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter on failure
  return re;
}

std::vector<std::pair<Span, bool>> regex_find_matches(const Regex& re, const NormString& s,
                                                      int32_t b, int32_t e) {
  std::vector<std::pair<Span, bool>> out;
  if (b >= e) return out;
  // UTF-8 of the range and, for every byte offset at a character start, the character index.
  std::string utf8;
  utf8.reserve(static_cast<size_t>(e - b));
  std::vector<int32_t> char_at;
  char_at.reserve(static_cast<size_t>(e - b) + 1);
  for (int32_t i = b; i < e; ++i) {
    unicode::append_utf8(utf8, s[i].c);
    char_at.resize(utf8.size(), i);
  }
  char_at.push_back(e);
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(re.code, nullptr);
  ET_CHECK(md, "regex: out of memory");
  int32_t prev = b;
  PCRE2_SIZE pos = 0;
  while (pos < utf8.size()) {
    int rc = pcre2_match(re.code, reinterpret_cast<PCRE2_SPTR>(utf8.data()), utf8.size(), pos,
                         PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc < 0) break;  // PCRE2_ERROR_NOMATCH or a resource limit: the rest is not a match
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    if (ov[1] == ov[0]) {  // empty match: move on by one character
      pos = ov[0] + 1;
      while (pos < utf8.size() && (static_cast<unsigned char>(utf8[pos]) & 0xC0) == 0x80) ++pos;
      continue;
    }
    int32_t ms = char_at[ov[0]], me = ov[1] < utf8.size() ? char_at[ov[1]] : e;
    if (prev < ms) out.push_back({{prev, ms}, false});
    out.push_back({{ms, me}, true});
    prev = me;
    pos = ov[1];
  }
  if (prev < e) out.push_back({{prev, e}, false});
  pcre2_match_data_free(md);
  return out;
}

std::vector<std::pair<Span, bool>> literal_find_matches(const NormString& s,
                                                        std::u32string_view lit) {
  std::vector<std::pair<Span, bool>> parts;
  const int32_t n = static_cast<int32_t>(s.size()), len = static_cast<int32_t>(lit.size());
  int32_t prev = 0;
  for (int32_t i = 0; len > 0 && i + len <= n;) {
    bool hit = true;
    for (int32_t k = 0; k < len && hit; ++k) hit = s[i + k].c == lit[k];
    if (!hit) {
      ++i;
      continue;
    }
    if (prev < i) parts.push_back({{prev, i}, false});
    parts.push_back({{i, i + len}, true});
    prev = i += len;
  }
  if (prev < n) parts.push_back({{prev, n}, false});
  return parts;
}

}  // namespace et
