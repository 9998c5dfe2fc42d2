#ifndef EFFADAM_SERVER_PARAMETER_SERVER_SERVICE_H_
#define EFFADAM_SERVER_PARAMETER_SERVER_SERVICE_H_

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
#include "effadam/v1/parameter_server.grpc.pb.h"
#include "server/checkpoint.h"
#include "server/chunk_streams.h"
#include "server/membership.h"
#include "server/round_coordinator.h"
#include "server/server_observer.h"
#include "server/token_authenticator.h"

namespace effadam {

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
  // Bound on the payload of every chunk, in both directions.
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
  // null for none. Not owned; must outlive the service.
  ServerObserver* observer = nullptr;
  // Checks the token of every effadam.v1 call before anything else
  // happens; null: no token required. Not owned; must outlive the service.
  const TokenAuthenticator* authenticator = nullptr;
  // Where time comes from; null: the system clock. Not owned.
  const Clock* clock = nullptr;
  // Threads the round engine closes a round on (RoundEngineOptions).
  int threads = AvailableCores();
  // Where the service's few log lines go (joins, departures, rejected
  // calls, dropped rounds); null: nowhere. Not owned; must outlive the
  // service.
  Logger* logger = nullptr;
  // Keeps the deltas of the last closed rounds for a restart (the daemon
  // opens it in --checkpoint_dir); null: none kept. Not owned; must
  // outlive the service.
  DeltaLog* delta_log = nullptr;
};

// Longest status message a refused call carries; a longer one is cut and
// says so (the server log has it whole). Well under gRPC's 8 KiB metadata
// limit, past which the client would see RESOURCE_EXHAUSTED instead.
inline constexpr size_t kMaxStatusMessageBytes = 1024;

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
  int live_workers = 0;
  int64_t num_elements = 0;  // 0 until the first Join fixes the layout
  // Payload bytes counted as effadam-sim counts them, and the serialized
  // sizes of every WorkerMessage the server read, every ServerMessage it
  // wrote, and every ParamsChunk of UploadParams and FetchParams, rejected
  // ones included.
  TrafficCounts traffic;
  // Mean loss the contributors reported for the last closed round; NaN
  // before the first.
  double train_loss = 0;
  // ParamsChecksum of x; empty before the initial parameters exist.
  std::string params_checksum;
  // ParamsChecksum of the server's error memory E, likewise; computed by
  // Summary() only (it reads all of E), so the Status RPC leaves it empty.
  std::string error_checksum;
  // Not OK once the round engine failed to close a round (the server can
  // make no further progress).
  absl::Status error;
};

