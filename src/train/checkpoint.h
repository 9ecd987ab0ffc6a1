// Training checkpoints: everything needed to continue a run exactly where it stopped.
//   <output>/checkpoints/checkpoint-<step>/
//     trainable.safetensors   values of the trainable parameters (by name)
//     optimizer.safetensors   AdamW moments "m.<name>", "v.<name>"
//     trainer_state.json      step, epoch, next micro-batch, RNG state, run settings
// Each checkpoint is written to a ".partial" folder and renamed into place, so an
// interrupted write never leaves a checkpoint that looks complete.
#pragma once

#include <string>
#include <vector>

#include "core/rng.h"
#include "io/files.h"
#include "model/param.h"
#include "ops/backend.h"

namespace et {

struct TrainerState {
  int64_t step = 0;    // optimizer steps done
  int epoch = 0;       // epoch of the next micro-batch
  int64_t micro = 0;   // index of the next micro-batch within that epoch
  int64_t tokens = 0;  // real tokens processed so far
  Rng rng;             // LoRA dropout
  json settings;       // run settings that must match on resume
};

struct OptimizerState {
  std::vector<Tensor> m, v;  // per trainable parameter, same order
};

void save_checkpoint(const Backend& be, const std::string& dir, const std::vector<Param*>& params,
                     const OptimizerState& opt, const TrainerState& st);
// Loads into existing tensors; names and shapes must match.
void load_checkpoint(const Backend& be, const std::string& dir, const std::vector<Param*>& params,
                     OptimizerState& opt, TrainerState& st);
// The complete checkpoint with the highest step under <output>/checkpoints ("" if none).
std::string latest_checkpoint(const std::string& output_dir);
// Deletes all but the newest `keep` checkpoints (keep <= 0: keep all).
void prune_checkpoints(const std::string& output_dir, int keep);

}  // namespace et
