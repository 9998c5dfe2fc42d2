#ifndef EFFADAM_WORKER_WORKER_CLIENT_H_
#define EFFADAM_WORKER_WORKER_CLIENT_H_

// WorkerClient: one worker of an effadam cluster. It joins the parameter
// servers (one, or S shards of the model), keeps the worker's replica of x
// and its optimizer state (WorkerOptimizer), and per round turns a gradient
// into the compressed update it sends, then applies the servers' compressed
// delta. The math is WorkerOptimizer's; this class cuts the bytes per shard
// and counts them (traffic()), and ShardLink moves them. Its interface
// holds no protobuf or gRPC type.
//
// Threads: not thread-safe, except Cancel(), which any thread may call at
// any time. With S shards, Start makes S - 1 threads (LinkThreads) that
// live until the client is destroyed: every Step runs shard k's exchange
// on thread k while shard 0's runs on the caller's thread, and returns
// when all are done. A bucketed step (BeginStep .. EndStep) runs them from
// a thread of its own instead, so that the caller may go on computing
// gradients; it lives until EndStep. The destructor abandons an open
// bucketed step, cancels streams still open and joins the threads.
//
// Time: connect_timeout, reconnect_timeout and the retries' backoff are
// read on the injected Clock (WorkerClientOptions::clock); finish_timeout
// bounds a wait on the network and is real time.
//
// The rank (and so the data shard) is only known after Join, but the
// layout must be sent with it, so start-up has two steps. Connect() does
// both, and Run() does the loop. In full (tests/worker_client_test.cc
// compiles and runs it):
//
//   absl::Status Train(const WorkerClientOptions& options,
//                      const TensorLayout& layout,
//                      absl::Span<const float> initial_params,
//                      int64_t last_round) {
//     WorkerClient client(options);
//     // Learns rank() and num_workers().
//     if (absl::Status s = client.Join(layout); !s.ok()) return s;
//     // ... the data of client.rank() of client.num_workers() ...
//     // Uploads initial_params if asked, fetches x.
//     if (absl::Status s = client.Start(initial_params); !s.ok()) return s;
//     std::vector<float> grad(client.params().size());
//     while (client.round() <= last_round) {
//       const float loss =
//           ComputeGradient(client.params(), absl::MakeSpan(grad));
//       const absl::Status s = client.Step(grad, loss);
//       if (client.server_finished()) break;  // its --rounds passed
//       if (!s.ok()) return s;
//     }
//     return client.Finish();
//   }

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

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
#include "core/shard_plan.h"
#include "core/tensor_layout.h"
#include "core/worker_optimizer.h"
#include "transport/chunk_assembler.h"
#include "transport/grpc_security.h"
#include "worker/link_threads.h"
#include "worker/shard_link.h"

namespace effadam {

struct WorkerClientOptions {
  // host:port of the parameter server; for a model sharded over S servers
  // (docs/sharding.md) their S addresses in shard order, comma-separated,
  // or one address with "{shard}" where the shard number goes (with
  // num_shards), e.g. "effadam-server-{shard}.effadam-server:50051".
  std::string server = "127.0.0.1:50051";
  // With a "{shard}" pattern: the number of shards. Otherwise 0, or the
  // number of addresses (a check).
  int num_shards = 0;
  // The rank to claim, or -1 for the lowest free one.
  int rank = -1;
  // Must equal the server's settings field by field (Join checks it).
  CompressionConfig compression;
  AdamOptions adam;
  // Seeds stochastic rounding (qNs); the same seed as effadam-sim gives the
  // same bits.
  uint64_t seed = 1;
  // Threads of the optimizer's step and delta (WorkerOptimizer::Options).
  int threads = AvailableCores();
  // Budget of Join, and again of Start: waiting for a server that is not
  // listening yet or has no parameters yet (retried with exponential backoff
  // from 100 ms to 2 s), the upload and the fetch of x.
  absl::Duration connect_timeout = absl::Seconds(60);
  // How long Finish waits for the server to end the stream.
  absl::Duration finish_timeout = absl::Seconds(10);
  // When the Train stream breaks (the server restarts, the network goes) or
  // the server says this worker fell too far behind, Step joins again with
  // the same rank, fetches x and goes on; this bounds the attempts (backoff
  // 100 ms .. 2 s). Zero: Step fails instead.
  absl::Duration reconnect_timeout = absl::Minutes(5);
  // TLS and the token (LoadClientSecurity, or ClientSecurityFromFlags);
  // the default is plaintext without a token.
  ClientSecurity security;
  // Pings while a call is open (transport/grpc_security.h).
  ClientKeepalive keepalive;
  // Hears of the attempts while Join or a reconnect waits for a server
  // (one line at first, then one every 10 s); null: nowhere. Must outlive
  // the client.
  Logger* logger = nullptr;
  // Where the timeouts above and the retries' backoff read the time; null:
  // the system clock. Must outlive the client.
  const Clock* clock = nullptr;
};

// WorkerClient (the promise, the threads and an example: top of this file).
class WorkerClient {
 public:
  // Does not touch the network.
  explicit WorkerClient(WorkerClientOptions options);
  ~WorkerClient();
  WorkerClient(const WorkerClient&) = delete;
  WorkerClient& operator=(const WorkerClient&) = delete;

