// MultipleNegativesRankingLoss and its symmetric form computed where the embeddings are, with
// backend ops: on the GPU the embeddings never go to the host, so a training step has no host
// round trip between forward and backward (the host-side loss left the GPU idle 6-12 ms of a
// MiniLM-L6 step: bench/NOTES.md). The definitions are mnrl_loss / mnrl_symmetric_loss's
// (losses.h), computed in fp32 (the CUDA backend runs fp32 products on TF32 tensor cores);
// the host versions stay the reference and serve every other loss and GradCache batches whose
// similarity matrix exceeds kBackendLossBytes (step.h). MatryoshkaLoss around MNRL runs here
// too, one call per dimension (step.cc).
#pragma once

#include <cstdint>
#include <functional>

#include "ops/backend.h"

namespace et {

struct BackendLoss {
  Tensor d_emb;           // [n, d] fp32: grad_scale * dL/d(embeddings)
  Tensor row_losses;      // the rows' cross-entropies, where the backend keeps them
  double row_weight = 0;  // loss = row_weight * sum(row_losses)
};

// emb [n, d]: the anchors (rows [0, rows)), then the candidates (positives, then each
// hard-negative column), as train_step_grads embeds them. With `symmetric`, the mean of the
// anchor -> candidates term and the positive -> anchors term.
BackendLoss mnrl_on_backend(const Backend& be, const Tensor& emb, int64_t rows, double scale,
                            bool symmetric, double grad_scale);

// The loss value, read when the returned function is called: the row losses' copy is queued
// now, and the call waits for it alone (Backend::download_async), not for work queued later.
std::function<double()> backend_loss_value_async(const Backend& be, const BackendLoss& l);
// The same, read at once.
double backend_loss_value(const Backend& be, const BackendLoss& l);

}  // namespace et
