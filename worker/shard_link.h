#ifndef EFFADAM_WORKER_SHARD_LINK_H_
#define EFFADAM_WORKER_SHARD_LINK_H_

#include <cstdint>
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
#include "transport/chunk_assembler.h"
#include "transport/grpc_security.h"
#include "common/logger.h"
#include "effadam/v1/parameter_server.pb.h"

namespace grpc {
class Channel;
class ClientContext;
class Status;
}  // namespace grpc

namespace effadam {

// What went over the wire for one worker: the serialized sizes
// (ByteSizeLong) of the protobuf messages it wrote and read, without gRPC's
// 5-byte message prefix and HTTP/2 framing. The server counts the same
// messages, so in a run without failures the workers' counts add up to the
// server's.
struct WireBytes {
  int64_t worker_to_server = 0;  // WorkerMessage written
  int64_t server_to_worker = 0;  // ServerMessage read
  int64_t join = 0;  // ParamsChunk written (UploadParams), read (FetchParams)
};

// The largest chunk a worker accepts from a server's JoinResponse: the
// server's --max_chunk_bytes allows up to 2^30.
inline constexpr int64_t kLargestServerChunkBytes = int64_t{1} << 30;

// One worker's connection to one parameter server (the whole model, or one
// shard of it): the protocol's calls on one channel, retried while the
// server is away (not listening yet, restarting, shutting down), and the
// Train stream. It moves and checks bytes and counts them; what they mean
// is WorkerClient's business.
//
// Not thread-safe, except Cancel(), which any thread may call at any time.
// Different links may be used from different threads at once.
class ShardLink {
 public:
  // Does not touch the network. `log` (not null, outlives the link) hears
  // of the failed attempts while Retry waits.
  ShardLink(std::string address, const ClientSecurity& security,
            const ClientKeepalive& keepalive, Logger* log);
  ~ShardLink();
  ShardLink(const ShardLink&) = delete;
  ShardLink& operator=(const ShardLink&) = delete;

  const std::string& address() const { return address_; }

  // Join, retried with backoff while the server is away, until `deadline`,
  // and while it says the rank is taken (ALREADY_EXISTS: the previous
  // process of this worker still holds it until the server sees its stream
  // end), until `rank_taken_deadline`. The server's refusals keep their code
  // and message.
  absl::StatusOr<v1::JoinResponse> Join(const v1::JoinRequest& request,
                                        absl::Time deadline,
                                        absl::Time rank_taken_deadline);
  // UploadParams of `x` in chunks of at most max_chunk_bytes, each naming
  // `round` (0 for the initial parameters, else a replica's round).
  absl::Status Upload(int rank, int64_t round, absl::Span<const float> x,
                      size_t max_chunk_bytes, absl::Time deadline);
  // FetchParams of `n` floats, retried while the server is away or has no
  // parameters yet; *round is the round the server is collecting.
  absl::StatusOr<std::vector<float>> Fetch(int rank, size_t n,
                                           size_t max_chunk_bytes,
                                           absl::Time deadline,
                                           int64_t* round);

  // Opens the Train stream (no deadline; Cancel ends it).
  absl::Status OpenStream();
  bool stream_open() const { return stream_ != nullptr; }
  // Sends `update` for `round` in chunks of max_chunk_bytes, then reads the
  // round's delta into `assembler` (sized for this server's delta) and
  // *contributors. A broken stream returns EndStream's status; a delta that
  // does not assemble cancels the stream and is InternalError.
  absl::Status Exchange(int rank, int64_t round, absl::string_view update,
                        float loss, size_t max_chunk_bytes,
                        ChunkAssembler* assembler, int* contributors);
  // Closes this side and waits up to `timeout` for the server's status:
  // OK when it ended the stream cleanly (DeadlineExceeded after the
  // timeout). A link without a stream is OK.
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
  // sleeping 100 ms, 200 ms, ... up to 2 s in between. When the next
  // attempt would start after `deadline`, returns the last status with
  // "`late`: " before its message (unchanged if `late` is empty); Cancelled
  // once Cancel() has been called. The first failed attempt and then one
  // every 10 s are logged (at most 6 lines a minute), so that an operator
  // sees what a waiting worker waits for.
  absl::Status Retry(absl::Time deadline, absl::string_view late,
                     absl::FunctionRef<absl::Status()> attempt,
                     absl::FunctionRef<bool(const absl::Status&)> retry);

  const WireBytes& wire() const { return wire_; }

 private:
  struct Stream;

  std::unique_ptr<grpc::ClientContext> NewContext(absl::Time deadline);
  void ReleaseContext();
  // The Train stream's final status after a failed Read or Write; resets
  // the stream. OK (the server ended training) sets server_finished().
  absl::Status EndStream(absl::string_view during);

  const std::string address_;
  const ClientSecurity security_;
  Logger* const log_;
  std::shared_ptr<grpc::Channel> channel_;

  mutable absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* active_ ABSL_GUARDED_BY(mu_) = nullptr;

  std::unique_ptr<Stream> stream_;
  bool server_finished_ = false;
  WireBytes wire_;
};

}  // namespace effadam

#endif  // EFFADAM_WORKER_SHARD_LINK_H_
