#ifndef EFFADAM_WORKER_TRAINING_FLAGS_H_
#define EFFADAM_WORKER_TRAINING_FLAGS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/model.h"
#include "worker/worker_optimizer.h"

namespace effadam {

// What a worker trains and for how long; shared by effadam-sim and the
// worker daemon so that the same flags mean the same thing in both.
struct TrainingConfig {
  ModelConfig model;   // rank and num_workers are filled in by the caller
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

// From --model, --mlp_hidden, --data_dir, --batch_size, --lr, --beta1,
// --beta2, --eps, --lr_schedule, --warmup_rounds, --beta2_schedule, --theta,
// --bias_correction, --weight_decay, --seed, --rounds, --eval_every,
// --summary_json.
absl::StatusOr<TrainingConfig> TrainingConfigFromFlags();

}  // namespace effadam

#endif  // EFFADAM_WORKER_TRAINING_FLAGS_H_
