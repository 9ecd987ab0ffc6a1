#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <thread>

#include "core/error.h"
#include "tokenizer/sentencepiece_model.h"
#include "tokenizer/unicode.h"

namespace et {

namespace u = unicode;

int Tokenizer::num_special_tokens() const {
  int n = 0;
  for (const auto& p : post.single)
    if (!p.is_sequence) n += static_cast<int>(p.ids.size());
  return n;
}

static void parse_post_processor(const json& j, const std::string& where, PostProcessor& pp) {
  if (j.is_null()) return;
  ET_CHECK(j.is_object() && j.contains("type") && j["type"].is_string(), where,
           ": post_processor must be an object with a string 'type'");
  std::string type = j["type"].get<std::string>();
  auto flag = [&](const char* key, bool dflt) {
    return j.contains(key) && j[key].is_boolean() ? j[key].get<bool>() : dflt;
  };
  if (type == "TemplateProcessing") {
    ET_CHECK(j.contains("single") && j["single"].is_array(), where,
             ": post_processor.single must be an array");
    const json& specials = j.value("special_tokens", json::object());
    pp.single.clear();
    for (const auto& piece : j["single"]) {
      if (piece.contains("Sequence")) {
        pp.single.push_back({true, {}});
      } else if (piece.contains("SpecialToken")) {
        std::string name = piece["SpecialToken"].value("id", "");
        ET_CHECK(specials.contains(name) && specials[name].contains("ids") &&
                     specials[name]["ids"].is_array(),
                 where, ": post_processor.special_tokens has no entry '", name, "' with 'ids'");
        pp.single.push_back({false, specials[name]["ids"].get<std::vector<int32_t>>()});
      } else {
        fail(where,
             ": post_processor.single has an element that is neither Sequence nor SpecialToken");
      }
    }
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    // {"cls": ["[CLS]", 101], "sep": ["[SEP]", 102]}
    for (const char* key : {"cls", "sep"}) {
      ET_CHECK(j.contains(key) && j[key].is_array() && j[key].size() == 2 &&
                   j[key][1].is_number_integer(),
               where, ": post_processor.", key, " must be [token, id]");
    }
    pp.single = {
        {false, {j["cls"][1].get<int32_t>()}}, {true, {}}, {false, {j["sep"][1].get<int32_t>()}}};
    if (type == "RobertaProcessing") {
      pp.trim_offsets = flag("trim_offsets", true);
      pp.add_prefix_space = flag("add_prefix_space", true);
    }
  } else if (type == "ByteLevel") {
    pp.trim_offsets = flag("trim_offsets", true);
    pp.add_prefix_space = flag("add_prefix_space", true);
  } else if (type == "Sequence") {
    ET_CHECK(j.contains("processors") && j["processors"].is_array(), where,
             ": post_processor Sequence needs an array 'processors'");
    for (const auto& p : j["processors"]) parse_post_processor(p, where, pp);
  } else {
    fail(where, ": post_processor.type '", type, "' is not supported");
  }
}

static void parse_model(const json& j, const std::string& where, TokenizerModel& m) {
  ET_CHECK(j.is_object() && j.contains("model") && j["model"].is_object(), where,
           ": missing object 'model'");
  const json& model = j["model"];
  std::string type = model.value("type", "");
  if (type.empty()) {  // files of old tokenizers versions omit the type
    if (model.contains("merges"))
      type = "BPE";
    else if (model.contains("vocab") && model["vocab"].is_array())
      type = "Unigram";
    else if (model.contains("continuing_subword_prefix"))
      type = "WordPiece";
  }
  if (type == "WordPiece") {
    m.kind = TokenizerModel::Kind::WordPiece;
    m.wordpiece = parse_wordpiece(model, where);
  } else if (type == "BPE") {
    m.kind = TokenizerModel::Kind::Bpe;
    m.bpe = parse_bpe(model, where);
  } else if (type == "Unigram") {
    m.kind = TokenizerModel::Kind::Unigram;
    m.unigram = parse_unigram(model, where);
  } else {
    fail(where, ": model.type '", type, "' is not supported (supported: WordPiece, BPE, Unigram)");
  }
}

static void model_tokenize(const TokenizerModel& m, const NormString& word,
                           std::vector<Piece>& out) {
  switch (m.kind) {
    case TokenizerModel::Kind::WordPiece:
      wordpiece_tokenize(m.wordpiece, word, out);
      return;
    case TokenizerModel::Kind::Bpe:
      bpe_tokenize(m.bpe, word, out);
      return;
    case TokenizerModel::Kind::Unigram:
      unigram_tokenize(m.unigram, word, out);
      return;
  }
}

// Normalizes a whole string with the tokenizer's normalizer (for normalized added tokens).
static std::u32string normalized_text(const Normalizer& n, const std::u32string& s) {
  NormString ns = to_norm_string(s);
  normalize(n, ns);
  std::u32string out;
  for (const NormChar& c : ns) out.push_back(c.c);
  return out;
}

Tokenizer parse_tokenizer_json(const json& j, const std::string& where) {
  Tokenizer t;
  t.source = where;
  ET_CHECK(j.is_object(), where, ": tokenizer.json must be a JSON object");
  parse_model(j, where, t.model);
  t.normalizer = parse_normalizer(j.value("normalizer", json()), where);
  t.pre_tokenizer = parse_pre_tokenizer(j.value("pre_tokenizer", json()), where);
  parse_post_processor(j.value("post_processor", json()), where, t.post);
  if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
    ET_CHECK(j["added_tokens"].is_array(), where, ": added_tokens must be an array");
    for (size_t i = 0; i < j["added_tokens"].size(); ++i) {
      const json& a = j["added_tokens"][i];
      ET_CHECK(a.is_object() && a.contains("content") && a["content"].is_string() &&
                   a.contains("id") && a["id"].is_number_integer(),
               where, ": added_tokens[", i, "] needs a string 'content' and an integer 'id'");
      AddedToken at;
      at.content = u::decode_utf8(a["content"].get<std::string>());
      at.id = a["id"].get<int32_t>();
      at.special = a.value("special", false);
      at.lstrip = a.value("lstrip", false);
      at.rstrip = a.value("rstrip", false);
      at.single_word = a.value("single_word", false);
      at.normalized = a.value("normalized", !at.special);
      at.match = at.normalized ? normalized_text(t.normalizer, at.content) : at.content;
      if (!at.match.empty()) t.added.push_back(at);
    }
  }
  // Index by first character, longest first, so that overlapping added tokens match as
  // tokenizers' leftmost-longest Aho-Corasick does.
  for (size_t i = 0; i < t.added.size(); ++i)
    (t.added[i].normalized ? t.added_norm : t.added_raw)[t.added[i].match[0]].push_back(
        static_cast<int32_t>(i));
  for (auto* index : {&t.added_raw, &t.added_norm})
    for (auto& [c, list] : *index)
      std::stable_sort(list.begin(), list.end(), [&](int32_t a, int32_t b) {
        return t.added[a].match.size() > t.added[b].match.size();
      });
  // id -> token string
  int32_t max_id = -1;
  auto each_vocab = [&](auto f) {
    switch (t.model.kind) {
      case TokenizerModel::Kind::WordPiece:
        for (const auto& [tok, id] : t.model.wordpiece.vocab) f(tok, id);
        break;
      case TokenizerModel::Kind::Bpe:
        for (const auto& [tok, id] : t.model.bpe.vocab) f(tok, id);
        break;
      case TokenizerModel::Kind::Unigram:
        for (size_t id = 0; id < t.model.unigram.vocab.size(); ++id)
          f(t.model.unigram.vocab[id].first, static_cast<int32_t>(id));
        break;
    }
  };
  each_vocab([&](const std::string&, int32_t id) { max_id = std::max(max_id, id); });
  for (const auto& a : t.added) max_id = std::max(max_id, a.id);
  t.id_to_token.assign(static_cast<size_t>(max_id + 1), "");
  each_vocab([&](const std::string& tok, int32_t id) {
    ET_CHECK(id >= 0, where, ": model.vocab has a negative id for '", tok, "'");
    t.id_to_token[static_cast<size_t>(id)] = tok;
  });
  for (const auto& a : t.added)
    t.id_to_token[static_cast<size_t>(a.id)] = u::encode_utf8(a.content);
  if (t.post.trim_offsets) {
    auto space = [](char32_t c) { return c == 0x120 || u::is_whitespace(c); };
    t.edge_spaces.resize(t.id_to_token.size());
    for (size_t id = 0; id < t.id_to_token.size(); ++id) {
      const std::u32string s = u::decode_utf8(t.id_to_token[id]);
      int32_t lead = 0, trail = 0;
      while (lead < static_cast<int32_t>(s.size()) && space(s[lead])) ++lead;
      while (trail < static_cast<int32_t>(s.size()) && space(s[s.size() - 1 - trail])) ++trail;
      t.edge_spaces[id] = {lead, trail};
    }
  }
  if (j.contains("padding") && j["padding"].is_object() && j["padding"].contains("pad_id"))
    t.pad_id = j["padding"]["pad_id"].get<int32_t>();
  return t;
}