// The effadam.v1.ParameterServer gRPC service (synchronous API) with the
// semantics of docs/protocol.md. It translates and validates messages,
// owns the waiting and the byte counts, and leaves the rest to three
// parts, each under its one lock: Membership (ranks, the uploader, idle
// expiry), RoundCoordinator (when rounds close, the kept deltas,
// checkpoints) and, through it, RoundEngine (the math). A rejected message
// ends its call with the code docs/protocol.md names and a message saying
// what was wrong (at most kMaxStatusMessageBytes), is counted once and
// logged (rate-limited) with the peer, and leaves x and E unchanged.
//
// Every method is thread-safe; gRPC runs each call on its own thread.
class ParameterServerService final
    : public effadam::v1::ParameterServer::Service {
 public:
  // InvalidArgument for options that cannot work (no workers, a chunk
  // smaller than one float).
  static absl::StatusOr<std::unique_ptr<ParameterServerService>> Create(
      const ServerOptions& options);
  ~ParameterServerService() override;

  grpc::Status Join(grpc::ServerContext* context,
                    const v1::JoinRequest* request,
                    v1::JoinResponse* response) override;
  grpc::Status UploadParams(grpc::ServerContext* context,
                            grpc::ServerReader<v1::ParamsChunk>* reader,
                            v1::UploadParamsResponse* response) override;
  grpc::Status FetchParams(
      grpc::ServerContext* context, const v1::FetchParamsRequest* request,
      grpc::ServerWriter<v1::ParamsChunk>* writer) override;
  grpc::Status Train(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::ServerMessage, v1::WorkerMessage>* stream)
      override;
  grpc::Status Status(grpc::ServerContext* context,
                      const v1::StatusRequest* request,
                      v1::StatusResponse* response) override;

  // Waits up to `timeout` for training to be over: round --rounds closed and
  // its delta went out on every Train stream (or round_timeout passed since
  // it closed, so a stuck worker cannot hold the server), the round engine
  // failed, or Shutdown() was called. True when it is over.
  bool WaitUntilDone(absl::Duration timeout);

  // Wakes every call that waits (for a round, for the parameters) and makes
  // it and every later Join, UploadParams, FetchParams and Train fail with
  // Unavailable; Status and Summary keep working. Idempotent. Calls blocked
  // reading from a client end when the grpc::Server shuts down.
  void Shutdown();

  ServerSummary Summary() const;

  // Before the server serves: goes on from `checkpoint` as if the rounds up
  // to its round had run here. FailedPrecondition when its compression
  // settings differ from the options' (naming each field), InvalidArgument
  // when its layout or state cannot be used, and on a second call.
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

  explicit ParameterServerService(const ServerOptions& options);

  // The layout with this shard's codecs (MakeShardCodecs).
  absl::StatusOr<Model> ModelFor(TensorLayout layout) const;
  RoundEngineOptions EngineOptions() const;

  // Every RPC ends here: counts and logs a rejection once, cuts a long
  // message, and translates the status.
  grpc::Status Finish(const grpc::ServerContext& context, const char* rpc,
                      int rank, const absl::Status& status) const;
  // OK, or UNAUTHENTICATED for a call without the token.
  absl::Status Authenticate(const grpc::ServerContext& context) const;
  // Unavailable while shutting down, the engine's failure once it failed.
  absl::Status ServingLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Status DoJoin(const v1::JoinRequest& request,
                      v1::JoinResponse* response);
  absl::Status DoUploadParams(grpc::ServerContext* context,
                              grpc::ServerReader<v1::ParamsChunk>* reader,
                              int* rank);
  absl::Status DoFetchParams(grpc::ServerContext* context,
                             const v1::FetchParamsRequest& request,
                             grpc::ServerWriter<v1::ParamsChunk>* writer);
  absl::Status DoTrain(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::ServerMessage, v1::WorkerMessage>* stream,
      int* rank);

  // Reads the upload that starts with *chunk into *x (x's size is this
  // shard's element count; memory grows with what arrives); every chunk
  // must carry `round`. Adds the serialized size of every chunk read to
  // *wire_bytes, also when it fails.
  absl::Status ReadParams(grpc::ServerReader<v1::ParamsChunk>* reader, int rank,
                          int64_t round, size_t num_elements,
                          v1::ParamsChunk* chunk, std::vector<float>* x,
                          int64_t* wire_bytes) ABSL_LOCKS_EXCLUDED(mu_);
  // Rounds start from an upload of `rank`: the initial parameters (round
  // 0), or a replica at `round` (a fresh server goes on from it; a started
  // one takes it if it is still newer than x).
  absl::Status StartFromUpload(int rank, int64_t round, std::vector<float> x)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The Train stream of `rank` after its first message `msg` was accepted.
  absl::Status RunTrain(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::ServerMessage, v1::WorkerMessage>* stream,
      int rank, v1::WorkerMessage* msg);
  // Takes a complete update, then waits until `round` is closed; returns
  // its delta.
  absl::StatusOr<ClosedRound> AcceptAndWait(
      grpc::ServerContext* context, int rank, int64_t round,
      std::shared_ptr<const std::string> update, float loss)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Writes `closed`'s delta in chunks and counts it as delivered.
  absl::Status SendDelta(TrainStream* stream, const ClosedRound& closed)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Applies the timing rules that need no event: idle joins, a stalled
  // uploader, the round timeout.
  void TickLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes `rank` out of the live set; a round may now close without it.
  void LeaveLocked(int rank, absl::string_view why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Applies the deltas the log keeps from state->round on (a restart: x
  // from a checkpoint or a replica); the number of rounds applied.
  int64_t ReplayLoggedDeltas(const Model& model, RoundEngineState* state);
  // The client of rank's FetchParams went away: a joined rank without a
  // stream leaves at once (Membership::ClientWentAway).
  void FetchClientGoneLocked(int rank) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Before the initial parameters exist and with nobody live, the server is
  // empty again and the next Join may bring another layout.
  void ResetIfEmptyLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Waits on changed_ until `deadline` (clock time), at most one poll.
  void WaitLocked(absl::Time deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CountWireLocked(TrafficDirection direction, int64_t bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CountWire(TrafficDirection direction, int64_t bytes)
      ABSL_LOCKS_EXCLUDED(mu_);
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
  // Rejected calls logged: a flood of them must not fill the disk.
  mutable LogRateLimiter rejection_log_;

  mutable absl::Mutex mu_;
  // Signalled on every change a waiter may care about: a round closed, the
  // parameters arrived, a rank left, shutdown.
  absl::CondVar changed_;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<Model> model_ ABSL_GUARDED_BY(mu_);
  Membership membership_ ABSL_GUARDED_BY(mu_);
  RoundCoordinator rounds_ ABSL_GUARDED_BY(mu_);
  // The upload in flight, cancelled when its uploader stalls.
  grpc::ServerContext* upload_call_ ABSL_GUARDED_BY(mu_) = nullptr;
  // What the uploader's Join said of its replica (none for the initial
  // parameters); its upload must match.
  struct ReplicaClaim {
    int rank;
    int64_t round;
    std::string checksum;
  };
  std::optional<ReplicaClaim> replica_claim_ ABSL_GUARDED_BY(mu_);
  TrafficCounts traffic_ ABSL_GUARDED_BY(mu_);
  // The deltas' messages, cut once per round for every stream.
  DeltaMessages delta_messages_;
};

}  // namespace effadam

#endif  // EFFADAM_SERVER_PARAMETER_SERVER_SERVICE_H_