  // Join + Start for callers whose data does not depend on the rank.
  static absl::StatusOr<std::unique_ptr<WorkerClient>> Connect(
      const WorkerClientOptions& options, const TensorLayout& layout,
      absl::Span<const float> initial_params);

  // Announces the layout and compression settings and gets a rank. The
  // server's refusals keep their code and message (e.g. FailedPrecondition
  // naming a codec that differs from the server's). A rank >= 0 that the
  // server says is taken (ALREADY_EXISTS: a previous process of this
  // worker, e.g. a restarted pod, whose stream the server has not yet seen
  // end) is asked for again with backoff for up to reconnect_timeout.
  absl::Status Join(const TensorLayout& layout);

  // After Join: uploads `initial_params` if the server asks this worker for
  // them (it is then the first worker; otherwise they are not read), fetches
  // the server's current x, which becomes the replica and the optimizer's
  // x0, and opens the Train stream.
  absl::Status Start(absl::Span<const float> initial_params);

  // One round: an Adam step on `grad` (the gradient at params()), the
  // encoded update sent in chunks, the round's delta received and applied.
  // `loss` is reported to the server. A bad gradient (size, NaN/Inf) is
  // InvalidArgument and changes nothing. OutOfRange when the server has
  // ended training (its --rounds passed); any other error ends the stream.
  //
  // If the stream broke or this worker lagged (see reconnect_timeout), Step
  // resynchronizes instead and returns OK without a delta of its own:
  // params() is then the server's x and round() the server's round, which
  // after a server restart from a checkpoint may be an earlier one. m, v and
  // the error memory are kept.
  absl::Status Step(absl::Span<const float> grad, float loss);

  // Step in parts, for a gradient that arrives range by range while it is
  // computed (a backward pass; docs/design.md, "The bucketed upload"):
  // BeginStep(), then AddGradient for disjoint ranges of the layout's
  // elements, in any order, that together cover it, then EndStep(loss).
  // As soon as the gradient of one of the optimizer's update parts (runs of
  // codec segments) is all in, AddGradient runs that part's Adam step,
  // error feedback and encoding on the calling thread, and each chunk of
  // the update goes on its shard's Train stream, from the link threads
  // (BeginStep starts them on a thread of the round), once its bytes are
  // final, while the caller computes later gradients; the last chunk
  // waits for EndStep's loss. EndStep waits for the round's delta and
  // applies it as Step does, with Step's returns. For the same gradient
  // the update's bytes, m, v, e and x are Step's, bit for bit.
  //
  // AddGradient refuses a range outside the layout, overlapping one given
  // before, or with NaN/Inf (InvalidArgument) and keeps nothing of it; the
  // step stays open. But what went out cannot be taken back: an EndStep
  // while some gradient is missing ends this worker's training (the
  // streams are cancelled, the servers go on without it) with
  // InvalidArgument naming the first missing element, as does any error
  // of the encoding. Step, BeginStep and Finish during a bucketed step are
  // FailedPrecondition (Finish: the step is abandoned first).
  absl::Status BeginStep();
  absl::Status AddGradient(size_t begin, absl::Span<const float> values);
  absl::Status EndStep(float loss);
  // Between BeginStep and EndStep.
  bool step_open() const { return step_thread_.joinable(); }

