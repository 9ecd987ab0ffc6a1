#include "tokenizer/sentencepiece_model.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <unordered_map>

#include "core/error.h"
#include "io/base64.h"
#include "tokenizer/unicode.h"

namespace et {

namespace {

// Protobuf wire format: (field << 3 | wire type) varint keys; types 0 varint, 1 fixed64,
// 2 length-delimited, 5 fixed32.
struct Wire {
  std::string_view data;
  size_t pos = 0;
  const std::string& where;

  bool done() const { return pos >= data.size(); }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      ET_CHECK(pos < data.size(), where, ": truncated protobuf varint at byte ", pos);
      uint8_t b = static_cast<uint8_t>(data[pos++]);
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    fail(where, ": malformed protobuf varint at byte ", pos);
  }
  std::string_view bytes() {
    uint64_t n = varint();
    ET_CHECK(n <= data.size() - pos, where, ": protobuf field of ", n, " bytes at byte ", pos,
             " runs past the end of the file");
    std::string_view v = data.substr(pos, n);
    pos += n;
    return v;
  }
  float fixed32_float() {
    ET_CHECK(pos + 4 <= data.size(), where, ": truncated protobuf fixed32 at byte ", pos);
    float f;
    std::memcpy(&f, data.data() + pos, 4);
    pos += 4;
    return f;
  }
  void skip(int type) {
    switch (type) {
      case 0:
        varint();
        return;
      case 1:
        ET_CHECK(pos + 8 <= data.size(), where, ": truncated protobuf");
        pos += 8;
        return;
      case 2:
        bytes();
        return;
      case 5:
        ET_CHECK(pos + 4 <= data.size(), where, ": truncated protobuf");
        pos += 4;
        return;
      default:
        fail(where, ": unsupported protobuf wire type ", type, " at byte ", pos);
    }
  }
};

struct SpPiece {
  std::string piece;
  float score = 0;
  int type = 1;  // NORMAL=1 UNKNOWN=2 CONTROL=3 USER_DEFINED=4 UNUSED=5 BYTE=6
};

struct SpModel {
  std::vector<SpPiece> pieces;
  int model_type = 1;  // UNIGRAM=1 BPE=2 WORD=3 CHAR=4
  bool byte_fallback = false;
  int unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;
  std::string charsmap;
  bool add_dummy_prefix = true;
};

SpModel parse_model_proto(std::string_view data, const std::string& where) {
  SpModel m;
  Wire w{data, 0, where};
  while (!w.done()) {
    uint64_t key = w.varint();
    int field = static_cast<int>(key >> 3), type = static_cast<int>(key & 7);
    if (field == 1 && type == 2) {  // SentencePiece
      Wire p{w.bytes(), 0, where};
      SpPiece sp;
      while (!p.done()) {
        uint64_t k = p.varint();
        int f = static_cast<int>(k >> 3), t = static_cast<int>(k & 7);
        if (f == 1 && t == 2)
          sp.piece = std::string(p.bytes());
        else if (f == 2 && t == 5)
          sp.score = p.fixed32_float();
        else if (f == 3 && t == 0)
          sp.type = static_cast<int>(p.varint());
        else
          p.skip(t);
      }
      m.pieces.push_back(std::move(sp));
    } else if (field == 2 && type == 2) {  // TrainerSpec
      Wire t{w.bytes(), 0, where};
      while (!t.done()) {
        uint64_t k = t.varint();
        int f = static_cast<int>(k >> 3), ty = static_cast<int>(k & 7);
        if (ty != 0) {
          t.skip(ty);
          continue;
        }
        int64_t v = static_cast<int64_t>(t.varint());
        if (f == 3)
          m.model_type = static_cast<int>(v);
        else if (f == 35)
          m.byte_fallback = v != 0;
        else if (f == 40)
          m.unk_id = static_cast<int>(v);
        else if (f == 41)
          m.bos_id = static_cast<int>(static_cast<int32_t>(v));
        else if (f == 42)
          m.eos_id = static_cast<int>(static_cast<int32_t>(v));
        else if (f == 43)
          m.pad_id = static_cast<int>(static_cast<int32_t>(v));
      }
    } else if (field == 3 && type == 2) {  // NormalizerSpec
      Wire n{w.bytes(), 0, where};
      while (!n.done()) {
        uint64_t k = n.varint();
        int f = static_cast<int>(k >> 3), ty = static_cast<int>(k & 7);
        if (f == 2 && ty == 2)
          m.charsmap = std::string(n.bytes());
        else if (f == 3 && ty == 0)
          m.add_dummy_prefix = n.varint() != 0;
        else
          n.skip(ty);
      }
    } else {
      w.skip(type);
    }
  }
  ET_CHECK(!m.pieces.empty(), where, ": no pieces (is this a SentencePiece model file?)");
  ET_CHECK(m.model_type == 1 || m.model_type == 2, where, ": SentencePiece model type ",
           m.model_type, " is not supported (supported: 1 = UNIGRAM, 2 = BPE)");
  ET_CHECK(m.unk_id >= 0 && m.unk_id < static_cast<int>(m.pieces.size()), where,
           ": trainer_spec.unk_id ", m.unk_id, " is outside the ", m.pieces.size(), " pieces");
  return m;
}

// SentencePieceExtractor: merges (l, r) for every piece that splits into two pieces.
json bpe_merges(const SpModel& m) {
  std::unordered_map<std::string, int> id;
  for (size_t i = 0; i < m.pieces.size(); ++i) id.emplace(m.pieces[i].piece, static_cast<int>(i));
  struct Merge {
    std::string l, r;
    float score;
    int lid, rid;
    size_t llen, rlen;  // in characters
  };
  std::vector<Merge> merges;
  for (const SpPiece& p : m.pieces) {
    std::u32string cs = unicode::decode_utf8(p.piece);
    std::vector<Merge> local;
    for (size_t k = 1; k < cs.size(); ++k) {
      std::string l = unicode::encode_utf8(cs.substr(0, k)), r = unicode::encode_utf8(cs.substr(k));
      auto il = id.find(l), ir = id.find(r);
      if (il != id.end() && ir != id.end())
        local.push_back({l, r, p.score, il->second, ir->second, k, cs.size() - k});
    }
    std::stable_sort(local.begin(), local.end(), [](const Merge& a, const Merge& b) {
      return a.lid != b.lid ? a.lid < b.lid : a.rid < b.rid;
    });
    merges.insert(merges.end(), local.begin(), local.end());
  }
  // highest score first, then shortest left piece, then shortest right piece; stable
  std::stable_sort(merges.begin(), merges.end(), [](const Merge& a, const Merge& b) {
    if (a.score != b.score) return a.score > b.score;
    if (a.llen != b.llen) return a.llen < b.llen;
    return a.rlen < b.rlen;
  });
  json out = json::array();
  for (const Merge& mg : merges) out.push_back(json::array({mg.l, mg.r}));
  return out;
}

}  // namespace

