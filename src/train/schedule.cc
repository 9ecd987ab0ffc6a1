#include "train/schedule.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace et {

LrSchedule parse_lr_schedule(const std::string& n) {
  if (n == "constant") return LrSchedule::Constant;
  if (n == "constant_with_warmup") return LrSchedule::ConstantWithWarmup;
  if (n == "linear") return LrSchedule::Linear;
  if (n == "cosine") return LrSchedule::Cosine;
  fail("lr_scheduler_type '", n, "' is not one of constant, constant_with_warmup, linear, cosine");
}

const char* lr_schedule_name(LrSchedule s) {
  switch (s) {
    case LrSchedule::Constant:
      return "constant";
    case LrSchedule::ConstantWithWarmup:
      return "constant_with_warmup";
    case LrSchedule::Linear:
      return "linear";
    case LrSchedule::Cosine:
      return "cosine";
  }
  return "?";
}

double lr_multiplier(LrSchedule s, int64_t step, int64_t warmup, int64_t total) {
  if (s == LrSchedule::Constant) return 1.0;
  if (step < warmup)
    return static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup));
  if (s == LrSchedule::ConstantWithWarmup) return 1.0;
  const double span = static_cast<double>(std::max<int64_t>(1, total - warmup));
  if (s == LrSchedule::Linear) return std::max(0.0, static_cast<double>(total - step) / span);
  const double progress = static_cast<double>(step - warmup) / span;
  return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * progress)));
}

int64_t warmup_steps_for(int64_t warmup_steps, double warmup_ratio, int64_t total) {
  if (warmup_steps > 0) return warmup_steps;
  return static_cast<int64_t>(std::ceil(warmup_ratio * static_cast<double>(total)));
}

}  // namespace et
