// One training step's numerics: which parameters train, the forward of all columns of a batch
// as one packed batch, the loss on the embeddings and the backward into parameter gradients.
#pragma once

#include <functional>
#include <vector>

#include "model/sentence_model.h"
#include "train/losses.h"

namespace et {

enum class TrainMode { Lora, Full };

// Marks parameters trainable and allocates zeroed gradients. Full: every weight on the path
// from tokens to the sentence embedding (the BERT pooler is not on it) and the Dense modules.
// Lora: the adapters' A and B matrices on that path.
// Lora on a backend with bf16 activations also stores the frozen Linear weights in bf16 on the
// device (store_frozen_weights_bf16).
std::vector<Param*> set_trainable(const Backend& be, SentenceModel& m, TrainMode mode);

// Frozen Linear weights of the encoder as bf16 device copies, their fp32 values kept on the host
// (Param::host_f32): every product reads them in bf16 (the backend rounds an fp32 operand the
// same way on each call), so training computes the same values with half the weight memory and
// no conversion per product (laid out with LoRA's spare columns where its term rides along K:
// model/linear.h, in one buffer). restore_f32_weights puts the fp32 values back on the device.
void store_frozen_weights_bf16(const Backend& be, SentenceModel& m);
void restore_f32_weight(const Backend& be, Param& p);
void zero_grads(const Backend& be, const std::vector<Param*>& params);

// A step's loss value, read when called. On a GPU the call waits for the loss itself, not
// for work queued after it (Backend::download_async), so a trainer reads step N's loss once
// step N + 1 is queued and the device never runs dry between steps.
using LossValue = std::function<double()>;

// Tokenized columns of one batch: columns[c] holds the c-th text of every row
// (anchor, positive, negatives...), all with the same number of rows.
// Runs forward + loss + backward; gradients are accumulated, multiplied by `grad_scale`
// (1 / gradient_accumulation_steps). Returns the loss value (LossValue). With loss.mini_batch_size
// > 0 the step is GradCache's: activations of one mini-batch at a time. `labels`: one per row, for
// the losses that take them.
LossValue train_step_grads(const Backend& be, SentenceModel& m,
                           const std::vector<PackedBatch>& columns, const LossSpec& loss,
                           double grad_scale, Rng* rng, const std::vector<double>& labels = {});

// The similarity matrix a GradCache step may keep on the device for the loss (bytes).
constexpr int64_t kBackendLossBytes = int64_t{2} << 30;

// A step whose loss is MultipleNegativesRankingLoss (spec.kind MNRL or MNRLSymmetric, inside
// MatryoshkaLoss when spec.matryoshka_dims is set) computed by backend ops (loss_device.h): the
// embeddings never leave the device. `mini_batches` hold every text of the batch in
// train_step_grads' order (anchors, then each candidate column); more than one makes it a
// GradCache step. train_step_grads takes this path on GPUs; on the CPU it serves tests.
LossValue mnrl_step_on_backend(const Backend& be, SentenceModel& m,
                               const std::vector<PackedBatch>& mini_batches, int64_t rows,
                               const LossSpec& spec, double grad_scale, Rng* rng);

}  // namespace et
