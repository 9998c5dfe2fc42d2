#ifndef EFFADAM_WORKER_SHARD_LINK_H_
#define EFFADAM_WORKER_SHARD_LINK_H_

// ShardLink: one worker's connection to one parameter server (the whole
// model, or one shard of it). It promises the protocol's calls on one
// channel and one stub, made once: Join, UploadParams and FetchParams
// retried while the server is away (not listening yet, restarting,
// shutting down), and the Train stream. It builds, moves and checks the
// protocol's messages and counts their bytes; what the bytes mean is
// WorkerClient's business. Its interface holds no protobuf or gRPC type:
// requests and replies are the plain structs below.
//
// Time: every deadline is a time of the injected Clock, and so is the
// backoff between attempts (RetryBackoff); a gRPC call gets the time left
// until its deadline as a relative deadline.
//
// Thread-safety: not thread-safe, except Cancel(), which any thread may
// call at any time. Different links may be used from different threads at
// once (WorkerClient runs one round's exchanges on the S links in
// parallel).

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/clock.h"
#include "common/logger.h"
#include "common/traffic.h"
#include "core/compression_config.h"
#include "core/tensor_layout.h"
#include "transport/chunk_assembler.h"
#include "transport/grpc_security.h"

namespace grpc {
class ClientContext;
}  // namespace grpc

namespace effadam {

// The largest chunk a worker accepts from a server's JoinResponse: the
// server's --max_chunk_bytes allows up to 2^30.
inline constexpr int64_t kLargestServerChunkBytes = int64_t{1} << 30;

// What a worker claims in a Join besides its layout and settings.
struct JoinClaim {
  int rank = -1;  // -1: the lowest free one
  // Once training: the round this worker's replica of the shard's part of
  // x is at (every delta before it applied) and its ParamsChecksum, which
  // a restarted server may ask for; 0 and empty before.
  int64_t replica_round = 0;
  std::string replica_checksum;
};

// The server's answer to a Join (effadam.v1.JoinResponse). Its compression
// settings are checked by ShardLink::Join to equal the worker's.
struct JoinReply {
  int rank = -1;
  int expected_workers = 0;
  int64_t num_elements = 0;
  int64_t max_chunk_bytes = 0;  // in [4, kLargestServerChunkBytes]
  // A server without sharding says 0 shards; its shard holds everything.
  int num_shards = 0;
  int shard = 0;
  int64_t shard_begin = 0;
  int64_t shard_size = 0;
  bool upload_initial_params = false;
  int64_t round = 0;  // the round the server is collecting
};

struct ShardLinkOptions {
  std::string address;  // host:port
  ClientSecurity security;
  ClientKeepalive keepalive;
  // Hears of the failed attempts while Retry waits. Not null; outlives the
  // link.
  Logger* log = &Logger::Discard();
  // Where deadlines and the backoff's time come from; outlives the link.
  const Clock* clock = &Clock::Real();
};

class ShardLink {
 public:
  // Does not touch the network.
  explicit ShardLink(ShardLinkOptions options);
  ~ShardLink();
  ShardLink(const ShardLink&) = delete;
  ShardLink& operator=(const ShardLink&) = delete;

  const std::string& address() const { return options_.address; }

  // Join with `layout`, `compression` and `claim`, retried with backoff
  // while the server is away, until `deadline`, and while it says the rank
  // is taken (ALREADY_EXISTS: the previous process of this worker still
  // holds it until the server sees its stream end), until
  // `rank_taken_deadline`. The server's refusals keep their code and
  // message. A reply whose max_chunk_bytes this worker does not accept is
  // FailedPrecondition; one naming other compression settings than
  // `compression` (the server should have refused) is Internal.
  absl::StatusOr<JoinReply> Join(const TensorLayout& layout,
                                 const CompressionConfig& compression,
                                 const JoinClaim& claim, absl::Time deadline,
                                 absl::Time rank_taken_deadline);
  // UploadParams of `x` in chunks of at most max_chunk_bytes, each naming
  // `round` (0 for the initial parameters, else a replica's round).
  absl::Status Upload(int rank, int64_t round, absl::Span<const float> x,
                      size_t max_chunk_bytes, absl::Time deadline);
  // FetchParams of out.size() floats into `out`, retried while the server
  // is away or has no parameters yet; *round is the round the server is
  // collecting. `out` is written only once every chunk has arrived and
  // checked out (it is the caller's replica, and an error leaves it as it
  // was), and no model-sized vector is made on the way: a worker's peak
  // memory at start is its replica plus the chunks' buffer.
  absl::Status Fetch(int rank, absl::Span<float> out, size_t max_chunk_bytes,
                     absl::Time deadline, int64_t* round);