Tokenizer load_tokenizer(const std::string& dir) {
  std::string tj = path_join(dir, "tokenizer.json");
  if (file_exists(tj)) return parse_tokenizer_json(read_json_file(tj), tj);
  for (const char* name : {"tokenizer.model", "sentencepiece.bpe.model", "spiece.model"}) {
    std::string sp = path_join(dir, name);
    if (file_exists(sp)) return parse_tokenizer_json(sentencepiece_to_tokenizer_json(sp), sp);
  }
  std::string vocab = path_join(dir, "vocab.txt");
  ET_CHECK(file_exists(vocab), dir,
           ": no tokenizer.json, tokenizer.model, sentencepiece.bpe.model or vocab.txt");
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
  return parse_tokenizer_json(j, vocab);
}

namespace {

// A piece of the text: either an added token or a stretch for the normal pipeline.
struct Segment {
  NormString text;
  int32_t added_id = -1;
};

// Splits `s` at occurrences of added tokens from `index` (leftmost, longest), honouring
// single_word (no word character on either side) and lstrip/rstrip (the token absorbs the
// whitespace on that side).
void split_added(const Tokenizer& tok,
                 const std::unordered_map<char32_t, std::vector<int32_t>>& index, NormString&& s,
                 std::vector<Segment>& out) {
  const int32_t n = static_cast<int32_t>(s.size());
  if (index.empty() || n == 0) {
    if (n) out.push_back({std::move(s), -1});
    return;
  }
  int32_t start = 0, i = 0;
  while (i < n) {
    auto it = index.find(s[i].c);
    const AddedToken* hit = nullptr;
    if (it != index.end()) {
      for (int32_t k : it->second) {
        const AddedToken& a = tok.added[static_cast<size_t>(k)];
        const int32_t len = static_cast<int32_t>(a.match.size());
        if (len > n - i) continue;
        bool eq = true;
        for (int32_t q = 0; q < len && eq; ++q) eq = s[i + q].c == a.match[q];
        if (!eq) continue;
        if (a.single_word && ((i > 0 && u::is_word_char(s[i - 1].c)) ||
                              (i + len < n && u::is_word_char(s[i + len].c))))
          continue;
        hit = &a;
        break;
      }
    }
    if (!hit) {
      ++i;
      continue;
    }
    int32_t b = i, e = i + static_cast<int32_t>(hit->match.size());
    if (hit->lstrip)
      while (b > start && u::is_whitespace(s[b - 1].c)) --b;
    if (hit->rstrip)
      while (e < n && u::is_whitespace(s[e].c)) ++e;
    if (b > start) out.push_back({NormString(s.begin() + start, s.begin() + b), -1});
    out.push_back({NormString(s.begin() + b, s.begin() + e), hit->id});
    start = i = e;
  }
  if (start < n) out.push_back({NormString(s.begin() + start, s.end()), -1});
}

// tokenizers' ByteLevel::process_offsets: offsets of a token that carries leading or trailing
// spaces are trimmed to the text without them (except the single space added as a prefix).
void trim_offsets(const Tokenizer& tok, Encoding& seq) {
  for (size_t i = 0; i < seq.ids.size(); ++i) {
    const auto [lead, trail] = tok.edge_spaces[static_cast<size_t>(seq.ids[i])];
    auto& [b, e] = seq.offsets[i];
    if (lead > 0) {
      bool first = i == 0 || b == 0;
      if (!(first && tok.post.add_prefix_space && lead == 1)) b = std::min(b + lead, e);
    }
    if (trail > 0 && e >= trail) e = std::max(e - trail, b);
  }
}

}  // namespace

