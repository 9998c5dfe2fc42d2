#ifndef EFFADAM_SERVER_PARAMETER_SERVER_H_
#define EFFADAM_SERVER_PARAMETER_SERVER_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/logger.h"
#include "common/thread_pool.h"
#include "common/traffic.h"
#include "core/compression_config.h"
#include "core/round_engine.h"
#include "core/shard_plan.h"
#include "core/tensor_layout.h"
#include "core/update_codec.h"
#include "server/checkpoint.h"
#include "server/membership.h"
#include "server/round_coordinator.h"
#include "server/server_observer.h"

namespace effadam {

class TokenAuthenticator;

struct ServerOptions {
  // N: ranks are 0..N-1 and a round closes early once all N submitted.
  int workers = 4;
  // Authoritative; every worker's CompressionSettings must equal it.
  CompressionConfig compression;
  // Training ends after this round; 0 runs until Shutdown().
  int64_t rounds = 0;
  // A round closes this long after its first update even if ranks are
  // missing.
  absl::Duration round_timeout = absl::Seconds(60);
  // Bound on the payload of every chunk, in both directions. A chunk goes
  // out only once all its bytes are final, so this is the grain at which a
  // round pipelines (the delta down as segments close, a bucketed update
  // up during backward): 64 KiB made the 5.8M MLP's steps shorter on the
  // emulated cluster (docs/benchmarks.md, "The chunk size"); it stays
  // 1 MiB by default until a memory spike of the rapid-reset flood over
  // TLS, seen more often at 64 KiB, is understood. Clusters that want the
  // pipelining pass --max_chunk_bytes=65536.
  size_t max_chunk_bytes = size_t{1} << 20;
  // Seeds the server codec's stochastic rounding; equal to the workers'
  // --seed for runs that must match effadam-sim.
  uint64_t seed = 1;
  // This server owns shard `shard` of `num_shards` (PlanShards over the
  // layout's worker codec): x, E and every update and delta of that part.
  int shard = 0;
  int num_shards = 1;
  // Every this many closed rounds a snapshot of the state is made ready for
  // TakeDueCheckpoint(); 0 for none while training.
  int64_t checkpoint_every = 0;
  // Largest model accepted by Join (elements); guards the server's memory.
  size_t max_num_elements = size_t{1} << 31;
  // Told about traffic, rounds, membership and rejections (for metrics);
  // null for none. Not owned; must outlive the server.
  ServerObserver* observer = nullptr;
  // Checks the token of every effadam.v1 call before anything else
  // happens (ParameterServerService); null: no token required. Not owned;
  // must outlive the service.
  const TokenAuthenticator* authenticator = nullptr;
  // Where time comes from; null: the system clock. Not owned.
  const Clock* clock = nullptr;
  // Threads the round engine closes a round on (RoundEngineOptions).
  int threads = AvailableCores();
  // Where the server's few log lines go (joins, departures, rejected
  // calls, dropped rounds); null: nowhere. Not owned; must outlive the
  // server.
  Logger* logger = nullptr;
  // Keeps the deltas of the last closed rounds for a restart (the daemon
  // opens it in --checkpoint_dir); null: none kept. Not owned; must
  // outlive the server.
  DeltaLog* delta_log = nullptr;
};

// What the server has done so far; a consistent snapshot.
struct ServerSummary {
  int64_t round = 1;  // the round being collected
  int64_t rounds_closed = 0;
  // Of rounds_closed by this process: closed with fewer than N updates, and
  // dropped because their result was not finite.
  int64_t short_rounds = 0;
  int64_t dropped_rounds = 0;
  // The round a restored checkpoint resumed at; 0 for a fresh start.
  int64_t resumed_at_round = 0;
  // x is missing, or may still be replaced by a rejoining worker's newer
  // replica (a restarted server): `round` is provisional.
  bool awaiting_replicas = true;
  int live_workers = 0;
  int64_t num_elements = 0;  // 0 until the first Join fixes the layout
  // Payload bytes counted as effadam-sim counts them, and the serialized
  // sizes of every message the server read and wrote (CountWire), rejected
  // ones included.
  TrafficCounts traffic;
  // Mean loss the contributors reported for the last closed round; NaN
  // before the first.
  double train_loss = 0;
  // ParamsChecksum of x; empty before the initial parameters exist.
  std::string params_checksum;
  // ParamsChecksum of the server's error memory E, likewise; computed by
  // Summary() only (it reads all of E), not by StatusNow().
  std::string error_checksum;
  // Not OK once the round engine failed to close a round (the server can
  // make no further progress).
  absl::Status error;
};

// The call a request arrived on, as far as the server's rules need it
// (ParameterServerService adapts grpc::ServerContext).
class ServerCall {
 public:
  virtual ~ServerCall() = default;
  // The client went away or the call was cancelled.
  virtual bool IsCancelled() const = 0;
  // Ends the call (an upload given up on as stalled).
  virtual void Cancel() = 0;
  // Until the call's deadline; infinite without one.
  virtual absl::Duration TimeLeft() const = 0;
};

// One parameter server's state and rules, with the semantics of
// docs/protocol.md and no transport: the gRPC service
// (ParameterServerService) reads and writes the messages and hands this
// class what they say. Three parts under one lock, dependencies one way:
// Membership (ranks, the uploader, idle expiry), RoundCoordinator (when
// rounds close, the kept deltas, checkpoints; asks Membership who is live)
// and, through it, RoundEngine (the math). Refusals are statuses tagged
// with their Rejection (server_observer.h); a refused request changes
// neither x nor E. Time comes from the injected Clock, so every timing
// rule is tested on a fake one; calls that wait also wake every 100 ms of
// real time to notice a cancelled call.
//
// Thread-safe: every method may be called from any thread; the waiting
// ones (AwaitDelta, WaitForParams, WaitUntilDone) block
// only their caller.
class ParameterServer {
 public:
  // InvalidArgument for options that cannot work (no workers, a chunk
  // smaller than one float).
  static absl::StatusOr<std::unique_ptr<ParameterServer>> Create(
      const ServerOptions& options);
  ~ParameterServer();