  // Steps until round `last_round` is applied or the server ends training,
  // then Finish()es. `gradient` writes the gradient at `params` into `grad`
  // and returns the mini-batch loss; its error stops the run as is.
  absl::Status Run(
      int64_t last_round,
      const std::function<absl::StatusOr<float>(
          absl::Span<const float> params, absl::Span<float> grad)>& gradient);

  // Closes this worker's side of the stream and waits (finish_timeout) for
  // the server's final status: OK when the stream ended cleanly, here or
  // because the server finished training; else the error that ended it.
  // Idempotent.
  absl::Status Finish();

  // Makes the current and every later call fail with Cancelled.
  void Cancel();

  // Valid after Join.
  int rank() const { return rank_; }
  int num_workers() const { return num_workers_; }
  // Valid after Start: the round whose update Step sends next; params() is
  // x after round() - 1 (rounds count from 1).
  int64_t round() const;
  absl::Span<const float> params() const;
  // Workers averaged into the last delta; below num_workers() when the
  // server closed the round on its timeout. The fewest over the shards.
  int contributors() const;
  // Every server ended training (its --rounds passed).
  bool server_finished() const { return server_finished_; }
  // Times Step joined again and fetched x after a broken stream or lag.
  int resyncs() const { return resyncs_; }
  // The servers this worker talks to, one per shard.
  int num_shards() const { return static_cast<int>(shards_.size()); }

  // This worker's bytes, summed over the shards: by direction, the codec
  // payloads of the rounds it took part in (counted as effadam-sim counts
  // them per worker) and what fp32 Adam would have moved for them; the
  // join direction's payload is the parameters of UploadParams and
  // FetchParams; `wire` is the serialized messages that carried all that,
  // and any the servers sent after this worker's last round.
  TrafficCounts traffic() const;

  // The worker's error memory e (what its compression has left out so
  // far); empty before Start.
  absl::Span<const float> error_memory() const;
  // Its L2 norm as of the last step (WorkerOptimizer::error_memory_norm,
  // kept by the step itself); 0 before Start.
  double error_memory_norm() const;

  // The optimizer after Start (null before): its per-round learning rate
  // (SetLr) and its state, which a worker checkpoints and restores after a
  // restart (state, RestoreState).
  WorkerOptimizer* optimizer() { return optimizer_.get(); }
  const WorkerOptimizer* optimizer() const { return optimizer_.get(); }

 private:
  // One server of the model and where this worker stands with it. Each
  // shard has its own round: a shard restored from an older checkpoint
  // trains its part again while the others go on.
  struct Shard {
    std::unique_ptr<ShardLink> link;
    // Payload and fp32 bytes of this shard's part (wire: link->wire()).
    TrafficCounts payload;
    ShardRange update_range;  // in the worker codec's update
    ShardRange delta_range;   // in the server codec's delta
    int64_t max_chunk_bytes = 0;
    bool upload = false;       // told to upload its part of x0 (or replica)
    int64_t upload_round = 0;  // 0: the initial x0; else the replica's round
    int64_t round = 0;         // the round its next update is for
    int contributors = 0;
    std::unique_ptr<ChunkAssembler> delta;
    // The deltas that came before `delta` when the server took this
    // worker's late update into a later round.
    ShardLink::EarlierDeltas earlier;
  };

