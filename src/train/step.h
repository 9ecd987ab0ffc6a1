// One training step's numerics: which parameters train, the forward of all columns of a batch
// as one packed batch, the loss on the embeddings and the backward into parameter gradients.
#pragma once

#include <vector>

#include "model/sentence_model.h"
#include "train/losses.h"

namespace et {

enum class TrainMode { Lora, Full };

// Marks parameters trainable and allocates zeroed gradients. Full: every weight on the path
// from tokens to the sentence embedding (the BERT pooler is not on it) and the Dense modules.
// Lora: the adapters' A and B matrices on that path.
std::vector<Param*> set_trainable(const Backend& be, SentenceModel& m, TrainMode mode);
void zero_grads(const Backend& be, const std::vector<Param*>& params);

// Tokenized columns of one batch: columns[c] holds the c-th text of every row
// (anchor, positive, negatives...), all with the same number of rows.
// Runs forward + loss + backward; gradients are accumulated, multiplied by `grad_scale`
// (1 / gradient_accumulation_steps). Returns the loss value. With loss.mini_batch_size > 0
// the step is GradCache's: activations of one mini-batch at a time. `labels`: one per row,
// for the losses that take them.
double train_step_grads(const Backend& be, SentenceModel& m,
                        const std::vector<PackedBatch>& columns, const LossSpec& loss,
                        double grad_scale, Rng* rng, const std::vector<double>& labels = {});

}  // namespace et