  const ServerOptions& options() const { return options_; }
  // What the options name, or their defaults where they name none (the
  // system clock, no log, no observer).
  const Clock& clock() const { return clock_; }
  Logger& logger() const { return logger_; }
  ServerObserver& observer() const { return observer_; }

  // ---- Join
  struct JoinArgs {
    int rank = -1;  // -1: the lowest free rank
    TensorLayout layout;
    // The round of the worker's replica of x and its ParamsChecksum; 0 for
    // none.
    int64_t replica_round = 0;
    std::string replica_checksum;
  };
  struct JoinResult {
    int rank = -1;
    int64_t round = 1;  // the round being collected
    // This worker uploads its parameters (the initial ones, or its
    // replica).
    bool upload = false;
    int64_t num_elements = 0;  // of the whole layout
    ShardRange range;          // this shard's part of it
  };
  // Takes a rank (the first Join fixes the layout): FailedPrecondition
  // for another layout, OutOfRange once training has ended, the
  // Membership's refusals.
  absl::StatusOr<JoinResult> Join(const JoinArgs& args);

  // ---- UploadParams by the rank a Join asked to upload
  struct UploadPlan {
    int64_t id = 0;
    // Every chunk carries it: 0 for the initial parameters, else the
    // replica's round.
    int64_t round = 0;
    size_t num_elements = 0;              // of this shard's part of x
    std::optional<std::string> checksum;  // the replica's, from its Join
  };
  // `call` is cancelled if the upload stalls; it must stay valid until
  // EndUpload.
  absl::StatusOr<UploadPlan> BeginUpload(int rank, ServerCall& call);
  // A chunk of the upload in progress arrived (the stall timer restarts).
  void UploadProgress();
  // The upload ended with `x` (all of this shard's part) or the error of
  // reading it. Rounds start from x if it is good; else nothing is kept,
  // the uploader's rank leaves and the next Join is asked to upload.
  absl::Status EndUpload(int rank, const UploadPlan& plan,
                         absl::StatusOr<std::vector<float>> x);