  bool cancelled() const;
  // Join of shard k for `rank` (-1: any) and the checks of its reply;
  // sets rank_, num_workers_ and the shard's fields. A rank still taken is
  // asked for again until `rank_taken_deadline` (ShardLink::Join). Once
  // training, the Join declares this worker's replica of the shard's part
  // of x (its round and checksum), which a restarted server may ask for.
  absl::Status JoinShard(size_t k, int rank, absl::Time deadline,
                         absl::Time rank_taken_deadline);
  // Uploads shard k's part of the whole-model vector `x` (its server asked
  // for the initial parameters, or for this worker's replica).
  absl::Status UploadShard(size_t k, absl::Span<const float> x,
                           absl::Time deadline);
  // Shard k's part of the current x (and its round).
  absl::Status FetchShard(size_t k, absl::Time deadline, std::vector<float>* x);
  // After shard k's stream ended with `ended`: joins again, fetches its
  // part of x and opens a new stream when `ended` says the server restarted
  // or this worker lagged; otherwise, or when that fails, the error.
  absl::Status Recover(size_t k, const absl::Status& ended);
  absl::Status Resync(size_t k, absl::Time deadline);
  // Writes shard s's part of the delta, as its server sent it, into delta_.
  void PutDeltaPart(const Shard& s, absl::string_view part);
  // Writes the encoding of zeros as shard s's part (its server finished,
  // dropped the round or sent nothing), made when needed rather than kept;
  // Internal if the codec refuses the shard's segments (a broken invariant).
  absl::Status PutZeroPart(const Shard& s);
  // Counts a delta of `bytes` received from shard s.
  void CountDelta(Shard& s, size_t bytes);
  // Applies the deltas of the rounds that late updates missed
  // (Shard::earlier; `results`: the exchanges'), before this step's, in
  // order: those shards advance as many rounds more.
  absl::Status ApplyEarlierDeltas(const std::vector<absl::Status>& results);
  // Ends every stream after an error found here; returns `why`.
  absl::Status Abandon(absl::Status why);
  // The checks Step and BeginStep (`call`) make before a step (training,
  // no bucketed step open), and the schedule step set to round().
  absl::Status PrepareStep(absl::string_view call);
  // The round's exchanges on the shards' links, in parallel, into
  // round_results_ and round_dropped_; with `bucketed` each waits for its
  // bytes (AwaitBytes).
  void RunExchanges(float loss, bool bucketed);
  // After RunExchanges: the delta applied, broken streams recovered.
  absl::Status ApplyRound();
  // Bucketed: blocks until the first n bytes of shard k's part of the
  // update are final (and for all of them, the loss is known); false when
  // the step was abandoned or the client cancelled.
  bool AwaitBytes(size_t k, size_t n, float* loss);
  // Bucketed: ends the open step's exchanges (cancelled) and training.
  absl::Status AbandonStep(absl::Status why);
  const Clock& clock() const {
    return options_.clock != nullptr ? *options_.clock : Clock::Real();
  }

  const WorkerClientOptions options_;
  std::vector<Shard> shards_;

  mutable absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  // The bucketed step, as the link threads see it: how many bytes of each
  // shard's part of the update are final, the loss once EndStep gave it,
  // and whether the step was abandoned.
  std::vector<size_t> ready_bytes_ ABSL_GUARDED_BY(mu_);
  bool loss_known_ ABSL_GUARDED_BY(mu_) = false;
  float loss_ ABSL_GUARDED_BY(mu_) = 0.0f;
  bool step_abandoned_ ABSL_GUARDED_BY(mu_) = false;

  // The bucketed step, as the caller's thread sees it: the gradient so
  // far, the ranges given (begin -> end), the elements each update part
  // still lacks, the first part of each shard not yet final, and the
  // thread that runs the round's exchanges.
  std::vector<float> grad_;
  std::map<size_t, size_t> received_;
  std::vector<size_t> part_missing_;
  size_t missing_ = 0;
  std::vector<size_t> next_part_;
  std::thread step_thread_;
  // One round's results per shard (RunExchanges).
  std::vector<absl::Status> round_results_;
  std::vector<char> round_dropped_;

  enum class Phase { kNew, kJoined, kTraining, kDone };
  Phase phase_ = Phase::kNew;
  TensorLayout layout_;
  int rank_ = -1;
  int num_workers_ = 0;
  int resyncs_ = 0;
  bool server_finished_ = false;
  std::shared_ptr<const UpdateCodec> worker_codec_, server_codec_;
  std::unique_ptr<WorkerOptimizer> optimizer_;
  absl::Status final_status_;
  std::string update_;  // reused buffer
  std::string delta_;   // the last delta, all shards' parts
  // Runs a round's exchanges on the shards' links in parallel; made by
  // Start, so its threads live as long as training (none with one shard).
  std::unique_ptr<LinkThreads> link_threads_;
};

// The addresses of WorkerClientOptions::server, one per shard.
absl::StatusOr<std::vector<std::string>> ShardAddresses(
    const std::string& server, int num_shards);

}  // namespace effadam

#endif  // EFFADAM_WORKER_WORKER_CLIENT_H_
