// Learning-rate schedules as transformers' get_scheduler defines them, as a multiplier of the
// base rate at optimizer step `step` (0-based: the first update uses step 0).
//   constant:              1
//   constant_with_warmup:  step < W ? step / W : 1
//   linear:                step < W ? step / W : max(0, (N - step) / (N - W))
//   cosine:                step < W ? step / W : max(0, (1 + cos(pi * (step - W) / (N - W))) / 2)
#pragma once

#include <cstdint>
#include <string>

namespace et {

enum class LrSchedule { Constant, ConstantWithWarmup, Linear, Cosine };

LrSchedule parse_lr_schedule(const std::string& name);
const char* lr_schedule_name(LrSchedule s);
double lr_multiplier(LrSchedule s, int64_t step, int64_t warmup, int64_t total);
// warmup_steps when > 0, else ceil(warmup_ratio * total) (transformers' get_warmup_steps).
int64_t warmup_steps_for(int64_t warmup_steps, double warmup_ratio, int64_t total);

}  // namespace et
