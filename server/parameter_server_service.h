#ifndef EFFADAM_SERVER_PARAMETER_SERVER_SERVICE_H_
#define EFFADAM_SERVER_PARAMETER_SERVER_SERVICE_H_

#include <cstddef>
#include <cstdint>
#include <deque>
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
#include "common/compression_flags.h"
#include "common/shard_plan.h"
#include "common/tensor_layout.h"
#include "common/update_codec.h"
#include "effadam/v1/parameter_server.grpc.pb.h"
#include "server/checkpoint.h"
#include "server/round_engine.h"
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
};

// What the server has done so far; a consistent snapshot.
struct ServerSummary {
  int64_t round = 1;  // the round being collected
  int64_t rounds_closed = 0;
  // Of rounds_closed by this process: closed with fewer than N updates, and
  // dropped because their average overflowed.
  int64_t short_rounds = 0;
  int64_t dropped_rounds = 0;
  // The round a restored checkpoint resumed at; 0 for a fresh start.
  int64_t resumed_at_round = 0;
  int live_workers = 0;
  int64_t num_elements = 0;  // 0 until the first Join fixes the layout
  // Codec payload bytes, counted as effadam-sim counts them.
  int64_t bytes_worker_to_server = 0;
  int64_t bytes_server_to_worker = 0;
  int64_t bytes_join = 0;  // UploadParams and FetchParams
  int64_t fp32_worker_to_server = 0;
  int64_t fp32_server_to_worker = 0;
  // What went over the wire: the serialized sizes (ByteSizeLong) of every
  // WorkerMessage the server read, every ServerMessage it wrote, and every
  // ParamsChunk of UploadParams and FetchParams, rejected ones included.
  // gRPC's 5-byte message prefix and HTTP/2 framing are not counted.
  int64_t wire_worker_to_server = 0;
  int64_t wire_server_to_worker = 0;
  int64_t wire_join = 0;
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

  int64_t fp32_equivalent_bytes() const {
    return fp32_worker_to_server + fp32_server_to_worker;
  }
  // fp32 bytes over actual round bytes; 0 before any traffic.
  double compression_ratio() const;
};

