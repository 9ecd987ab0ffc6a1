#include "train/step.h"

#include <functional>

#include "core/error.h"
#include "train/loss_device.h"
#include "train/losses.h"

namespace et {

void restore_f32_weight(const Backend& be, Param& p) {
  if (!p.host_f32.defined()) return;
  p.value = be.upload(p.host_f32);
  p.host_f32 = Tensor{};
}

void store_frozen_weights_bf16(const Backend& be, SentenceModel& m) {
  if (be.act_dtype() != DType::BF16) return;
  const SentenceModel& cm = m;
  store_frozen_weights_bf16(be, encoder_linears(cm.encoder), encoder_groups(cm.encoder));
}

std::vector<Param*> set_trainable(const Backend& be, SentenceModel& m, TrainMode mode) {
  for (Param& p : m.params.params) {
    restore_f32_weight(be, p);
    p.trainable = false;
    p.grad = Tensor{};
  }
  std::vector<Param*> out;
  auto on = [&](Param* p) {
    if (!p || p->trainable) return;
    p->trainable = true;
    p->grad = be.zeros(p->value.shape);
    out.push_back(p);
  };
  if (mode == TrainMode::Full) {
    for (Param* p : encoder_params(m.encoder)) on(p);
    for (DenseModule& d : m.dense) {
      for (Param& p : d.params.params) p.trainable = false;
      on(d.linear.weight);
      on(d.linear.bias);
    }
  } else {
    for (Linear* l : encoder_linears(m.encoder)) {
      if (unused_by_embeddings(m.encoder, l)) continue;
      on(l->lora_a);
      on(l->lora_b);
    }
    ET_CHECK(!out.empty(), "LoRA training: the model has no adapters");
    store_frozen_weights_bf16(be, m);
  }
  return out;
}

void zero_grads(const Backend& be, const std::vector<Param*>& params) {
  std::vector<Tensor*> grads;
  for (Param* p : params) grads.push_back(&p->grad);
  be.zero_all(grads);
}

// The loss over all of a step's embeddings emb [n, d] by backend ops: MNRL, or MatryoshkaLoss's
// weighted sum of MNRL over each leading-column cut (sentence-transformers: every cut
// normalized on its own). Writes grad_scale * dL/d(emb) to *d_emb; the parts' values are read
// once the step's backward is queued.
static std::vector<BackendLoss> mnrl_loss_on_backend(const Backend& be, const Tensor& emb,
                                                     int64_t rows, const LossSpec& spec,
                                                     double grad_scale, Tensor* d_emb) {
  const bool symmetric = spec.kind == LossKind::MNRLSymmetric;
  if (spec.matryoshka_dims.empty()) {
    BackendLoss l = mnrl_on_backend(be, emb, rows, spec.scale, symmetric, grad_scale);
    *d_emb = l.d_emb;
    return {l};
  }
  const int64_t n = emb.dim(0), d = emb.dim(1);
  *d_emb = be.zeros({n, d});
  std::vector<BackendLoss> parts;
  for (size_t i = 0; i < spec.matryoshka_dims.size(); ++i) {
    const auto [dim, w] = matryoshka_cut(spec, i, d);
    Tensor cut = emb;
    if (dim < d) {
      cut = be.empty({n, dim}, emb.dtype);
      be.copy_columns(emb, 0, cut, 0, dim);
    }
    BackendLoss l = mnrl_on_backend(be, cut, rows, spec.scale, symmetric, w * grad_scale);
    l.row_weight *= w;
    Tensor grad = l.d_emb;
    if (dim < d) {  // zero past the cut
      grad = be.zeros({n, d});
      be.copy_columns(l.d_emb, 0, grad, 0, dim);
    }
    be.add(*d_emb, grad, *d_emb);
    l.d_emb = Tensor{};
    parts.push_back(std::move(l));
  }
  return parts;
}

// What a step's loss hands back: grad_scale * dL/d(embeddings) [n, d] on the backend, and its
// value, read by the caller later (LossValue).
struct StepLoss {
  Tensor d_emb;
  LossValue value;
};
using LossOnEmbeddings = std::function<StepLoss(const Tensor& emb)>;

// Forward of every text, `loss` on all the embeddings [n, d], backward into the parameters.
// One mini-batch keeps its activations for the backward. Several make it GradCache (Gao et al.
// 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"): each
// mini-batch embedded without keeping activations into one [n, d] tensor, the loss over all
// of it, then each mini-batch again with the same dropout draws and its rows of the gradient.
static LossValue forward_loss_backward(const Backend& be, SentenceModel& m,
                                       const std::vector<PackedBatch>& mini_batches, Rng* rng,
                                       const LossOnEmbeddings& loss) {
  ET_CHECK(!mini_batches.empty(), "training step: no texts");
  if (mini_batches.size() == 1) {
    EmbedSaved saved;
    const StepLoss l = loss(embed_forward(be, m, mini_batches[0], &saved, rng));
    embed_backward(be, m, saved, l.d_emb);
    return l.value;
  }
  int64_t n = 0;
  for (const PackedBatch& mb : mini_batches) n += mb.size();
  Tensor emb;
  std::vector<Rng> rng_at;  // dropout state at each mini-batch, replayed in the second pass
  for (int64_t k = 0, b = 0; k < static_cast<int64_t>(mini_batches.size()); ++k) {
    if (rng) rng_at.push_back(*rng);
    const Tensor part = embed_forward(be, m, mini_batches[k], nullptr, rng);
    if (!emb.defined()) emb = be.empty({n, part.dim(1)}, DType::F32);
    Tensor dst = emb.rows(b, b + part.dim(0));
    be.copy(dst, part);
    b += part.dim(0);
  }
  const StepLoss l = loss(emb);
  emb = Tensor{};  // the second pass needs only l.d_emb
  for (int64_t k = 0, b = 0; k < static_cast<int64_t>(mini_batches.size()); ++k) {
    Rng replay = rng ? rng_at[k] : Rng();
    EmbedSaved s;
    embed_forward(be, m, mini_batches[k], &s, rng ? &replay : nullptr);
    const int64_t e = b + mini_batches[k].size();
    embed_backward(be, m, s, l.d_emb.rows(b, e));
    b = e;
  }
  return l.value;
}

static LossOnEmbeddings mnrl_loss_by_backend_ops(const Backend& be, int64_t rows,
                                                 const LossSpec& spec, double grad_scale) {
  return [&be, rows, spec, grad_scale](const Tensor& emb) {
    StepLoss out;
    std::vector<LossValue> parts;
    for (const BackendLoss& l : mnrl_loss_on_backend(be, emb, rows, spec, grad_scale, &out.d_emb))
      parts.push_back(backend_loss_value_async(be, l));
    out.value = [parts] {
      double sum = 0;
      for (const LossValue& v : parts) sum += v();
      return sum;
    };
    return out;
  };
}

LossValue mnrl_step_on_backend(const Backend& be, SentenceModel& m,
                               const std::vector<PackedBatch>& mini_batches, int64_t rows,
                               const LossSpec& spec, double grad_scale, Rng* rng) {
  ET_CHECK(spec.kind == LossKind::MNRL || spec.kind == LossKind::MNRLSymmetric,
           "mnrl_step_on_backend: the loss is not MultipleNegativesRankingLoss");
  return forward_loss_backward(be, m, mini_batches, rng,
                               mnrl_loss_by_backend_ops(be, rows, spec, grad_scale));
}

LossValue train_step_grads(const Backend& be, SentenceModel& m,
                           const std::vector<PackedBatch>& cols, const LossSpec& spec,
                           double grad_scale, Rng* rng, const std::vector<double>& labels) {
  ET_CHECK(cols.size() >= 2, "a training batch needs at least two columns (anchor, positive)");
  const int rows = cols[0].size();
  // every text of the batch, column after column, cut into mini-batches (GradCache) or not
  std::vector<PackedBatch> mini_batches(1);
  int64_t n = 0;
  for (const PackedBatch& c : cols) {
    ET_CHECK(c.size() == rows, "training batch columns have different row counts");
    if (spec.mini_batch_size <= 0) {  // one batch of every text: whole columns at once
      mini_batches.back().append(c);
      n += c.size();
      continue;
    }
    for (int i = 0; i < c.size(); ++i, ++n) {
      if (spec.mini_batch_size > 0 && mini_batches.back().size() == spec.mini_batch_size)
        mini_batches.emplace_back();
      mini_batches.back().add(
          {c.ids.begin() + c.cu_seqlens[i], c.ids.begin() + c.cu_seqlens[i + 1]},
          c.prompt_lengths.empty() ? 0 : c.prompt_lengths[i]);
    }
  }
  // MNRL (alone or inside MatryoshkaLoss) on a GPU: the loss where the embeddings are, so that
  // nothing waits for the host between forward and backward (loss_device.h). With GradCache
  // the [rows, candidates] similarity then lives in device memory: up to kBackendLossBytes of
  // it (about 23k pairs with one positive column); larger batches keep the loss in host memory.
  const int64_t sim_bytes = 4 * static_cast<int64_t>(rows) * (n - rows);
  if (be.device() != Device::CPU &&
      (spec.kind == LossKind::MNRL || spec.kind == LossKind::MNRLSymmetric) &&
      (mini_batches.size() == 1 || sim_bytes <= kBackendLossBytes))
    return mnrl_step_on_backend(be, m, mini_batches, rows, spec, grad_scale, rng);
  // The host loss (losses.h, doubles): embeddings down, their gradient up.
  const auto host_loss = [&](const Tensor& emb) {
    const Tensor h = be.download(emb);
    const int64_t d = h.dim(1);
    std::vector<Tensor> parts;
    for (size_t c = 0; c < cols.size(); ++c) parts.push_back(h.rows(c * rows, (c + 1) * rows));
    const LossOutput lo = compute_loss(spec, parts, labels);
    Tensor d_emb = cpu_empty(h.shape);
    for (size_t c = 0; c < cols.size(); ++c)
      for (int64_t i = 0; i < rows * d; ++i)
        d_emb.f32()[c * rows * d + i] = static_cast<float>(lo.grads[c].f32()[i] * grad_scale);
    return StepLoss{be.upload(d_emb), [v = lo.loss] { return v; }};
  };
  return forward_loss_backward(be, m, mini_batches, rng, host_loss);
}

}  // namespace et
