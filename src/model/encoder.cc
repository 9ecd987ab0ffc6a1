#include "model/encoder.h"

#include <utility>

#include "core/error.h"

namespace et {

Encoder bind_encoder(const ModelConfig& cfg, ParamStore& store, const std::string& where) {
  Encoder e;
  e.rotary = is_rotary_family(cfg.family);
  if (e.rotary)
    e.rotary_enc = bind_rotary_encoder(cfg, store, where);
  else
    e.bert = bind_bert_encoder(cfg, store, where);
  return e;
}

std::vector<Linear*> encoder_linears(Encoder& e) {
  return e.rotary ? rotary_linears(e.rotary_enc) : bert_linears(e.bert);
}

std::vector<const Linear*> encoder_linears(const Encoder& e) {
  // the non-const listing reads the encoder only; the pointers handed out are const
  std::vector<Linear*> all = encoder_linears(const_cast<Encoder&>(e));
  return {all.begin(), all.end()};
}

bool unused_by_embeddings(const Encoder& e, const Linear* l) {
  return !e.rotary && e.bert.has_pooler && l == &e.bert.pooler;
}

std::vector<Param*> encoder_params(Encoder& e) {
  if (e.rotary) return rotary_params(e.rotary_enc);
  BertEncoder& b = e.bert;
  std::vector<Param*> out{b.word, b.pos, b.type, b.emb_ln_w, b.emb_ln_b, b.rel_bias};
  for (BertLayer& L : b.layers)
    for (Param* p : {L.ln1_w, L.ln1_b, L.ln2_w, L.ln2_b}) out.push_back(p);
  for (Linear* l : bert_linears(b)) {
    if (unused_by_embeddings(e, l)) continue;
    out.push_back(l->weight);
    out.push_back(l->bias);
  }
  std::erase(out, nullptr);
  return out;
}

const std::string& encoder_prefix(const Encoder& e) {
  return e.rotary ? e.rotary_enc.prefix : e.bert.prefix;
}

void set_gradient_checkpointing(Encoder& e, bool on) {
  e.bert.gradient_checkpointing = on;
  e.rotary_enc.gradient_checkpointing = on;
}

void set_model_dropout(Encoder& e, bool on) {
  e.bert.model_dropout = on;
  const ModelConfig& cfg = e.rotary ? e.rotary_enc.cfg : e.bert.cfg;
  ET_CHECK(!on || !e.rotary || cfg.unsupported_dropout.empty(), "model dropout of ",
           family_name(cfg.family), " is not implemented (config.json: ", cfg.unsupported_dropout,
           "); train with --model_dropout off");
}

std::vector<LinearGroup> encoder_groups(const Encoder& e) {
  std::vector<LinearGroup> groups;
  if (e.rotary)
    for (const RotaryLayer& L : e.rotary_enc.layers)
      for (const LinearGroup& g : rotary_groups(L)) groups.push_back(g);
  else
    for (const BertLayer& L : e.bert.layers) groups.push_back(bert_qkv(L));
  return groups;
}

Tensor encoder_forward(const Backend& be, const Encoder& e, const PackedBatch& batch,
                       EncoderSaved* saved, Rng* rng) {
  refresh_product_copies(be, encoder_linears(e), encoder_groups(e));
  if (e.rotary)
    return rotary_forward(be, e.rotary_enc, batch, saved ? &saved->rotary : nullptr, rng);
  return bert_forward(be, e.bert, batch, saved ? &saved->bert : nullptr, rng);
}

void encoder_backward(const Backend& be, const Encoder& e, EncoderSaved& saved, Tensor d_hidden) {
  if (e.rotary)
    rotary_backward(be, e.rotary_enc, saved.rotary, std::move(d_hidden));
  else
    bert_backward(be, e.bert, saved.bert, std::move(d_hidden));
}

}  // namespace et
