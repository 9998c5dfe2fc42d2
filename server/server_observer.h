#ifndef EFFADAM_SERVER_SERVER_OBSERVER_H_
#define EFFADAM_SERVER_SERVER_OBSERVER_H_

#include <cstdint>
#include <optional>

#include "absl/status/status.h"
#include "common/traffic.h"

namespace effadam {

// Why the server refused a message or a call (docs/metrics.md). One value
// per kind of client mistake, so a dashboard can tell a misconfigured
// worker from a buggy one. Refusals that come from the server's own state
// (shutting down, a failed round engine) are not rejections.
enum class Rejection {
  kBadLayout,            // Join: invalid or too large layout
  kLayoutMismatch,       // Join: layout differs from the server's
  kCompressionMismatch,  // Join: compression settings differ
  kBadCompression,       // Join: malformed compression settings (a codec
                         // name that does not parse, a bad block size)
  kBadRank,              // Join: requested rank outside [0, N)
  kRankTaken,            // Join: requested rank is live
  kNoFreeRank,           // Join: every rank is live
  kTrainingEnded,        // Join or an update after round --rounds
  kBadUpload,            // UploadParams refused or malformed
  kNotReady,             // Train before the initial parameters exist
  kUnknownRank,          // Train from a rank that has not joined (or left)
  kDuplicateStream,      // Train from a rank that already has a stream
  kWrongRank,            // a message names another rank than its stream's
  kWrongRound,           // an update for a round the server cannot take
  kBadOffset,            // a chunk out of order (offset, round mid-update)
  kBadChunkSize,         // an empty chunk, one over max_chunk_bytes, past
                         // the end of the update, or of another size than
                         // min(max_chunk_bytes, bytes remaining)
  kTruncatedUpdate,      // the stream ended in the middle of an update
  kInvalidPayload,       // a complete update whose bytes do not validate
  kLagging,              // an update so late that its round's delta is gone
  kUnauthenticated,      // a call without the server's token
  kUnparseable,          // a request that does not parse as its message
  kProtocolMismatch,     // Join: the worker speaks another protocol version
};
inline constexpr int kNumRejections = 22;

// The `reason` label: "bad_layout", "layout_mismatch", ...
const char* RejectionName(Rejection why);

// `status` (not OK) marked as a rejection for `why`: the components that
// check messages return these, and the service counts and logs each once,
// where the call ends. The mark travels as a status payload, so it
// survives being returned through layers that know nothing of it.
absl::Status Rejected(Rejection why, absl::Status status);
// The mark Rejected() put on `status`, if any.
std::optional<Rejection> RejectionOf(const absl::Status& status);

// What a round's closing looked like.
struct ClosedRoundStats {
  int64_t round = 0;             // the round that closed
  int contributors = 0;          // updates averaged into its delta
  int live_workers = 0;          // live when it closed
  int lagging_workers = 0;       // live but not among the contributors
  double duration_seconds = 0;   // first update's arrival to delta computed
  double train_loss = 0;         // mean loss the contributors reported
  double error_memory_norm = 0;  // L2 norm of the server's E afterwards
  bool dropped = false;          // its average overflowed; the delta was zero
};

// A checkpoint file the server wrote.
struct CheckpointStats {
  int64_t round = 0;  // the round it resumes at
  int64_t bytes = 0;
  double seconds = 0;  // to write and fsync it
};

// Receives what ParameterServer and its service do, for monitoring. They
// stay free of any metrics library; metrics/server_metrics.h turns these
// calls into Prometheus metrics.
//
// Byte calls are made under the server's lock at the moment its own
// counts (ServerSummary) change, so a counter fed by them equals the
// summary whenever the server is idle. Implementations must therefore be
// thread-safe, fast, and must not call back into the service. The default
// implementations ignore the call.
class ServerObserver {
 public:
  virtual ~ServerObserver() = default;

  // Serialized protobuf size of one message or several (ByteSizeLong()).
  virtual void OnWireBytes(TrafficDirection /*direction*/, int64_t /*bytes*/) {}
  // Codec payload bytes as effadam-sim counts them, and what fp32 would
  // have moved for the same traffic (0 for join traffic).
  virtual void OnPayloadBytes(TrafficDirection /*direction*/,
                              int64_t /*payload_bytes*/,
                              int64_t /*fp32_bytes*/) {}
  virtual void OnRoundClosed(const ClosedRoundStats& /*stats*/) {}
  // The number of live workers changed (a Join, a departure).
  virtual void OnLiveWorkers(int /*live*/) {}
  virtual void OnRejected(Rejection /*why*/) {}
  // A worker's Train stream ended with an error or a cancellation while
  // the server was healthy.
  virtual void OnWorkerDropped() {}
  // The server resumed from a checkpoint at `round`.
  virtual void OnResumed(int64_t /*round*/) {}
  virtual void OnCheckpointWritten(const CheckpointStats& /*stats*/) {}
  virtual void OnCheckpointFailed() {}

  // An observer that ignores everything; never destroyed. Components hold
  // a reference to it instead of checking for null.
  static ServerObserver& None();
};

}  // namespace effadam

#endif  // EFFADAM_SERVER_SERVER_OBSERVER_H_