  // ---- FetchParams
  struct ParamsCopy {
    std::vector<float> x;  // this shard's part, as of the start of `round`
    int64_t round = 0;
    bool tracked = false;  // a live rank's call: pass it to EndFetch
  };
  // Waits (at most round_timeout, and not past the call's deadline) for x
  // to exist and copies it.
  absl::StatusOr<ParamsCopy> WaitForParams(int rank, const ServerCall& call);
  // The copy was sent (`payload_bytes` of it); counts them.
  void EndFetch(int rank, bool tracked, int64_t payload_bytes);
  // The client of rank's FetchParams went away: a joined rank without a
  // stream leaves at once (Membership::ClientWentAway).
  void FetchClientGone(int rank);

  // ---- Train
  // The Train stream of `rank` may start: x exists and the rank joined.
  absl::Status BeginTrain(int rank);
  // The codec every update must be read with; fixed once x exists.
  std::shared_ptr<const UpdateCodec> worker_codec() const;
  // Whether an update of `rank` for `round` can be taken now (fail fast
  // before reading a whole update), and the round it counts in
  // (RoundCoordinator::PlaceUpdate): `round`, or the current round for a
  // late one.
  absl::StatusOr<int64_t> PlaceUpdate(int rank, int64_t round) const;
  // `closed`'s delta went out on a stream whole; counts it.
  void DeltaSent(const ClosedRound& closed);

  // ---- Train, segment by segment (docs/design.md, "The data path of one
  // round"): the stream's reader hands over each part of an update as it
  // arrives, and its sender sends the delta's segments as they close.
  // The part of `rank`'s update of `round` that has arrived
  // (RoundCoordinator::Progress): `update` is full size, its first
  // `segments` segments in and validated; `loss` counts once it is
  // complete. May close segments and the round.
  absl::Status SubmitProgress(int rank, int64_t round,
                              const std::shared_ptr<const std::string>& update,
                              size_t segments, float loss);
  // The stream of `rank` could not read its update of `round`: that update
  // leaves the round (which starts again if it averaged it).
  void AbandonUpdate(int rank, int64_t round);
  // What of `round`'s delta can be sent: the closed round, or while it
  // closes, its buffer and how many of its first bytes are final.
  struct DeltaProgress {
    std::optional<ClosedRound> closed;
    ClosingRound closing;
    size_t ready_bytes = 0;
  };
  // Waits until `round` closed, or it closes in another attempt than
  // `attempt` (-1: any), or at least `want_bytes` of its delta (all of it,
  // if it is shorter) are final;
  // nullopt once `stop` is set (Wake() makes the wait look at it).
  // ABORTED when the round's delta is gone (RoundCoordinator::Outcome),
  // Unavailable on shutdown, Cancelled when the call was.
  absl::StatusOr<std::optional<DeltaProgress>> AwaitDelta(
      int64_t round, int attempt, size_t want_bytes, const ServerCall& call,
      const std::atomic<bool>& stop);
  void Wake();
  // The stream of `rank` ended with `result`: the rank leaves.
  void EndTrain(int rank, const absl::Status& result);

  // Serialized bytes read or written (wire counts of TrafficCounts).
  void CountWire(TrafficDirection direction, int64_t bytes);

  // ---- Operators
  // Applies the timing rules that are due, then the summary without
  // error_checksum (cheap: the Status RPC).
  ServerSummary StatusNow();
  ServerSummary Summary() const;

