#ifndef EFFADAM_WORKER_TRAINING_CONFIG_H_
#define EFFADAM_WORKER_TRAINING_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/worker_optimizer.h"
#include "worker/model.h"

namespace effadam {

// What a worker trains and for how long, with the one set of defaults (the
// flags of effadam-sim and effadam-worker take theirs from here, see
// daemon/training_flags.h). A plain value; not synchronized.
struct TrainingConfig {
  ModelConfig model;  // rank and num_workers are filled in by the caller
  AdamOptions adam;
  uint64_t seed = 1;
  int64_t rounds = 1000;
  int64_t eval_every = 100;  // 0: only at the end
  std::string summary_json;  // empty: no summary file
};

// The values of --lr_schedule (constant, inverse_sqrt, warmup_cosine) and
// --beta2_schedule (constant, theta); anything else is InvalidArgument
// naming the flag.
absl::StatusOr<LrSchedule> ParseLrSchedule(absl::string_view name);
absl::StatusOr<Beta2Schedule> ParseBeta2Schedule(absl::string_view name);
// The names ParseLrSchedule and ParseBeta2Schedule accept.
const char* LrScheduleName(LrSchedule schedule);
const char* Beta2ScheduleName(Beta2Schedule schedule);

}  // namespace effadam

#endif  // EFFADAM_WORKER_TRAINING_CONFIG_H_
