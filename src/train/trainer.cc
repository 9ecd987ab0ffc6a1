#include "train/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <future>
#include <optional>

#include "core/error.h"
#include "eval/evaluate.h"
#include "io/dataset.h"
#include "io/retrieval_data.h"
#include "io/safetensors.h"
#include "train/checkpoint.h"

namespace et {

namespace {

using Clock = std::chrono::steady_clock;

// Progress and logs: a live line on a terminal, plain lines otherwise; every line also goes to
// <output>/train.log and every logging step to <output>/train_log.jsonl.
struct Reporter {
  std::FILE* text = nullptr;
  std::FILE* jsonl = nullptr;
  bool tty = false, quiet = false;

  Reporter(const std::string& out, bool append, bool q) : quiet(q) {
    text = std::fopen(path_join(out, "train.log").c_str(), append ? "a" : "w");
    jsonl = std::fopen(path_join(out, "train_log.jsonl").c_str(), append ? "a" : "w");
    ET_CHECK(text && jsonl, out, ": cannot open log files for writing");
    tty = isatty(fileno(stderr));
  }
  ~Reporter() {
    std::fclose(text);
    std::fclose(jsonl);
  }
  void line(const std::string& s) {
    if (!quiet) std::fprintf(stderr, "%s%s\n", tty ? "\r\033[K" : "", s.c_str());
    std::fprintf(text, "%s\n", s.c_str());
    std::fflush(text);
  }
  void live(const std::string& s) {
    if (tty && !quiet) std::fprintf(stderr, "\r\033[K%s", s.c_str());
  }
  void record(const json& j) {
    std::fprintf(jsonl, "%s\n", j.dump().c_str());
    std::fflush(jsonl);
  }
};

std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* f, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(buf, sizeof(buf), f, ap);
  va_end(ap);
  return buf;
}

std::string duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  int t = static_cast<int>(s + 0.5);
  return t >= 3600 ? fmt("%dh%02dm", t / 3600, t / 60 % 60) : fmt("%dm%02ds", t / 60, t % 60);
}

json run_settings(const TrainConfig& c, const TextDataset& ds) {
  return {
      {"train_file", c.train_file},
      {"rows", ds.rows.size()},
      {"columns", ds.columns},
      {"mode", c.mode == TrainMode::Lora ? "lora" : "full"},
      {"per_device_train_batch_size", c.per_device_train_batch_size},
      {"gradient_accumulation_steps", c.gradient_accumulation_steps},
      {"seed", c.seed},
      {"model_dropout", c.model_dropout},
      {"batch_sampler", c.batch_sampler == BatchSampler::Batch ? "batch_sampler" : "no_duplicates"},
      {"dataloader_drop_last", c.dataloader_drop_last}};
}

}  // namespace