// The effadam.v1.ParameterServer gRPC service (synchronous API) with the
// semantics of docs/protocol.md: membership (Join, ranks, the live set),
// the initial parameters (UploadParams, FetchParams) and synchronous rounds
// over one Train stream per worker. It validates and translates messages
// and owns the waiting; the math is RoundEngine's. A rejected message ends
// its call with the code docs/protocol.md names and a message saying what
// was wrong, and leaves x and E unchanged.
//
// A round closes when all N ranks submitted, when every rank that did not
// has departed (its stream ended; ranks that never joined are waited for),
// or round_timeout after its first update. An update that arrives after its
// round closed is checked but not averaged, and its stream is sent that
// round's delta, so the worker stays in step; the last few deltas are kept
// for this. Byte counts are the codec payloads, as effadam-sim counts them,
// and the serialized messages that carried them (wire bytes).
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
  // Where a rank is in its life. kDeparted differs from kFree in one way:
  // a round does not wait for a departed rank.
  enum class Phase { kFree, kJoined, kTraining, kDeparted };
  struct RankState {
    Phase phase = Phase::kFree;
    absl::Time last_seen;  // Join, and the end of its Upload/Fetch calls
    int active_calls = 0;  // UploadParams/FetchParams in flight
    bool expired = false;  // departed by ExpireIdleJoinsLocked, not by leaving
  };
  // A closed round's delta, shared by the streams that send it.
  struct ClosedRound {
    int64_t round = 0;
    std::shared_ptr<const std::string> delta;
    int contributors = 0;
  };

  explicit ParameterServerService(const ServerOptions& options);

  // The worker and server codecs of this server's shard of `layout`;
  // InvalidArgument when the codecs refuse the layout or it has fewer
  // segments than there are shards.
  struct Codecs {
    std::shared_ptr<const UpdateCodec> worker, server;
    ShardRange range;
  };
  absl::StatusOr<Codecs> CodecsFor(const TensorLayout& layout) const;
  RoundEngineOptions EngineOptions() const;

  bool IsLive(int rank) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int LiveCountLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops joined ranks that stayed without a Train stream (and without an
  // Upload/Fetch call) for max(round_timeout, 60 s), so a worker that died
  // between Join and Train does not hold its rank forever.
  void ExpireIdleJoinsLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Before the initial parameters exist and with nobody live, the server is
  // empty again and the next Join may bring another layout.
  void ResetIfEmptyLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes `rank` out of the live set; a round may now close without it.
  void Leave(int rank, absl::string_view why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  ServerSummary SummaryLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::optional<Checkpoint> SnapshotLocked() const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Reads the upload that starts with *chunk into *x; adds the serialized
  // size of every chunk read to *wire_bytes, also when it fails.
  absl::Status ReadParams(grpc::ServerReader<v1::ParamsChunk>* reader, int rank,
                          v1::ParamsChunk* chunk, std::vector<float>* x,
                          int64_t* wire_bytes) const;

  // OK, or UNAUTHENTICATED (counted as a rejection) for a call without the
  // token; the first thing every RPC handler does.
  grpc::Status Authenticate(const grpc::ServerContext& context) const;
  // Tells the observer about a rejection and returns `status`, so that a
  // refusal is one expression: `return Reject(Rejection::kX, Error(...));`.
  absl::Status Reject(Rejection why, absl::Status status) const;
  // The byte counts of the summary; the observer hears of every change.
  void CountWireLocked(TrafficDirection direction, int64_t bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CountWire(TrafficDirection direction, int64_t bytes)
      ABSL_LOCKS_EXCLUDED(mu_);
  void CountPayloadLocked(TrafficDirection direction, int64_t payload_bytes,
                          int64_t fp32_bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // The Train stream of `rank` after its first message `msg` was accepted.
  absl::Status RunTrain(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::ServerMessage, v1::WorkerMessage>* stream,
      int rank, v1::WorkerMessage* msg);
  // Whether an update of `rank` for `round` can be taken now (the round
  // being collected, or one that closed without it and whose delta is
  // still kept).
  absl::Status CheckRoundLocked(int rank, int64_t round) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes a complete update, then waits until `round` is closed; returns
  // its delta.
  absl::StatusOr<ClosedRound> AcceptAndWait(grpc::ServerContext* context,
                                            const UpdateCodec& codec, int rank,
                                            int64_t round, std::string update,
                                            float loss);
  // Writes `closed`'s delta in chunks and counts it as delivered.
  absl::Status SendDelta(
      grpc::ServerReaderWriter<v1::ServerMessage, v1::WorkerMessage>* stream,
      const ClosedRound& closed);
  const ClosedRound* FindClosedLocked(int64_t round) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Closes the round being collected if all N ranks submitted, if every
  // rank that did not has departed, or if round_timeout has passed since
  // its first update.
  void MaybeCloseRoundLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool DoneLocked(absl::Time now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ServerOptions options_;

  mutable absl::Mutex mu_;
  // Signalled on every change a waiter may care about: a round closed, the
  // parameters arrived, a rank left, shutdown.
  absl::CondVar changed_;

  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status fatal_ ABSL_GUARDED_BY(mu_);

  // Fixed by the first successful Join (until the server is empty again).
  std::optional<TensorLayout> layout_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const UpdateCodec> worker_codec_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const UpdateCodec> server_codec_ ABSL_GUARDED_BY(mu_);
  ShardRange shard_range_ ABSL_GUARDED_BY(mu_);
  // Created by the successful UploadParams; never replaced after that.
  std::unique_ptr<RoundEngine> engine_ ABSL_GUARDED_BY(mu_);
  int uploader_ ABSL_GUARDED_BY(mu_) = -1;  // rank told to upload
  bool upload_active_ ABSL_GUARDED_BY(mu_) = false;

  std::vector<RankState> ranks_ ABSL_GUARDED_BY(mu_);
  int open_streams_ ABSL_GUARDED_BY(mu_) = 0;

  absl::Time round_opened_at_ ABSL_GUARDED_BY(mu_);  // first update's arrival
  double loss_sum_ ABSL_GUARDED_BY(mu_) = 0;
  int loss_count_ ABSL_GUARDED_BY(mu_) = 0;
  double last_loss_ ABSL_GUARDED_BY(mu_);
  // The most recent closed rounds, oldest first; a worker whose update
  // arrives after its round closed is still sent that round's delta.
  std::deque<ClosedRound> closed_ ABSL_GUARDED_BY(mu_);
  int64_t rounds_closed_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t short_rounds_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t resumed_at_round_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<Checkpoint> due_checkpoint_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Time> final_closed_at_ ABSL_GUARDED_BY(mu_);

  int64_t bytes_worker_to_server_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t bytes_server_to_worker_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t bytes_join_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t fp32_worker_to_server_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t fp32_server_to_worker_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t wire_worker_to_server_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t wire_server_to_worker_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t wire_join_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace effadam

#endif  // EFFADAM_SERVER_PARAMETER_SERVER_SERVICE_H_
