#include <toml++/toml.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>
#include <sstream>

#include "cli/commands.h"
#include "core/error.h"
#include "ops/cuda/cuda_backend.h"
#include "train/trainer.h"

namespace et::cli {

namespace {

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

// TOML value -> the text of a command-line value.
std::string toml_value(const toml::node& n, const std::string& file, const std::string& key) {
  if (auto s = n.value<std::string>()) return *s;
  if (auto b = n.value<bool>(); b && n.is_boolean()) return *b ? "true" : "false";
  if (n.is_integer()) return std::to_string(*n.value<int64_t>());
  if (n.is_floating_point()) {
    std::ostringstream os;
    os.precision(17);
    os << *n.value<double>();
    return os.str();
  }
  if (const toml::array* a = n.as_array()) {
    std::string out;
    for (const auto& x : *a) out += (out.empty() ? "" : ",") + toml_value(x, file, key);
    return out;
  }
  fail(file, ": key '", key, "' has a value of a type the CLI cannot take");
}

}  // namespace

std::vector<std::string> expand_train_config(const std::vector<std::string>& args) {
  // embedtune train CONFIG.toml [flags...]: the file's keys become --key=value before the
  // command-line flags, which therefore override them.
  if (args.size() < 3 || args[1] != "train" || !ends_with(args[2], ".toml")) return args;
  const std::string& file = args[2];
  toml::table t;
  try {
    t = toml::parse_file(file);
  } catch (const toml::parse_error& e) {
    std::ostringstream os;
    os << e.description() << " at line " << e.source().begin.line;
    fail(file, ": invalid TOML (", os.str(), ")");
  } catch (const std::exception& e) {
    fail(file, ": cannot read (", e.what(), ")");
  }
  std::vector<std::string> out{args[0], args[1]};
  for (const auto& [k, v] : t) {
    std::string key(k.str());
    if (const toml::table* sub = v.as_table()) {  // [lora] r = 16  ->  --lora_r=16
      for (const auto& [k2, v2] : *sub) {
        std::string full = key + "_" + std::string(k2.str());
        out.push_back("--" + full + "=" + toml_value(v2, file, full));
      }
      continue;
    }
    out.push_back("--" + key + "=" + toml_value(v, file, key));
  }
  out.insert(out.end(), args.begin() + 3, args.end());
  return out;
}

Run add_train(CLI::App& app) {
  auto c = std::make_shared<TrainConfig>();
  struct Extra {
    std::string mode = "lora", schedule = "linear", sampler = "batch_sampler", device = "cpu",
                loss = "mnrl", distance = "euclidean";
    std::vector<std::string> targets;
  };
  auto x = std::make_shared<Extra>();
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.footer(
      "A TOML file may come first (embedtune train config.toml [flags]); its keys are the flag\n"
      "names (learning_rate = 2e-4, or tables: [lora] r = 16); flags override the file.");
  app.add_option("--model", c->model, "Base model folder (sentence-transformers or transformers)")
      ->required();
  app.add_option("--train,--train_file", c->train_file,
                 "Training data: .jsonl, .csv or .tsv with named columns")
      ->required();
  app.add_option("--output,--output_dir", c->output_dir, "Output folder")->required();
  app.add_option(
         "--columns", c->columns,
         "Columns in order anchor,positive[,negatives...] (default: anchor, positive, negative*)")
      ->delimiter(',');
  app.add_option("--mode", x->mode, "lora or full (fine-tuning)")
      ->check(CLI::IsMember({"lora", "full"}))
      ->capture_default_str();
  app.add_option("--lora_r,--lora-r", c->lora.r, "LoRA rank")->capture_default_str();
  app.add_option("--lora_alpha,--lora-alpha", c->lora.alpha, "LoRA alpha")->capture_default_str();
  app.add_option("--lora_dropout,--lora-dropout", c->lora.dropout, "LoRA dropout")
      ->capture_default_str();
  app.add_option("--lora_target_modules,--target_modules", x->targets,
                 "Module names LoRA adapts (PEFT matching; default: the family's PEFT defaults)")
      ->delimiter(',');
  app.add_flag("--use_rslora", c->lora.use_rslora, "Scale LoRA by alpha/sqrt(r)");
  app.add_option("--adapter", c->init_adapter, "Continue training this PEFT adapter");
  app.add_option("--learning_rate,--learning-rate,--lr", c->learning_rate, "Peak learning rate")
      ->capture_default_str();
  app.add_option("--per_device_train_batch_size,--batch-size", c->per_device_train_batch_size,
                 "Rows per batch (in-batch negatives)")
      ->capture_default_str();
  app.add_option("--num_train_epochs,--epochs", c->num_train_epochs, "Epochs")
      ->capture_default_str();
  app.add_option("--max_steps", c->max_steps, "Optimizer steps (overrides epochs when > 0)")
      ->capture_default_str();
  app.add_option("--warmup_ratio", c->warmup_ratio, "Warm-up as a fraction of all steps")
      ->capture_default_str();
  app.add_option("--warmup_steps", c->warmup_steps, "Warm-up steps (overrides warmup_ratio)")
      ->capture_default_str();
  app.add_option("--lr_scheduler_type", x->schedule,
                 "constant, constant_with_warmup, linear, cosine")
      ->capture_default_str();
  app.add_option("--weight_decay", c->weight_decay, "AdamW decoupled weight decay")
      ->capture_default_str();
  app.add_option("--max_grad_norm", c->max_grad_norm, "Clip gradients to this global norm (0: off)")
      ->capture_default_str();
  app.add_option("--adam_beta1", c->adam_beta1)->capture_default_str();
  app.add_option("--adam_beta2", c->adam_beta2)->capture_default_str();
  app.add_option("--adam_epsilon", c->adam_epsilon)->capture_default_str();
  app.add_option("--seed", c->seed, "Seed of shuffling, LoRA initialisation and dropout")
      ->capture_default_str();
  app.add_option("--gradient_accumulation_steps", c->gradient_accumulation_steps)
      ->capture_default_str();
  app.add_option("--batch_sampler", x->sampler, "batch_sampler or no_duplicates")
      ->capture_default_str();
  app.add_flag("--dataloader_drop_last", c->dataloader_drop_last, "Drop the last incomplete batch");
  app.add_option("--save_steps", c->save_steps, "Checkpoint every N steps (0: never)")
      ->capture_default_str();
  app.add_option("--save_total_limit", c->save_total_limit,
                 "Keep only the newest N checkpoints (0: all)")
      ->capture_default_str();
  app.add_option("--logging_steps", c->logging_steps, "Log every N steps")->capture_default_str();
  app.add_option("--max_seq_length", c->max_seq_length,
                 "Truncate texts to N tokens (default: the model's)");
  app.add_option("--scale", c->loss.scale, "MultipleNegativesRankingLoss scale")
      ->capture_default_str();
  app.add_option("--loss", x->loss,
                 "mnrl, mnrl_symmetric, triplet, cosent, angle, cosine_similarity, contrastive, "
                 "online_contrastive, margin_mse (or the sentence-transformers class name); losses "
                 "with labels read a numeric 'label' or 'score' column")
      ->capture_default_str();
  app.add_option("--margin", c->loss.margin, "Triplet (default 5) / contrastive (0.5) margin");
  app.add_option("--distance_metric", x->distance,
                 "TripletLoss distance: euclidean, cosine, manhattan")
      ->check(CLI::IsMember({"euclidean", "cosine", "manhattan"}))
      ->capture_default_str();
  app.add_option("--mini_batch_size", c->loss.mini_batch_size,
                 "GradCache (CachedMultipleNegativesRankingLoss): embed this many texts at a time; "
                 "memory no longer grows with the batch size")
      ->capture_default_str();
  app.add_option("--matryoshka_dims", c->loss.matryoshka_dims,
                 "MatryoshkaLoss: also train truncated embeddings (e.g. 768,512,256,128,64)")
      ->delimiter(',');
  app.add_option("--matryoshka_weights", c->loss.matryoshka_weights,
                 "Weights of the matryoshka dims (default 1)")
      ->delimiter(',');
  add_on_off_option(app, "--model_dropout", c->model_dropout,
                    "Apply the model's own dropout (config.json's hidden and attention dropout), "
                    "as sentence-transformers does in training: on or off");
  app.add_flag("--gradient_checkpointing", c->gradient_checkpointing,
               "Recompute each layer in backward instead of storing its activations");
  app.add_option("--eval_data", c->eval_data, "Evaluate on this BEIR folder or pairs file");
  app.add_option("--eval_holdout", c->eval_holdout,
                 "Hold out this fraction of the training pairs for evaluation");
  app.add_option("--eval_steps", c->eval_steps, "Evaluate every N steps (0: at the end only)")
      ->capture_default_str();
  app.add_option("--eval_batch_size,--per_device_eval_batch_size", c->eval_batch_size)
      ->capture_default_str();
  app.add_option("--metric_for_best_model", c->metric_for_best_model,
                 "Metric that picks the best evaluation (ndcg@10, mrr@10, recall@10, map@100, ...)")
      ->capture_default_str();
  app.add_flag("--load_best_model_at_end", c->load_best_model_at_end,
               "Write the best evaluated weights as the final adapter/merged model");
  app.add_flag("--resume", c->resume, "Continue from the newest checkpoint in the output folder");
  app.add_option("--device", x->device, "cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  app.add_flag("--quiet", c->quiet, "Only write the logs to the output folder");
  return [c, x]() {
    c->mode = x->mode == "full" ? TrainMode::Full : TrainMode::Lora;
    c->lr_scheduler_type = parse_lr_schedule(x->schedule);
    c->batch_sampler = parse_batch_sampler(x->sampler);
    c->loss.kind = parse_loss_kind(x->loss);
    c->loss.distance = x->distance == "cosine" ? 1 : x->distance == "manhattan" ? 2 : 0;
    c->lora.target_modules = x->targets;
    ET_CHECK(c->logging_steps > 0, "--logging_steps must be positive");
    ET_CHECK(c->per_device_train_batch_size > 0, "--per_device_train_batch_size must be positive");
    auto be = make_backend(x->device);
    run_training(*c, *be);
    return 0;
  };
}

}  // namespace et::cli
