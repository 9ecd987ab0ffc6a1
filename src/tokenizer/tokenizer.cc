#include "tokenizer/tokenizer.h"

#include <algorithm>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace et {

int Tokenizer::num_special_tokens() const {
  int n = 0;
  for (const auto& p : single)
    if (!p.is_sequence) n += static_cast<int>(p.ids.size());
  return n;
}

static std::vector<TemplatePiece> parse_post_processor(const json& j, const std::string& where,
                                                       const WordPiece& wp) {
  std::vector<TemplatePiece> out;
  if (j.is_null()) return {{true, {}}};
  ET_CHECK(j.is_object() && j.contains("type") && j["type"].is_string(), where,
           ": post_processor must be an object with a string 'type'");
  std::string type = j["type"].get<std::string>();
  if (type == "TemplateProcessing") {
    ET_CHECK(j.contains("single") && j["single"].is_array(), where,
             ": post_processor.single must be an array");
    const json& specials = j.value("special_tokens", json::object());
    for (const auto& piece : j["single"]) {
      if (piece.contains("Sequence")) {
        out.push_back({true, {}});
      } else if (piece.contains("SpecialToken")) {
        std::string name = piece["SpecialToken"].value("id", "");
        ET_CHECK(specials.contains(name) && specials[name].contains("ids"), where,
                 ": post_processor.special_tokens has no entry '", name, "'");
        out.push_back({false, specials[name]["ids"].get<std::vector<int32_t>>()});
      } else {
        fail(where,
             ": post_processor.single has an element that is neither Sequence nor SpecialToken");
      }
    }
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    // {"cls": ["[CLS]", 101], "sep": ["[SEP]", 102]}
    for (const char* key : {"cls", "sep"}) {
      ET_CHECK(j.contains(key) && j[key].is_array() && j[key].size() == 2, where,
               ": post_processor.", key, " must be [token, id]");
    }
    out.push_back({false, {j["cls"][1].get<int32_t>()}});
    out.push_back({true, {}});
    out.push_back({false, {j["sep"][1].get<int32_t>()}});
  } else {
    fail(where, ": post_processor.type '", type, "' is not supported");
  }
  (void)wp;
  return out;
}

Tokenizer parse_tokenizer_json(const json& j, const std::string& where) {
  Tokenizer t;
  t.source = where;
  ET_CHECK(j.is_object() && j.contains("model") && j["model"].is_object(), where,
           ": missing object 'model'");
  const json& model = j["model"];
  std::string mtype = model.value("type", "");
  if (mtype.empty() && model.contains("continuing_subword_prefix")) mtype = "WordPiece";
  ET_CHECK(mtype == "WordPiece", where, ": model.type '", mtype,
           "' is not supported (supported: WordPiece)");
  t.wordpiece = parse_wordpiece(model, where);
  t.normalizer = parse_normalizer(j.value("normalizer", json()), where);
  t.pre_tokenizer = parse_pre_tokenizer(j.value("pre_tokenizer", json()), where);
  t.single = parse_post_processor(j.value("post_processor", json()), where, t.wordpiece);
  if (j.contains("added_tokens")) {
    ET_CHECK(j["added_tokens"].is_array(), where, ": added_tokens must be an array");
    for (const auto& a : j["added_tokens"]) {
      ET_CHECK(a.contains("content") && a["content"].is_string() && a.contains("id"), where,
               ": each added_tokens entry needs 'content' and 'id'");
      AddedToken at;
      at.content = unicode::decode_utf8(a["content"].get<std::string>());
      at.id = a["id"].get<int32_t>();
      at.special = a.value("special", false);
      at.lstrip = a.value("lstrip", false);
      at.rstrip = a.value("rstrip", false);
      if (!at.content.empty()) t.added.push_back(at);
    }
  }
  // Longest first, so that overlapping added tokens match as tokenizers' trie does.
  std::stable_sort(t.added.begin(), t.added.end(), [](const AddedToken& a, const AddedToken& b) {
    return a.content.size() > b.content.size();
  });
  int32_t max_id = -1;
  for (const auto& [tok, id] : t.wordpiece.vocab) max_id = std::max(max_id, id);
  for (const auto& a : t.added) max_id = std::max(max_id, a.id);
  t.id_to_token.assign(static_cast<size_t>(max_id + 1), "");
  for (const auto& [tok, id] : t.wordpiece.vocab) t.id_to_token[id] = tok;
  for (const auto& a : t.added) t.id_to_token[a.id] = unicode::encode_utf8(a.content);
  if (j.contains("padding") && j["padding"].is_object() && j["padding"].contains("pad_id"))
    t.pad_id = j["padding"]["pad_id"].get<int32_t>();
  return t;
}

