#ifndef EFFADAM_SERVER_CHECKPOINT_H_
#define EFFADAM_SERVER_CHECKPOINT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/round_engine.h"
#include "core/tensor_layout.h"
#include "core/update_codec.h"
#include "effadam/v1/parameter_server.pb.h"

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
// checkpoints"): magic, header, raw x and E, and a CRC-32 of all of it. Parse
// accepts exactly what Serialize makes and rejects any other input with
// DataLoss (truncated, corrupted, trailing bytes) or InvalidArgument (a
// well-formed file that describes an impossible state).
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

// The encoded deltas of the last few closed rounds, one file each beside
// the checkpoints (delta-<round>.effadam: magic, round, the delta as sent,
// CRC-32), so that a server killed after closing a round and before any
// worker applied its delta loses no round (docs/faults.md, "Zero lost
// rounds"): a restarted server replays the kept deltas onto the newest x it
// has (checkpoint or replica). A record is written before any worker can
// receive its delta, under a temporary name and renamed into place, without
// fsync: it survives a killed process (the page cache does), which is what
// it is for; after a machine crash a lost or torn record ends the replay
// there. A default-constructed DeltaLog keeps nothing. Not thread-safe.
class DeltaLog {
 public:
  DeltaLog() = default;
  // Keeps the newest `keep` (>= 1) records in `dir` (created if missing).
  static absl::StatusOr<DeltaLog> Open(std::string dir, int keep);
  // A log that keeps nothing, for servers without a checkpoint directory.
  static DeltaLog& None();

  bool enabled() const { return keep_ > 0; }
  // Records the delta of closed round `round` (x at the start of round + 1
  // is x at the start of `round` minus its decoded values) and removes the
  // record `keep` rounds older. The first Append of a log also removes
  // every record of a later round: those are of a history this server did
  // not go on with (it restarted from an older x), and must never be
  // replayed. Until then they stay, for a replica that arrives late.
  absl::Status Append(int64_t round, absl::string_view delta);
  // The delta of `round` if its record is there and verifies; NotFound
  // when there is none, DataLoss when it does not verify.
  absl::StatusOr<std::string> Read(int64_t round) const;

 private:
  // Removes every record of a round >= `round`, those older than `keep`
  // rounds before it, and leftover temporary files.
  void Retain(int64_t round);

  DeltaLog(std::string dir, int keep) : dir_(std::move(dir)), keep_(keep) {}
  std::string Path(int64_t round) const;

  std::string dir_;
  int keep_ = 0;
  bool retained_ = false;  // the first Append has removed later records
};

// Applies the deltas `log` keeps for state->round, state->round + 1, ...
// to state->params, as every worker applies them (server_codec's
// DecodeAccumulate with -1), and advances state->round; stops at the first
// round it has no verifying record of. E is set to zero when a delta is
// applied (the server's residual of those rounds is not kept). Returns the
// number of rounds applied.
int64_t ReplayDeltas(const DeltaLog& log, const UpdateCodec& server_codec,
                     RoundEngineState* state);

}  // namespace effadam

#endif  // EFFADAM_SERVER_CHECKPOINT_H_