  // Waits up to `timeout` for training to be over: round --rounds closed and
  // its delta went out on every Train stream (or round_timeout passed since
  // it closed, so a stuck worker cannot hold the server), the round engine
  // failed, or Shutdown() was called. True when it is over.
  bool WaitUntilDone(absl::Duration timeout);

  // Wakes every call that waits (for a round, for the parameters) and makes
  // it and every later Join, UploadParams, FetchParams and Train fail with
  // Unavailable; Status and Summary keep working. Idempotent.
  void Shutdown();

  // Before the server serves: goes on from `checkpoint` (and the deltas the
  // log kept after it) as if the rounds up to its round had run here.
  // FailedPrecondition when its compression settings differ from the
  // options' (naming each field), InvalidArgument when its layout or state
  // cannot be used, and on a second call.
  absl::Status Restore(Checkpoint checkpoint);

  // The state as of the last closed round: nullopt before the initial
  // parameters exist. Copies x and E.
  std::optional<Checkpoint> Snapshot() const;

  // The snapshot made when a multiple of checkpoint_every rounds had
  // closed, once; nullopt when none is waiting. A newer one replaces one
  // not yet taken, so a slow writer is never behind by more than one.
  std::optional<Checkpoint> TakeDueCheckpoint();

 private:
  // The model this server holds: fixed by the first successful Join (until
  // the server is empty again) or by Restore.
  struct Model {
    TensorLayout layout;
    ShardCodecs codecs;  // of this shard's part of the layout
  };

  explicit ParameterServer(const ServerOptions& options);

  // The layout with this shard's codecs (MakeShardCodecs).
  absl::StatusOr<Model> ModelFor(TensorLayout layout) const;
  RoundEngineOptions EngineOptions() const;

  // Unavailable while shutting down, the engine's failure once it failed.
  absl::Status ServingLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Rounds start from an upload of `rank`: the initial parameters (round
  // 0), or a replica at `round` (a fresh server goes on from it; a started
  // one takes it if it is still newer than x).
  absl::Status StartFromUpload(int rank, int64_t round, std::vector<float> x)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A Join's log line.
  void LogJoinLocked(int rank, int64_t replica_round, bool upload)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Applies the timing rules that need no event: idle joins, a stalled
  // uploader, the round timeout.
  void TickLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes `rank` out of the live set; a round may now close without it.
  void LeaveLocked(int rank, absl::string_view why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Before the initial parameters exist and with nobody live, the server is
  // empty again and the next Join may bring another layout.
  void ResetIfEmptyLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Waits on changed_ until `deadline` (clock time), at most one poll.
  void WaitLocked(absl::Time deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CountWireLocked(TrafficDirection direction, int64_t bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CountPayloadLocked(TrafficDirection direction, int64_t payload_bytes,
                          int64_t fp32_bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  ServerSummary SummaryLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool DoneLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ServerOptions options_;
  const Clock& clock_;
  Logger& logger_;
  ServerObserver& observer_;
  DeltaLog& delta_log_;

  mutable absl::Mutex mu_;
  // Signalled on every change a waiter may care about: a round closed, the
  // parameters arrived, a rank left, shutdown.
  absl::CondVar changed_;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<Model> model_ ABSL_GUARDED_BY(mu_);
  Membership membership_ ABSL_GUARDED_BY(mu_);
  RoundCoordinator rounds_ ABSL_GUARDED_BY(mu_);
  // The upload in flight, cancelled when its uploader stalls.
  ServerCall* upload_call_ ABSL_GUARDED_BY(mu_) = nullptr;
  // What the uploader's Join said of its replica (none for the initial
  // parameters); its upload must match.
  struct ReplicaClaim {
    int rank;
    int64_t round;
    std::string checksum;
  };
  std::optional<ReplicaClaim> replica_claim_ ABSL_GUARDED_BY(mu_);
  TrafficCounts traffic_ ABSL_GUARDED_BY(mu_);
};

}  // namespace effadam

#endif  // EFFADAM_SERVER_PARAMETER_SERVER_H_