Encoding encode(const Tokenizer& tok, std::string_view text, bool add_special_tokens,
                int max_length, WordCache* cache) {
  NormString raw = to_norm_string(u::decode_utf8(text));
  std::vector<Segment> raw_segments, segments;
  split_added(tok, tok.added_raw, std::move(raw), raw_segments);
  for (Segment& seg : raw_segments) {
    if (seg.added_id >= 0) {
      segments.push_back(std::move(seg));
      continue;
    }
    normalize(tok.normalizer, seg.text);
    split_added(tok, tok.added_norm, std::move(seg.text), segments);
  }
  Encoding seq;
  std::vector<NormString> words;
  std::vector<Piece> pieces;
  std::string key;
  for (Segment& seg : segments) {
    if (seg.text.empty()) continue;
    if (seg.added_id >= 0) {
      seq.ids.push_back(seg.added_id);
      seq.offsets.emplace_back(seg.text.front().orig, seg.text.back().orig + 1);
      continue;
    }
    words.clear();
    words.push_back(std::move(seg.text));
    pre_tokenize(tok.pre_tokenizer, words);
    for (const NormString& w : words) {
      const std::vector<Piece>* found = &pieces;
      pieces.clear();
      if (cache) {
        key.clear();
        for (const NormChar& c : w) u::append_utf8(key, c.c);
        auto it = cache->pieces.find(key);
        if (it != cache->pieces.end()) {
          found = &it->second;
        } else {
          model_tokenize(tok.model, w, pieces);
          if (cache->pieces.size() >= cache->capacity) cache->pieces.clear();
          if (key.size() < 256) found = &(cache->pieces[key] = pieces);
        }
      } else {
        model_tokenize(tok.model, w, pieces);
      }
      for (const Piece& p : *found) {
        seq.ids.push_back(p.id);
        seq.offsets.emplace_back(w[p.span.first].orig, w[p.span.second - 1].orig + 1);
      }
    }
  }
  if (tok.post.trim_offsets) trim_offsets(tok, seq);
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
  for (const TemplatePiece& p : tok.post.single) {
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

std::vector<Encoding> encode_batch(const Tokenizer& tok, const std::vector<std::string>& texts,
                                   bool add_special_tokens, int max_length, int threads) {
  std::vector<Encoding> out(texts.size());
  size_t n_threads = threads > 0 ? static_cast<size_t>(threads)
                                 : std::max(1u, std::thread::hardware_concurrency());
  n_threads = std::min(n_threads, std::max<size_t>(1, texts.size() / 16));
  if (n_threads <= 1) {
    WordCache cache;
    for (size_t i = 0; i < texts.size(); ++i)
      out[i] = encode(tok, texts[i], add_special_tokens, max_length, &cache);
    return out;
  }
  // Interleaved rows balance long and short texts without a shared counter.
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(n_threads);
  for (size_t t = 0; t < n_threads; ++t)
    pool.emplace_back([&, t]() {
      try {
        WordCache cache;
        for (size_t i = t; i < texts.size(); i += n_threads)
          out[i] = encode(tok, texts[i], add_special_tokens, max_length, &cache);
      } catch (...) {
        errors[t] = std::current_exception();
      }
    });
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return out;
}

std::vector<std::string> tokens_of(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  std::vector<std::string> out;
  for (int32_t id : ids)
    out.push_back(id >= 0 && id < tok.vocab_size() ? tok.id_to_token[static_cast<size_t>(id)]
                                                   : std::string("<?>"));
  return out;
}

}  // namespace et
