// Training losses on sentence embeddings, with sentence-transformers' exact definitions.
// They run on the host: embeddings are [B, d] (tiny next to the encoder); each returns the
// loss and its gradient with respect to every input column.
#pragma once

#include <string>
#include <vector>

#include "core/tensor.h"

namespace et {

struct LossOutput {
  double loss = 0;
  std::vector<Tensor> grads;  // one per input column, same shape
};

// MultipleNegativesRankingLoss: columns = anchors [B, d], positives [B, d], then any number of
// hard-negative columns [B, d]. scores[i, j] = scale * cos(a_i, c_j) over the candidates
// c = [positives; negatives...]; loss = mean_i CE(scores[i], i).
LossOutput mnrl_loss(const std::vector<Tensor>& columns, double scale = 20.0);

// MultipleNegativesSymmetricRankingLoss: the mean of MNRL (anchor -> all candidates) and its
// reverse, each positive against all anchors: CE(scale * cos(p_i, a_j) over j, i).
LossOutput mnrl_symmetric_loss(const std::vector<Tensor>& columns, double scale = 20.0);

enum class LossKind { MNRL, MNRLSymmetric };

struct LossSpec {
  LossKind kind = LossKind::MNRL;
  double scale = 20.0;
  // > 0: GradCache (CachedMultipleNegativesRankingLoss): embed mini-batches of this many
  // texts without keeping activations, take the loss gradient w.r.t. all embeddings, then
  // re-run each mini-batch with its slice of that gradient. Same result, memory of one
  // mini-batch.
  int mini_batch_size = 0;
  // MatryoshkaLoss around the loss: sum_i w_i * loss(embeddings truncated to dims[i]).
  std::vector<int> matryoshka_dims;
  std::vector<double> matryoshka_weights;  // default: all 1
};

LossKind parse_loss_kind(const std::string& name);
// The configured loss (and Matryoshka wrapping) on embedding columns.
LossOutput compute_loss(const LossSpec& spec, const std::vector<Tensor>& columns);

}  // namespace et
