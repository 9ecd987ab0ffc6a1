// The Transformer module of a sentence model: the BERT-family encoder (model/bert.h) or a
// pre-norm rotary transformer (model/rotary_encoder.h), chosen by the config's family.
#pragma once

#include <string>
#include <vector>

#include "model/bert.h"
#include "model/rotary_encoder.h"

namespace et {

struct Encoder {
  bool rotary = false;
  BertEncoder bert;
  RotaryEncoder rotary_enc;
};

struct EncoderSaved {
  BertSaved bert;
  RotarySaved rotary;
};

Encoder bind_encoder(const ModelConfig& cfg, ParamStore& store, const std::string& where);
// Every Linear (LoRA targets, merging), in a stable order.
std::vector<Linear*> encoder_linears(Encoder& e);
std::vector<const Linear*> encoder_linears(const Encoder& e);
// Linears that read one input (linear_group_forward): BERT's q, k, v; the rotary families' q, k,
// v and gate, up.
std::vector<LinearGroup> encoder_groups(const Encoder& e);
// Whether sentence embeddings never use `l` (BERT's pooler): it gets no gradient and no
// optimizer update, as in PyTorch where its grad stays None.
bool unused_by_embeddings(const Encoder& e, const Linear* l);
// Every parameter that sentence embeddings use (full fine-tuning).
std::vector<Param*> encoder_params(Encoder& e);
// Prefix of the weight names in the file ("", "bert.", "model.", ...).
const std::string& encoder_prefix(const Encoder& e);
void set_gradient_checkpointing(Encoder& e, bool on);
// The model's own dropout in training (config.json's hidden and attention dropout; off by
// default). The rotary families implement none: turning it on is an error naming the config's
// non-zero dropout fields, if any (the published models have none).
void set_model_dropout(Encoder& e, bool on);

// Last hidden state [T, hidden] of a packed batch.
Tensor encoder_forward(const Backend& be, const Encoder& e, const PackedBatch& batch,
                       EncoderSaved* saved, Rng* rng);
// Consumes d_hidden (the encoders reuse or free its buffer) and `saved` (released layer by
// layer as backward uses it).
void encoder_backward(const Backend& be, const Encoder& e, EncoderSaved& saved, Tensor d_hidden);

}  // namespace et