Tokenizer load_tokenizer(const std::string& dir) {
  std::string tj = path_join(dir, "tokenizer.json");
  if (file_exists(tj)) return parse_tokenizer_json(read_json_file(tj), tj);
  std::string vocab = path_join(dir, "vocab.txt");
  ET_CHECK(file_exists(vocab), dir, ": no tokenizer.json or vocab.txt");
  bool lower = true;
  std::string cfg = path_join(dir, "tokenizer_config.json");
  if (file_exists(cfg)) lower = read_json_file(cfg).value("do_lower_case", true);
  json j = {{"model", {{"type", "WordPiece"}, {"vocab", json::object()}}},
            {"normalizer", {{"type", "BertNormalizer"}, {"lowercase", lower}}},
            {"pre_tokenizer", {{"type", "BertPreTokenizer"}}}};
  WordPiece wp = wordpiece_from_vocab_txt(vocab);
  for (const auto& [tok, id] : wp.vocab) j["model"]["vocab"][tok] = id;
  for (const char* s : {"[CLS]", "[SEP]"})
    ET_CHECK(wp.vocab.count(s), vocab, ": vocabulary has no '", s, "' token");
  j["post_processor"] = {{"type", "BertProcessing"},
                         {"cls", {"[CLS]", wp.vocab["[CLS]"]}},
                         {"sep", {"[SEP]", wp.vocab["[SEP]"]}}};
  j["added_tokens"] = json::array();
  for (const char* s : {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"})
    if (wp.vocab.count(s))
      j["added_tokens"].push_back({{"content", s}, {"id", wp.vocab[s]}, {"special", true}});
  Tokenizer t = parse_tokenizer_json(j, vocab);
  return t;
}

namespace {

struct Segment {
  int32_t begin, end;  // code point range of the original text
  int32_t added_id;    // >= 0: an added token
};

// Splits the text at occurrences of added tokens (leftmost, longest), honouring lstrip/rstrip,
// which let the token absorb whitespace on its side.
std::vector<Segment> split_added(const Tokenizer& tok, const std::u32string& text) {
  std::vector<Segment> out;
  int32_t n = static_cast<int32_t>(text.size()), start = 0, i = 0;
  while (i < n) {
    const AddedToken* hit = nullptr;
    for (const AddedToken& a : tok.added) {
      if (a.content.size() <= static_cast<size_t>(n - i) &&
          text.compare(static_cast<size_t>(i), a.content.size(), a.content) == 0) {
        hit = &a;
        break;
      }
    }
    if (!hit) {
      ++i;
      continue;
    }
    int32_t b = i, e = i + static_cast<int32_t>(hit->content.size());
    if (hit->lstrip)
      while (b > start && unicode::is_whitespace(text[b - 1])) --b;
    if (hit->rstrip)
      while (e < n && unicode::is_whitespace(text[e])) ++e;
    if (b > start) out.push_back({start, b, -1});
    out.push_back({b, e, hit->id});
    start = i = e;
  }
  if (start < n) out.push_back({start, n, -1});
  return out;
}

}  // namespace

Encoding encode(const Tokenizer& tok, std::string_view text, bool add_special_tokens,
                int max_length) {
  std::u32string chars = unicode::decode_utf8(text);
  Encoding seq;
  for (const Segment& seg : split_added(tok, chars)) {
    if (seg.added_id >= 0) {
      seq.ids.push_back(seg.added_id);
      seq.offsets.emplace_back(seg.begin, seg.end);
      continue;
    }
    NormString s;
    s.reserve(static_cast<size_t>(seg.end - seg.begin));
    for (int32_t i = seg.begin; i < seg.end; ++i) s.push_back({chars[i], i});
    normalize(tok.normalizer, s);
    std::vector<Span> words{{0, static_cast<int32_t>(s.size())}};
    pre_tokenize(tok.pre_tokenizer, s, words);
    std::vector<Piece> pieces;
    for (const Span& w : words) {
      if (w.first == w.second) continue;
      pieces.clear();
      wordpiece_tokenize(tok.wordpiece, s, w, pieces);
      for (const Piece& p : pieces) {
        seq.ids.push_back(p.id);
        seq.offsets.emplace_back(s[p.span.first].orig, s[p.span.second - 1].orig + 1);
      }
    }
  }
  if (max_length > 0) {
    int room = max_length - (add_special_tokens ? tok.num_special_tokens() : 0);
    if (room < 0) room = 0;
    if (static_cast<int>(seq.ids.size()) > room) {
      seq.ids.resize(static_cast<size_t>(room));
      seq.offsets.resize(static_cast<size_t>(room));
    }
  }
  if (!add_special_tokens) return seq;
  Encoding out;
  for (const TemplatePiece& p : tok.single) {
    if (p.is_sequence) {
      out.ids.insert(out.ids.end(), seq.ids.begin(), seq.ids.end());
      out.offsets.insert(out.offsets.end(), seq.offsets.begin(), seq.offsets.end());
    } else {
      for (int32_t id : p.ids) {
        out.ids.push_back(id);
        out.offsets.emplace_back(0, 0);
      }
    }
  }
  return out;
}

std::vector<std::string> tokens_of(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  std::vector<std::string> out;
  for (int32_t id : ids)
    out.push_back(id >= 0 && id < tok.vocab_size() ? tok.id_to_token[id] : std::string("<?>"));
  return out;
}

}  // namespace et