  // Opens the Train stream (no deadline; Cancel ends it).
  absl::Status OpenStream();
  bool stream_open() const;
  // The deltas of the rounds a late update missed (docs/protocol.md,
  // "Train"): the server took the update into the round it was collecting
  // and sends these first, oldest first, then that round's delta.
  struct EarlierDeltas {
    size_t count = 0;  // of this Exchange; the vectors keep their memory
    std::vector<std::string> bytes;  // [i < count]: empty when dropped
    std::vector<bool> dropped;       // [i < count]: that round was dropped
  };
  // The most rounds a late update may have missed: the server keeps 4
  // deltas; a bound on what a broken server can make this worker hold.
  static constexpr int64_t kMostMissedRounds = 16;
  // Sends `update` for `round` in chunks of max_chunk_bytes while it reads
  // the round's delta, which the server sends segment by segment as the
  // round closes, into `assembler` (sized for this server's delta; a
  // RESTART starts it again), until the server's COMMIT (the delta is
  // complete: apply it) or DROP (*dropped: the round was dropped, x stays),
  // with *contributors. When the server took the update into a later
  // round T, the deltas of rounds `round` .. T - 1 are in *earlier and the
  // assembler holds T's: apply them all, in order. A broken stream returns
  // EndStream's status; a delta
  // that does not assemble, or an end before it is complete, cancels the
  // stream and is InternalError. Runs a second thread for the reading.
  //
  // With `await_bytes` the update is still being written while it is sent
  // (WorkerClient's bucketed step): before the chunk that ends at byte n
  // goes out, await_bytes(n, &loss) blocks until the first n bytes of
  // `update` are final (for the last chunk, the loss too, which it
  // writes); false: they never will be (the step was abandoned), and
  // Exchange cancels the stream and returns Cancelled.
  using AwaitUpdateBytes = std::function<bool(size_t n, float* loss)>;
  absl::Status Exchange(int rank, int64_t round, absl::string_view update,
                        float loss, size_t max_chunk_bytes,
                        ChunkAssembler* assembler, int* contributors,
                        bool* dropped, EarlierDeltas* earlier,
                        const AwaitUpdateBytes& await_bytes = nullptr);
  // Closes this side and waits up to `timeout` (real time: it bounds a
  // wait on the network) for the server's status: OK when it ended the
  // stream cleanly (DeadlineExceeded after the timeout). A link without a
  // stream is OK.
  absl::Status Finish(absl::Duration timeout);
  // Cancels the stream; the server sees this worker leave at once.
  void Abandon();
  // True when the last stream ended with OK, or MarkServerFinished() was
  // called: the server finished training.
  bool server_finished() const { return server_finished_; }
  // The server refused a Join because its run had ended (OUT_OF_RANGE)
  // while this worker was away: there is no stream to end.
  void MarkServerFinished() { server_finished_ = true; }

  // Makes the current and every later call fail with Cancelled.
  void Cancel();
  bool cancelled() const;
  // A call that ended with `s` found the server away, not refusing: worth
  // retrying. (A server shutting down cancels its calls; a Cancel() here is
  // this worker's own doing.)
  bool ServerAway(const absl::Status& s) const;
  // Calls `attempt` until it returns OK or a status `retry` rejects,
  // waiting between attempts as RetryBackoff says (100 ms, 200 ms, ... up
  // to 2 s of the Clock; the wait polls the clock at least every 100 ms of
  // real time), or, after an attempt that found the channel unconnected,
  // until the channel connects if that is sooner (a wait on the channel,
  // which drives its connection attempt, in slices of 50 ms of real time;
  // Cancel() is seen within one). When the next attempt would start after
  // `deadline`, returns the last status with "`late`: " before its message
  // (unchanged if `late` is empty); Cancelled once Cancel() has been called.
  // The failures RetryBackoff::ShouldLog picks are logged.
  absl::Status Retry(absl::Time deadline, absl::string_view late,
                     absl::FunctionRef<absl::Status()> attempt,
                     absl::FunctionRef<bool(const absl::Status&)> retry);

  // The serialized sizes (ByteSizeLong) of the messages this link wrote
  // and read, in each direction's `wire` field (WorkerMessage up,
  // ServerMessage down, ParamsChunk join); the other fields are 0.
  const TrafficCounts& wire() const { return wire_; }

 private:
  // The channel, the stub and the open Train stream: gRPC and protobuf
  // stay in shard_link.cc.
  struct Rpc;

  // A context for a call until `deadline` (a Clock time; InfiniteFuture:
  // none), registered for Cancel(); null once cancelled.
  std::unique_ptr<grpc::ClientContext> NewContext(absl::Time deadline);
  void ReleaseContext();
  // Waits until the Clock reads `t`, or with `or_connected` until the
  // channel is connected if that is sooner; false when cancelled meanwhile.
  bool WaitUntil(absl::Time t, bool or_connected);
  // Whether the channel is connected (READY); an idle one starts
  // connecting.
  bool ChannelConnected();
  // Waits (real time) up to `at_most` for the channel to connect, driving
  // its connection attempt meanwhile; whether it is connected.
  bool AwaitConnected(absl::Duration at_most);
  // Reads (and counts) what the server still sends on the Train stream,
  // until it ends.
  void DrainStream();
  // The Train stream's final status after a failed Read or Write; resets
  // the stream. OK (the server ended training) sets server_finished().
  absl::Status EndStream(absl::string_view during);
  int64_t& wire_bytes(TrafficDirection d) { return wire_[d].wire; }

  const ShardLinkOptions options_;
  const Clock& clock_;
  std::unique_ptr<Rpc> rpc_;

  mutable absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* active_ ABSL_GUARDED_BY(mu_) = nullptr;

  bool server_finished_ = false;
  TrafficCounts wire_;
};

}  // namespace effadam

#endif  // EFFADAM_WORKER_SHARD_LINK_H_
