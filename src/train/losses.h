// Training losses on sentence embeddings, with sentence-transformers' exact definitions.
// They run on the host: embeddings are [B, d] (tiny next to the encoder); each returns the
// loss and its gradient with respect to every input column.
#pragma once

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

}  // namespace et
