#ifndef EFFADAM_WORKER_LAUNCH_ENV_H_
#define EFFADAM_WORKER_LAUNCH_ENV_H_

#include <functional>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace effadam {

// Where a worker finds its server and which rank it claims, from what its
// caller gave (effadam-worker's flags, EfficientAdam's arguments) and what
// a launcher put in the environment. One function serves effadam-worker and
// the Python package (bound as effadam.resolve_placement), so both read the
// same variables with the same precedence:
//
//   server:     given > EFFADAM_SERVER > MASTER_ADDR:EFFADAM_PORT
//               (EFFADAM_PORT default 50051) > 127.0.0.1:50051
//   num_shards: given > EFFADAM_NUM_SHARDS > 0
//   rank:       given > RANK (torchrun, PyTorchJob, effadam.run)
//               > JOB_COMPLETION_INDEX (Kubernetes Indexed Job) > -1 (any)
//   world_size: WORLD_SIZE, checked against the server's --workers after
//               Join (CheckWorldSize); 0 when unset.
//
// MASTER_PORT is torch's rendezvous port, not effadam's, and is not read.
// An empty variable counts as unset. Pure and thread-safe.

inline constexpr int kDefaultServerPort = 50051;

// What the caller gave; unset fields come from the environment.
struct GivenPlacement {
  std::optional<std::string> server;
  std::optional<int> num_shards;
  std::optional<int> rank;
};

struct WorkerPlacement {
  std::string server;
  int num_shards = 0;
  int rank = -1;       // -1: the lowest free rank
  int world_size = 0;  // 0: not given
  // Where server and rank came from, for messages: "given",
  // "EFFADAM_SERVER", "MASTER_ADDR", "default"; "given", "RANK",
  // "JOB_COMPLETION_INDEX", "default".
  std::string server_source;
  std::string rank_source;
};

// A variable's value, or nullopt when it is not set.
using EnvLookup =
    std::function<std::optional<std::string>(const std::string& name)>;

// The process environment (getenv).
EnvLookup ProcessEnvironment();

// InvalidArgument naming the variable for a value that is not a number in
// range (RANK=-2, WORLD_SIZE=0, EFFADAM_PORT=70000), and for a rank outside
// [0, WORLD_SIZE).
absl::StatusOr<WorkerPlacement> ResolvePlacement(const GivenPlacement& given,
                                                 const EnvLookup& env);

// After Join: FailedPrecondition naming both numbers when WORLD_SIZE was
// given and differs from the server's --workers.
absl::Status CheckWorldSize(const WorkerPlacement& placement,
                            int server_workers, absl::string_view server);

}  // namespace effadam

#endif  // EFFADAM_WORKER_LAUNCH_ENV_H_
