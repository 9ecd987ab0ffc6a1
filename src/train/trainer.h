// The training loop: data -> batches -> steps -> logs, checkpoints, final adapter and merged
// model. Settings are named after sentence-transformers' / transformers' training arguments.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ops/backend.h"
#include "train/lora.h"
#include "train/sampler.h"
#include "train/schedule.h"
#include "train/step.h"

namespace et {

struct TrainConfig {
  std::string model, train_file, output_dir;
  std::vector<std::string> columns;  // empty: anchor, positive, negative*
  TrainMode mode = TrainMode::Lora;
  LoraConfig lora;           // target_modules empty: the family's PEFT defaults
  std::string init_adapter;  // start from this PEFT adapter instead of a fresh one
  double learning_rate = 5e-5;
  int per_device_train_batch_size = 8;
  int num_train_epochs = 1;
  int64_t max_steps = -1;  // > 0 overrides num_train_epochs
  double warmup_ratio = 0.0;
  int64_t warmup_steps = 0;
  LrSchedule lr_scheduler_type = LrSchedule::Linear;
  double weight_decay = 0.0;
  double max_grad_norm = 1.0;
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_epsilon = 1e-8;
  uint64_t seed = 42;
  int gradient_accumulation_steps = 1;
  BatchSampler batch_sampler = BatchSampler::Batch;
  bool dataloader_drop_last = false;
  int64_t save_steps = 500;
  int save_total_limit = 0;  // 0: keep every checkpoint
  int64_t logging_steps = 10;
  int max_seq_length = 0;               // 0: the model's
  bool gradient_checkpointing = false;  // recompute layers in backward
  // The model's own dropout (config.json's hidden/attention dropout), as transformers and
  // sentence-transformers apply it in training.
  bool model_dropout = true;
  LossSpec loss;
  bool resume = false;
  int64_t stop_after_steps = -1;  // stop (as if interrupted) after this many steps
  bool quiet = false;
  // Evaluation (retrieval metrics, as InformationRetrievalEvaluator): on eval_data (a BEIR
  // folder or a pairs file), or on a fraction of the training pairs held out (eval_holdout),
  // every eval_steps steps (0: only at the end).
  std::string eval_data;
  double eval_holdout = 0.0;
  int64_t eval_steps = 0;
  int eval_batch_size = 64;
  std::string metric_for_best_model = "ndcg@10";
  bool load_best_model_at_end = false;
};

struct TrainResult {
  json final_metrics;  // of the last evaluation (null without evaluation)
  double best_metric = 0;
  int64_t best_step = -1;
  int64_t steps = 0;
  int64_t tokens = 0;
  double seconds = 0;
  double last_loss = 0;
  // Peak device memory of the run's training and evaluation (weights included; before the
  // exports), 0 where the backend does not track it (the CPU).
  size_t peak_bytes = 0;
  std::string adapter_dir, merged_dir;
};

TrainResult run_training(const TrainConfig& cfg, const Backend& be);

}  // namespace et
