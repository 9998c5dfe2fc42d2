#ifndef EFFADAM_SERVER_CHECKPOINT_H_
#define EFFADAM_SERVER_CHECKPOINT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/tensor_layout.h"
#include "effadam/v1/parameter_server.pb.h"
#include "core/round_engine.h"

namespace effadam {

// Everything the parameter server needs to go on after a restart: the
// layout and compression settings it was fixed to, the round engine's state
// (round, x, E; of the server's shard only) and how many rounds training
// has closed. Updates of the round
// in progress are not part of it; workers send them again.
struct Checkpoint {
  TensorLayout layout;
  v1::CompressionSettings compression;
  RoundEngineState state;
  int64_t rounds_closed = 0;
  int shard = 0;  // which part of the layout's x state holds
  int num_shards = 1;
};

// Whether `checkpoint` was written after the last of `rounds` rounds (the
// round it holds is the one after them), so that a server restoring it has
// nothing left to train: its run is complete. rounds == 0 (train until
// SIGTERM) never completes.
bool CompletesRun(const Checkpoint& checkpoint, int64_t rounds);
// The same rule for x at the start of `round`.
bool CompletesRun(int64_t round, int64_t rounds);

// The bytes of a checkpoint file (docs/faults.md, "Server restarts and
// checkpoints"): magic, header, raw x and E, and a CRC-32 of all of it. Parse accepts exactly what Serialize
// makes and rejects any other input with DataLoss (truncated, corrupted,
// trailing bytes) or InvalidArgument (a well-formed file that describes an
// impossible state).
std::string SerializeCheckpoint(const Checkpoint& checkpoint);
absl::StatusOr<Checkpoint> ParseCheckpoint(absl::string_view bytes);

// A directory of checkpoint files, newest kept, written atomically: a file
// is written under a temporary name, fsync'ed, renamed into place and the
// directory fsync'ed, so a crash at any point leaves either the previous
// set of files or the previous set plus the new one, never a torn file
// under a checkpoint's name. Files are named checkpoint-<round>.effadam by
// the round that follows them. Not thread-safe.
class CheckpointStore {
 public:
  // Creates `dir` if it does not exist. Keeps the newest `keep` (>= 1)
  // files after each Write.
  static absl::StatusOr<CheckpointStore> Open(std::string dir, int keep);

  struct Written {
    std::string path;
    int64_t bytes = 0;
    std::string params_checksum;  // of the x it holds, as its header says
  };
  // Writes `checkpoint` and removes the older files beyond `keep`.
  absl::StatusOr<Written> Write(const Checkpoint& checkpoint);

  struct Loaded {
    Checkpoint checkpoint;
    std::string path;
    // Newer files that did not verify, each as "path: reason".
    std::vector<std::string> skipped;
  };
  // The newest file that reads and verifies, or nullopt when there is none
  // (skipped still lists what was tried). Leftover temporary files of an
  // interrupted write are removed.
  absl::StatusOr<std::optional<Loaded>> LoadNewest();

  const std::string& dir() const { return dir_; }

 private:
  CheckpointStore(std::string dir, int keep)
      : dir_(std::move(dir)), keep_(keep) {}

  // Checkpoint files in `dir_`, newest first.
  absl::StatusOr<std::vector<std::pair<int64_t, std::string>>> List() const;

  std::string dir_;
  int keep_;
};

}  // namespace effadam

#endif  // EFFADAM_SERVER_CHECKPOINT_H_