TrainResult run_training(const TrainConfig& c, const Backend& be) {
  ET_CHECK(c.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1");
  ET_CHECK(c.learning_rate > 0, "learning_rate must be positive");
  ET_CHECK(!c.output_dir.empty(), "an output folder is required");
  make_dirs(c.output_dir);
  // GPU training is not bit-reproducible anyway (the attention backward sums dQ with atomics)
  be.set_gemm_tuning(true);
  TextDataset ds = read_text_dataset(c.train_file, c.columns);
  // Held-out evaluation pairs: a seeded random fraction of the rows, removed from training.
  RetrievalSet eval_set;
  const bool evaluating = !c.eval_data.empty() || c.eval_holdout > 0;
  ET_CHECK(c.eval_data.empty() || c.eval_holdout <= 0, "give eval_data or eval_holdout, not both");
  ET_CHECK(c.eval_holdout >= 0 && c.eval_holdout < 1, "eval_holdout must be in [0, 1)");
  if (!c.eval_data.empty()) {
    eval_set = read_retrieval_set(c.eval_data, "test", {});
  } else if (c.eval_holdout > 0) {
    std::vector<size_t> order(ds.rows.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    Rng split_rng(c.seed ^ 0x4e01dULL);
    split_rng.shuffle(order);
    const size_t n_eval = std::max<size_t>(1, static_cast<size_t>(c.eval_holdout * ds.rows.size()));
    ET_CHECK(n_eval < ds.rows.size(), c.train_file, ": eval_holdout leaves no training rows");
    std::vector<bool> held(ds.rows.size(), false);
    for (size_t i = 0; i < n_eval; ++i) held[order[i]] = true;
    TextDataset train, held_out;
    train.path = held_out.path = ds.path;
    train.columns = held_out.columns = ds.columns;
    train.label_column = ds.label_column;
    for (size_t i = 0; i < ds.rows.size(); ++i) {
      TextDataset& dst = held[i] ? held_out : train;
      dst.rows.push_back(ds.rows[i]);
      dst.lines.push_back(ds.lines[i]);
      if (!held[i] && !ds.labels.empty()) train.labels.push_back(ds.labels[i]);
    }
    eval_set = retrieval_set_from_pairs(held_out);
    ds = std::move(train);
  }
  auto model = load_sentence_model(c.model, be);
  SentenceModel& m = *model;
  if (c.max_seq_length > 0) {
    ET_CHECK(c.max_seq_length <= m.cfg.max_positions - m.cfg.position_offset, "max_seq_length ",
             c.max_seq_length, " exceeds the model's ",
             m.cfg.max_positions - m.cfg.position_offset);
    m.max_seq_length = c.max_seq_length;
  }
  set_gradient_checkpointing(m.encoder, c.gradient_checkpointing);
  set_model_dropout(m.encoder, c.model_dropout);
  LoraConfig lora = c.lora;
  if (c.mode == TrainMode::Lora) {
    if (!c.init_adapter.empty()) {
      lora = load_adapter(be, m, c.init_adapter);
    } else {
      if (lora.target_modules.empty() && lora.target_regex.empty())
        lora.target_modules = default_lora_targets(m.cfg.family);
      apply_lora(be, m, lora, c.seed);
    }
  }
  std::vector<Param*> params = set_trainable(be, m, c.mode);
  OptimizerState opt;
  int64_t n_trainable = 0;
  for (Param* p : params) {
    opt.m.push_back(be.zeros(p->value.shape));
    opt.v.push_back(be.zeros(p->value.shape));
    n_trainable += p->value.numel();
  }

  if (loss_needs_labels(c.loss.kind))
    ET_CHECK(!ds.labels.empty(), c.train_file,
             ": this loss needs a numeric 'label' or 'score' column");
  if (loss_columns(c.loss.kind) > 0)
    ET_CHECK(static_cast<int>(ds.columns.size()) == loss_columns(c.loss.kind), c.train_file,
             ": this loss takes ", loss_columns(c.loss.kind), " text columns, the data has ",
             ds.columns.size(), " (use --columns)");
  const int64_t batches_per_epoch =
      static_cast<int64_t>(epoch_batches(ds, c.per_device_train_batch_size, c.batch_sampler, c.seed,
                                         0, c.dataloader_drop_last)
                               .size());
  ET_CHECK(batches_per_epoch > 0, c.train_file, ": too few rows for one batch of ",
           c.per_device_train_batch_size);
  const int64_t accum = c.gradient_accumulation_steps;
  const int64_t steps_per_epoch = (batches_per_epoch + accum - 1) / accum;
  const int64_t total = c.max_steps > 0 ? c.max_steps : steps_per_epoch * c.num_train_epochs;
  ET_CHECK(total > 0, "nothing to train: num_train_epochs and max_steps give 0 steps");
  const int64_t warmup = warmup_steps_for(c.warmup_steps, c.warmup_ratio, total);

  TrainerState st;
  st.rng.reseed(c.seed ^ 0x5eedULL);
  st.settings = run_settings(c, ds);
  st.settings["eval_holdout"] = c.eval_holdout;
  std::string resumed_from;
  if (c.resume) {
    resumed_from = latest_checkpoint(c.output_dir);
    if (!resumed_from.empty()) load_checkpoint(be, resumed_from, params, opt, st);
  }
  Reporter rep(c.output_dir, !resumed_from.empty(), c.quiet);
  rep.line(fmt("embedtune train: %s (%s, %lld parameters, %lld trainable), %zu rows x %zu columns",
               c.model.c_str(), c.mode == TrainMode::Lora ? "LoRA" : "full fine-tuning",
               static_cast<long long>(m.num_parameters()), static_cast<long long>(n_trainable),
               ds.rows.size(), ds.columns.size()));
  rep.line(fmt(
      "steps %lld (%lld per epoch), batch %d x %lld accumulation, lr %g %s, warmup %lld, device %s",
      static_cast<long long>(total), static_cast<long long>(steps_per_epoch),
      c.per_device_train_batch_size, static_cast<long long>(accum), c.learning_rate,
      lr_schedule_name(c.lr_scheduler_type), static_cast<long long>(warmup), be.name()));
  if (!resumed_from.empty())
    rep.line(
        fmt("resumed from %s at step %lld", resumed_from.c_str(), static_cast<long long>(st.step)));

  auto t0 = Clock::now();
  const int64_t start_step = st.step, start_tokens = st.tokens;
  double window_loss = 0, last_loss = 0;
  int64_t window_n = 0, micro_in_step = 0;
  zero_grads(be, params);
  auto checkpoint = [&]() {
    std::string dir =
        path_join(path_join(c.output_dir, "checkpoints"), "checkpoint-" + std::to_string(st.step));
    make_dirs(path_join(c.output_dir, "checkpoints"));
    save_checkpoint(be, dir, params, opt, st);
    prune_checkpoints(c.output_dir, c.save_total_limit);
    rep.line(fmt("saved checkpoint %s", dir.c_str()));
  };
  // Evaluation: retrieval metrics of the current weights; the best by metric_for_best_model
  // is kept (its trainable weights) in <output>/best.
  std::string best_group, best_k;
  {
    const std::string& mb = c.metric_for_best_model;
    size_t at = mb.find('@');
    ET_CHECK(at != std::string::npos, "metric_for_best_model '", mb,
             "' must look like ndcg@10, mrr@10, recall@5, map@100, accuracy@1 or precision@3");
    best_group = mb.substr(0, at + 1).append("k");
    best_k = mb.substr(at + 1);
  }
  json last_metrics;
  double best_value = -1;
  int64_t best_step = -1;
  std::string best_dir = path_join(c.output_dir, "best");
  if (!resumed_from.empty() && file_exists(path_join(best_dir, "best.json"))) {
    json b = read_json_file(path_join(best_dir, "best.json"));
    best_step = b.value("step", int64_t{-1});
    best_value = b.value("value", -1.0);
  }
  auto evaluate_now = [&]() {
    if (!evaluating) return;
    auto t_eval = Clock::now();
    RetrievalEvalOptions eo;
    eo.batch_size = c.eval_batch_size;
    last_metrics = evaluate_retrieval(be, m, eval_set, eo);
    ET_CHECK(last_metrics.contains(best_group) && last_metrics[best_group].contains(best_k),
             "metric_for_best_model '", c.metric_for_best_model,
             "' is not computed (k values: ", last_metrics.value(best_group, json::object()).dump(),
             ")");
    const double v = last_metrics[best_group][best_k].get<double>();
    rep.line(fmt("eval at step %lld: ndcg@10 %.4f  mrr@10 %.4f  recall@10 %.4f  (%s %.4f, %.1f s)",
                 static_cast<long long>(st.step), last_metrics["ndcg@k"].value("10", 0.0),
                 last_metrics["mrr@k"].value("10", 0.0), last_metrics["recall@k"].value("10", 0.0),
                 c.metric_for_best_model.c_str(), v,
                 std::chrono::duration<double>(Clock::now() - t_eval).count()));
    rep.record({{"step", st.step}, {"eval", last_metrics}});
    if (v > best_value) {
      best_value = v;
      best_step = st.step;
      std::vector<std::pair<std::string, Tensor>> values;
      for (Param* p : params) values.emplace_back(p->name, be.download(p->value));
      std::string tmp = best_dir + ".partial";
      make_dirs(tmp);
      write_safetensors(path_join(tmp, "trainable.safetensors"), values);
      write_json_atomic(path_join(tmp, "best.json"),
                        json{{"step", st.step}, {"metric", c.metric_for_best_model}, {"value", v}});
      replace_dir_atomic(tmp, best_dir);
    }
  };
  // An optimizer step whose values (its micro-batches' losses, its gradient norm) are still on
  // the device. It is reported once the next step is queued: on a GPU each value's read waits
  // for its own copy only (Backend::download_async), so the host never drains the device's
  // queue between steps. A non-finite loss therefore stops the run one step later, still
  // before anything is evaluated or saved.
  struct PendingStep {
    int64_t step = 0;
    int epoch = 0;              // 0-based, as TrainerState's
    double epoch_progress = 0;  // epochs done, fractional
    double lr = 0;
    int64_t tokens = 0;
    std::vector<std::pair<LossValue, double>> losses;  // each micro-batch's, with its weight
    Backend::HostRead norm_sq;
  };
  std::optional<PendingStep> pending;
  std::vector<std::pair<LossValue, double>> step_losses;  // of the step being accumulated
  auto report = [&]() {
    if (!pending) return;
    const PendingStep p = std::move(*pending);
    pending.reset();
    double loss = 0;
    for (const auto& [value, weight] : p.losses) {
      const double l = value();
      ET_CHECK(std::isfinite(l), "loss became ", l, " at step ", p.step,
               " (lower the learning rate?)");
      loss += l * weight;
    }
    const double gnorm = std::sqrt(*static_cast<const double*>(p.norm_sq().data));
    window_loss += loss;
    ++window_n;
    last_loss = window_loss / static_cast<double>(window_n);
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    const double tps = secs > 0 ? static_cast<double>(p.tokens - start_tokens) / secs : 0;
    const double eta = p.step > start_step ? secs / static_cast<double>(p.step - start_step) *
                                                 static_cast<double>(total - p.step)
                                           : NAN;
    std::string status =
        fmt("step %lld/%lld  epoch %d  loss %.4f  lr %.3g  grad_norm %.3g  %.0f tok/s  ETA %s",
            static_cast<long long>(p.step), static_cast<long long>(total), p.epoch + 1, last_loss,
            p.lr, gnorm, tps, duration(eta).c_str());
    rep.live(status);
    if (p.step % c.logging_steps == 0 || p.step == total) {
      rep.line(status);
      rep.record({{"step", p.step},
                  {"epoch", p.epoch_progress},
                  {"loss", last_loss},
                  {"learning_rate", p.lr},
                  {"grad_norm", gnorm},
                  {"tokens", p.tokens},
                  {"tokens_per_second", tps},
                  {"elapsed_seconds", secs}});
      window_loss = 0;
      window_n = 0;
    }
  };
  bool stopped = false;
  while (st.step < total && !stopped) {
    auto batches = epoch_batches(ds, c.per_device_train_batch_size, c.batch_sampler, c.seed,
                                 st.epoch, c.dataloader_drop_last);
    const int64_t nb = static_cast<int64_t>(batches.size());
    // Micro-batch i + 1 is tokenized (on all cores) on another thread while micro-batch i
    // trains; the GPU step and the tokenizer overlap.
    auto tokenize_micro = [&](int64_t micro) {
      std::vector<PackedBatch> out;
      for (size_t col = 0; col < ds.columns.size(); ++col) {
        std::vector<std::string> texts;
        for (int32_t r : batches[static_cast<size_t>(micro)]) texts.push_back(ds.rows[r][col]);
        out.push_back(tokenize_texts(m, texts));
      }
      return out;
    };
    std::future<std::vector<PackedBatch>> prefetch;
    for (; st.micro < nb && st.step < total; ++st.micro) {
      std::vector<PackedBatch> cols = prefetch.valid() ? prefetch.get() : tokenize_micro(st.micro);
      if (st.micro + 1 < nb)
        prefetch = std::async(std::launch::async, tokenize_micro, st.micro + 1);
      for (const PackedBatch& b : cols) st.tokens += b.tokens();
      std::vector<double> labels;
      if (!ds.labels.empty())
        for (int32_t r : batches[st.micro]) labels.push_back(ds.labels[r]);
      // The last step of an epoch may have fewer micro-batches; average over those it has.
      const int64_t first = (st.micro / accum) * accum;
      const int64_t in_step = std::min(accum, nb - first);
      step_losses.emplace_back(
          train_step_grads(be, m, cols, c.loss, 1.0 / static_cast<double>(in_step), &st.rng,
                           labels),
          1.0 / static_cast<double>(in_step));
      if (++micro_in_step < in_step) continue;
      micro_in_step = 0;
      // Optimizer step: clip by global norm (torch clip_grad_norm_, the coefficient computed
      // and applied on the device), schedule, AdamW.
      std::vector<const Tensor*> grads;
      for (Param* p : params) grads.push_back(&p->grad);
      const Tensor norm_sq = be.sum_squares_all_dev(grads);
      const Backend::GradClip clip{&norm_sq, c.max_grad_norm};
      const double lr =
          c.learning_rate * lr_multiplier(c.lr_scheduler_type, st.step, warmup, total);
      std::vector<Backend::AdamWSlot> slots;
      for (size_t i = 0; i < params.size(); ++i)
        slots.push_back({&params[i]->value, &params[i]->grad, &opt.m[i], &opt.v[i]});
      be.adamw_step_all(slots, static_cast<float>(lr), static_cast<float>(c.adam_beta1),
                        static_cast<float>(c.adam_beta2), static_cast<float>(c.adam_epsilon),
                        static_cast<float>(c.weight_decay), st.step + 1, /*zero_grads=*/true,
                        c.max_grad_norm > 0 ? &clip : nullptr);
      ++st.step;
      report();  // the previous step, whose values have reached the host by now
      pending = PendingStep{st.step,
                            st.epoch,
                            st.epoch + static_cast<double>(st.micro + 1) / nb,
                            lr,
                            st.tokens,
                            std::move(step_losses),
                            be.download_async(norm_sq)};
      step_losses.clear();
      const bool eval_now = c.eval_steps > 0 && st.step % c.eval_steps == 0 && st.step < total;
      const bool save_now = c.save_steps > 0 && st.step % c.save_steps == 0 && st.step < total;
      const bool stop_now = c.stop_after_steps > 0 && st.step >= c.stop_after_steps;
      // a step's loss is checked for finiteness before anything is evaluated or saved
      if (eval_now || save_now || stop_now || st.step == total) report();
      if (eval_now) evaluate_now();
      if (save_now) {
        ++st.micro;  // the checkpoint resumes after this micro-batch
        checkpoint();
        --st.micro;
      }
      if (stop_now) {
        stopped = true;
        break;
      }
    }
    if (!stopped && st.micro >= nb) {
      ++st.epoch;
      st.micro = 0;
    }
  }
  report();
  TrainResult r;
  if (!stopped) evaluate_now();
  if (!stopped && evaluating && c.load_best_model_at_end && best_step >= 0 &&
      best_step != st.step) {
    TensorFile best = read_safetensors(path_join(best_dir, "trainable.safetensors"));
    for (Param* p : params) {
      Tensor v = be.upload(to_f32(best.at(p->name)));
      be.copy(p->value, v);
    }
    rep.line(fmt("loaded the best model (step %lld, %s %.4f)", static_cast<long long>(best_step),
                 c.metric_for_best_model.c_str(), best_value));
  }
  r.final_metrics = last_metrics;
  r.best_metric = best_value;
  r.best_step = best_step;
  r.steps = st.step;
  r.tokens = st.tokens;
  r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  r.last_loss = last_loss;
  r.peak_bytes = be.peak_bytes();
  if (stopped) {
    rep.line(fmt("stopped after step %lld", static_cast<long long>(st.step)));
    return r;
  }
  if (c.mode == TrainMode::Lora) {
    r.adapter_dir = path_join(c.output_dir, "adapter");
    save_adapter(be, m, lora, r.adapter_dir);
    rep.line("saved PEFT adapter to " + r.adapter_dir);
    merge_lora(be, m);
  }
  r.merged_dir = path_join(c.output_dir, "merged");
  save_sentence_model(be, m, r.merged_dir);
  rep.line("saved sentence-transformers model to " + r.merged_dir);
  json summary = {{"steps", r.steps},
                  {"tokens", r.tokens},
                  {"seconds", r.seconds},
                  {"tokens_per_second",
                   r.seconds > 0 ? static_cast<double>(r.tokens - start_tokens) / r.seconds : 0},
                  {"final_loss", r.last_loss},
                  {"peak_memory_gib",  // null where the backend does not track it (the CPU)
                   r.peak_bytes > 0 ? json(static_cast<double>(r.peak_bytes) / (1 << 30)) : json()},
                  {"adapter", r.adapter_dir},
                  {"merged", r.merged_dir}};
  if (evaluating) {
    summary["eval"] = last_metrics;
    summary["best"] = {{"step", best_step},
                       {"metric", c.metric_for_best_model},
                       {"value", best_value},
                       {"loaded", c.load_best_model_at_end}};
  }
  write_json_atomic(path_join(c.output_dir, "train_summary.json"), summary);
  rep.line(fmt("done: %lld steps in %s, final loss %.4f, %.0f tokens/s",
               static_cast<long long>(r.steps), duration(r.seconds).c_str(), r.last_loss,
               summary["tokens_per_second"].get<double>()) +
           (r.peak_bytes > 0
                ? fmt(", peak GPU memory %.2f GiB", static_cast<double>(r.peak_bytes) / (1 << 30))
                : std::string()));
  return r;
}

}  // namespace et
