// The BERT family encoder (BERT, XLM-RoBERTa, DistilBERT, MPNet): post-LayerNorm transformer,
// learned absolute positions (+ token types for BERT/XLM-R, + MPNet's relative attention bias).
//
//   x0 = drop(LN(word[ids] + pos[positions] (+ type[0])))
//   per layer:  a  = Wo attn(Wq x, Wk x, Wv x) ;  x1 = LN1(drop(a) + x)
//               f  = W2 act(W1 x1)              ;  x' = LN2(drop(f) + x1)
// on a packed batch [T, hidden], with dropout on the attention probabilities too; `drop` is
// the model's own dropout in training (transformers' BertEmbeddings, BertSelfOutput, BertOutput
// and the attention's dropout_p; DistilBERT has none on a). Forward optionally saves what
// backward needs.
#pragma once

#include <string>
#include <vector>

#include "core/rng.h"
#include "model/config.h"
#include "model/linear.h"

namespace et {

struct TensorFile;

// A packed batch of token sequences (host side): sequence b is ids[cu_seqlens[b] ..
// cu_seqlens[b+1]).
struct PackedBatch {
  std::vector<int32_t> ids;
  std::vector<int32_t> cu_seqlens{0};
  int max_seqlen = 0;
  // Leading tokens of each sequence excluded from pooling (prompt tokens when the pooling
  // has include_prompt = false); empty means none.
  std::vector<int32_t> prompt_lengths;

  int size() const { return static_cast<int>(cu_seqlens.size()) - 1; }
  int64_t tokens() const { return static_cast<int64_t>(ids.size()); }
  void add(const std::vector<int32_t>& seq, int32_t prompt_length = 0);
  // Every sequence of `other`, after this batch's.
  void append(const PackedBatch& other);
};

// Every token id of the batch within [0, vocab): else an error naming the first one outside.
void check_token_ids(const PackedBatch& batch, int64_t vocab);

struct BertLayer {
  Linear q, k, v, o, ffn_in, ffn_out;
  Param *ln1_w = nullptr, *ln1_b = nullptr, *ln2_w = nullptr, *ln2_b = nullptr;
};

struct BertEncoder {
  ModelConfig cfg;
  std::string prefix;  // of the weight names in the file ("" or e.g. "bert.")
  Param *word = nullptr, *pos = nullptr, *type = nullptr;
  Param *emb_ln_w = nullptr, *emb_ln_b = nullptr;
  Param* rel_bias = nullptr;  // MPNet: [buckets, heads]
  std::vector<BertLayer> layers;
  Linear pooler;  // BERT/XLM-R/MPNet pooler: unused by sentence embeddings, kept
                  // so LoRA targets and merged exports match transformers' model
  bool has_pooler = false;
  // Keep only each layer's input in forward and recompute the layer in backward (transformers'
  // gradient_checkpointing): activation memory of one layer instead of all.
  bool gradient_checkpointing = false;
  // Apply the config's hidden and attention dropout in training (forwards given an Rng), as
  // transformers does in train mode.
  bool model_dropout = false;
};

// What a layer keeps for backward. The LayerNorm outputs are not kept: x1 = LN1(res1) and the
// layer input x (the previous layer's LN2(res2), or the embedding LayerNorm's output) are
// recomputed from the saved norm inputs and statistics, bit for bit, when backward needs
// them: two [T, hidden] tensors of the seven a layer would otherwise hold per token (plus
// the FFN pre-activation) for two elementwise passes.
struct BertLayerSaved {
  Tensor x;  // only with gradient checkpointing: the layer input the layer is recomputed from
  LinearSaved q, k, v, o, ffn_in, ffn_out;
  Tensor qt, kt, vt, ctx, lse;
  Tensor res1, ln1_mean, ln1_rstd;
  Tensor h_pre;  // the FFN activation act(h_pre) is recomputed in backward
  Tensor res2, ln2_mean, ln2_rstd;
  Rng rng;  // dropout state at the layer's start (replayed when recomputing)
  // the model dropout sites (p = 0 when off): attention probabilities, attention output, FFN
  // output; their seeds regenerate the masks in backward
  DropoutSite drop_attn, drop_attn_out, drop_ffn_out;
};

struct BertSaved {
  Tensor ids, positions, types;
  Tensor emb, emb_mean, emb_rstd;
  AttentionArgs attn;
  DropoutSite drop_emb;  // on the embedding LayerNorm's output
  bool has_rng = false;
  std::vector<BertLayerSaved> layers;
};

// Binds the encoder's modules to parameters in `store` (names as transformers writes them,
// optionally under a prefix such as "bert."); missing tensors are errors naming them.
BertEncoder bind_bert_encoder(const ModelConfig& cfg, ParamStore& store, const std::string& where);
// Every Linear of the encoder, in a stable order (for LoRA targeting and merging).
std::vector<Linear*> bert_linears(BertEncoder& enc);
// The Linears of a layer that read one input: q, k and v (linear_group_forward).
inline LinearGroup bert_qkv(const BertLayer& L) {
  return {&L.q, &L.k, &L.v};
}

// Returns the last hidden state [T, hidden].
Tensor bert_forward(const Backend& be, const BertEncoder& enc, const PackedBatch& batch,
                    BertSaved* saved, Rng* rng);
// Accumulates parameter gradients from d_hidden [T, hidden]. d_hidden is consumed: its buffer
// carries the running gradient (one [T, hidden] tensor fewer alive during backward); so is
// `saved`: each layer's tensors are released as its backward uses them (the step's peak is
// the first layer's backward, with every other layer's saved tensors alive).
void bert_backward(const Backend& be, const BertEncoder& enc, BertSaved& saved, Tensor d_hidden);

}  // namespace et
