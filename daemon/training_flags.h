#ifndef EFFADAM_DAEMON_TRAINING_FLAGS_H_
#define EFFADAM_DAEMON_TRAINING_FLAGS_H_

// The training flags of effadam-sim and effadam-worker (--model,
// --mlp_hidden, --data_dir, --batch_size, --lr, --beta1, --beta2, --eps,
// --lr_schedule, --warmup_rounds, --beta2_schedule, --theta,
// --bias_correction, --weight_decay, --seed, --rounds, --eval_every,
// --summary_json), so the same flag means the same thing in both; their
// defaults are TrainingConfig's.

#include "absl/status/statusor.h"
#include "worker/training_config.h"

namespace effadam {

// The config of the flags' values; a bad value is InvalidArgument naming
// the flag.
absl::StatusOr<TrainingConfig> TrainingConfigFromFlags();

}  // namespace effadam

#endif  // EFFADAM_DAEMON_TRAINING_FLAGS_H_
