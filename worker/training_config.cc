#include "worker/training_config.h"

#include "absl/strings/str_cat.h"

namespace effadam {

absl::StatusOr<LrSchedule> ParseLrSchedule(absl::string_view name) {
  if (name == "constant") return LrSchedule::kConstant;
  if (name == "inverse_sqrt") return LrSchedule::kInverseSqrt;
  if (name == "warmup_cosine") return LrSchedule::kWarmupCosine;
  return absl::InvalidArgumentError(absl::StrCat(
      "--lr_schedule must be constant, inverse_sqrt or warmup_cosine, got '",
      name, "'"));
}

absl::StatusOr<Beta2Schedule> ParseBeta2Schedule(absl::string_view name) {
  if (name == "constant") return Beta2Schedule::kConstant;
  if (name == "theta") return Beta2Schedule::kOneMinusThetaOverT;
  return absl::InvalidArgumentError(absl::StrCat(
      "--beta2_schedule must be constant or theta, got '", name, "'"));
}

const char* LrScheduleName(LrSchedule schedule) {
  switch (schedule) {
    case LrSchedule::kConstant:
      return "constant";
    case LrSchedule::kInverseSqrt:
      return "inverse_sqrt";
    case LrSchedule::kWarmupCosine:
      return "warmup_cosine";
  }
  return "constant";
}

const char* Beta2ScheduleName(Beta2Schedule schedule) {
  switch (schedule) {
    case Beta2Schedule::kConstant:
      return "constant";
    case Beta2Schedule::kOneMinusThetaOverT:
      return "theta";
  }
  return "constant";
}

}  // namespace effadam
