// Training losses on sentence embeddings, with sentence-transformers' exact definitions.
// They run on the host in double: embeddings are [B, d] (tiny next to the encoder); each
// returns the loss and its gradient with respect to every input column. On a GPU the MNRL
// family runs as backend ops instead (loss_device.h); these stay its reference.
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

enum class LossKind {
  MNRL,
  MNRLSymmetric,
  Triplet,
  CoSENT,
  AnglE,
  CosineSimilarity,
  Contrastive,
  OnlineContrastive,
  MarginMSE
};
enum class Distance;

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
  double margin = -1;  // Triplet (5), Contrastive/OnlineContrastive (0.5); < 0: the default
  int distance = 0;    // Triplet: 0 euclidean, 1 cosine, 2 manhattan
};

// Whether the loss reads a label per row (CoSENT, AnglE, CosineSimilarity, the contrastive
// losses, MarginMSE), and how many text columns it takes (0: two or more).
bool loss_needs_labels(LossKind k);
int loss_columns(LossKind k);

// Cut i of MatryoshkaLoss on embeddings of width d: its width (checked to be in 1..d) and its
// weight (1 where matryoshka_weights gives none).
struct MatryoshkaCut {
  int64_t dim;
  double weight;
};
MatryoshkaCut matryoshka_cut(const LossSpec& spec, size_t i, int64_t d);

LossKind parse_loss_kind(const std::string& name);
// The configured loss (and Matryoshka wrapping) on embedding columns.
LossOutput compute_loss(const LossSpec& spec, const std::vector<Tensor>& columns,
                        const std::vector<double>& labels = {});

}  // namespace et

namespace et {

// The remaining sentence-transformers losses, on embedding columns [B, d] and per-row labels
// (each with its library's defaults; gradients w.r.t. every column).
enum class Distance { Euclidean = 0, Cosine = 1, Manhattan = 2 };
// TripletLoss: mean relu(dist(a, p) - dist(a, n) + margin); euclidean/manhattan are torch's
// pairwise_distance (||x - y + 1e-6||_p), cosine is 1 - cos.
LossOutput triplet_loss(const std::vector<Tensor>& cols, Distance dist = Distance::Euclidean,
                        double margin = 5.0);
// CoSENTLoss: logsumexp over {0} and {s_i - s_j : label_i < label_j}, s = scale * cos(a, p).
// AnglELoss: the same with s = scale * |angle similarity| (AnglE's complex-valued form).
LossOutput cosent_loss(const std::vector<Tensor>& cols, const std::vector<double>& labels,
                       double scale = 20.0, bool angle = false);
// CosineSimilarityLoss: mean (cos(a, p) - label)^2.
LossOutput cosine_similarity_loss(const std::vector<Tensor>& cols,
                                  const std::vector<double>& labels);
// ContrastiveLoss (cosine distance d = 1 - cos): mean 0.5 (y d^2 + (1 - y) relu(margin - d)^2).
LossOutput contrastive_loss(const std::vector<Tensor>& cols, const std::vector<double>& labels,
                            double margin = 0.5);
// OnlineContrastiveLoss: the same terms summed over hard positives (d above the smallest
// negative distance) and hard negatives (d below the largest positive distance).
LossOutput online_contrastive_loss(const std::vector<Tensor>& cols,
                                   const std::vector<double>& labels, double margin = 0.5);
// MarginMSELoss: mean ((a.p - a.n) - label)^2 with dot products.
LossOutput margin_mse_loss(const std::vector<Tensor>& cols, const std::vector<double>& labels);

}  // namespace et