// transformers' XLMRobertaConverter (fairseq's dictionary order): <s> <pad> </s> <unk>, then
// the model's pieces after its first three, then <mask>; every id shifts by one.
static void to_xlm_roberta_order(SpModel& m) {
  std::vector<SpPiece> pieces{{"<s>", 0, 3}, {"<pad>", 0, 3}, {"</s>", 0, 3}, {"<unk>", 0, 2}};
  for (size_t i = 3; i < m.pieces.size(); ++i) pieces.push_back(m.pieces[i]);
  pieces.push_back({"<mask>", 0, 3});
  m.pieces = std::move(pieces);
  m.unk_id = 3;
  m.bos_id = 0;
  m.eos_id = 2;
  m.pad_id = 1;
}

json sentencepiece_to_tokenizer_json(const std::string& model_path) {
  SpModel m = parse_model_proto(read_text_file(model_path), model_path);
  const bool bpe = m.model_type == 2;
  // XLM-R / BGE-M3 style folders: sentencepiece.bpe.model, or tokenizer_config.json naming an
  // XLM-RoBERTa tokenizer
  std::string cfg_path =
      path_join(std::filesystem::path(model_path).parent_path().string(), "tokenizer_config.json");
  json cfg = file_exists(cfg_path) ? read_json_file(cfg_path) : json::object();
  const std::string tk_class = cfg.value("tokenizer_class", "");
  if (!bpe && (std::filesystem::path(model_path).filename() == "sentencepiece.bpe.model" ||
               tk_class.find("XLMRoberta") != std::string::npos))
    to_xlm_roberta_order(m);
  json j;
  json added = json::array();
  for (size_t i = 0; i < m.pieces.size(); ++i) {
    const SpPiece& p = m.pieces[i];
    if (p.type == 2 || p.type == 3 || p.type == 4)
      added.push_back({{"id", i},
                       {"content", p.piece},
                       {"special", p.type != 4},
                       {"normalized", false},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"single_word", false}});
  }
  j["added_tokens"] = added;
  if (bpe) {
    json vocab = json::object();
    for (size_t i = 0; i < m.pieces.size(); ++i) vocab[m.pieces[i].piece] = i;
    j["model"] = {
        {"type", "BPE"},           {"vocab", vocab},
        {"merges", bpe_merges(m)}, {"unk_token", m.pieces[static_cast<size_t>(m.unk_id)].piece},
        {"fuse_unk", true},        {"byte_fallback", m.byte_fallback}};
    j["normalizer"] = {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\u2581"}};
    j["pre_tokenizer"] = {{"type", "Split"},
                          {"pattern", {{"String", " "}}},
                          {"behavior", "MergedWithPrevious"},
                          {"invert", false}};
  } else {
    json vocab = json::array();
    for (const SpPiece& p : m.pieces) vocab.push_back(json::array({p.piece, p.score}));
    j["model"] = {{"type", "Unigram"},
                  {"vocab", vocab},
                  {"unk_id", m.unk_id},
                  {"byte_fallback", m.byte_fallback}};
    if (!m.charsmap.empty())
      j["normalizer"] = {{"type", "Precompiled"},
                         {"precompiled_charsmap", base64_encode(m.charsmap)}};
    j["pre_tokenizer"] = {
        {"type", "Sequence"},
        {"pretokenizers", json::array({{{"type", "WhitespaceSplit"}},
                                       {{"type", "Metaspace"},
                                        {"replacement", "\u2581"},
                                        {"prepend_scheme", m.add_dummy_prefix ? "always" : "never"},
                                        {"split", true}}})}};
  }
  // Post-processor: BOS (and EOS for Unigram) as the model and tokenizer_config.json say.
  bool add_bos = m.bos_id >= 0, add_eos = !bpe && m.eos_id >= 0;
  if (cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean())
    add_bos = cfg["add_bos_token"];
  if (cfg.contains("add_eos_token") && cfg["add_eos_token"].is_boolean())
    add_eos = cfg["add_eos_token"];
  json single = json::array(), specials = json::object();
  auto special = [&](int id) {
    const std::string& name = m.pieces[static_cast<size_t>(id)].piece;
    single.push_back({{"SpecialToken", {{"id", name}, {"type_id", 0}}}});
    specials[name] = {{"id", name}, {"ids", {id}}, {"tokens", {name}}};
  };
  if (add_bos && m.bos_id < static_cast<int>(m.pieces.size())) special(m.bos_id);
  single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
  if (add_eos && m.eos_id >= 0 && m.eos_id < static_cast<int>(m.pieces.size())) special(m.eos_id);
  j["post_processor"] = {
      {"type", "TemplateProcessing"}, {"single", single}, {"special_tokens", specials}};
  return j;
}

}  // namespace et
