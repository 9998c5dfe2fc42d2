#include "worker/worker_client.h"

#include "common/compression_proto.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>
#include <utility>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/chunk_assembler.h"
#include "effadam/v1/parameter_server.grpc.pb.h"

namespace effadam {

// Parameters travel as raw float32 bytes, which the wire defines as
// little-endian; a big-endian host would need a byte swap here.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "effadam's wire format is little-endian");

namespace {

namespace pb = ::effadam::v1;

// gRPC's receive limit must fit the server's largest chunk (its
// --max_chunk_bytes allows up to 2^30) plus the message's other fields.
constexpr int64_t kMaxChunkBytes = int64_t{1} << 30;
constexpr int kMaxReceiveBytes =
    static_cast<int>(kMaxChunkBytes) + kMessageEnvelopeBytes;
constexpr absl::Duration kFirstBackoff = absl::Milliseconds(100);
constexpr absl::Duration kMaxBackoff = absl::Seconds(2);

absl::Status FromGrpc(const grpc::Status& s, absl::string_view during) {
  if (s.ok()) return absl::OkStatus();
  // grpc::StatusCode and absl::StatusCode share their numbering.
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrCat(during, ": ", s.error_message()));
}

}  // namespace

struct WorkerClient::Stream {
  std::unique_ptr<grpc::ClientContext> context;
  std::unique_ptr<grpc::ClientReaderWriter<pb::WorkerMessage, pb::ServerMessage>>
      rw;
};

WorkerClient::WorkerClient(WorkerClientOptions options)
    : options_(std::move(options)) {
  grpc::ChannelArguments args;
  // The server may not be listening yet; reconnect as eagerly as Join
  // retries instead of gRPC's default 1 s .. 120 s.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
              static_cast<int>(absl::ToInt64Milliseconds(kFirstBackoff)));
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS,
              static_cast<int>(absl::ToInt64Milliseconds(kFirstBackoff)));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
              static_cast<int>(absl::ToInt64Milliseconds(kMaxBackoff)));
  args.SetMaxReceiveMessageSize(kMaxReceiveBytes);
  // TLS and keepalive: common/grpc_security.h.
  channel_ = NewClientChannel(options_.server, options_.security, args);
}

WorkerClient::~WorkerClient() {
  // A stream still open (an error path skipped Finish) is cancelled rather
  // than closed: the server sees this worker leave at once, and Finish
  // returns without waiting for the server.
  if (stream_ != nullptr) {
    stream_->context->TryCancel();
    EndStream("").IgnoreError();
  }
}

absl::StatusOr<std::unique_ptr<WorkerClient>> WorkerClient::Connect(
    const WorkerClientOptions& options, const TensorLayout& layout,
    absl::Span<const float> initial_params) {
  auto client = std::make_unique<WorkerClient>(options);
  if (absl::Status s = client->Join(layout); !s.ok()) return s;
  if (absl::Status s = client->Start(initial_params); !s.ok()) return s;
  return client;
}

void WorkerClient::Cancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  if (active_ != nullptr) active_->TryCancel();
}

bool WorkerClient::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

std::unique_ptr<grpc::ClientContext> WorkerClient::NewContext(
    absl::Time deadline) {
  auto context = std::make_unique<grpc::ClientContext>();
  AddCallCredentials(options_.security, context.get());
  if (deadline != absl::InfiniteFuture()) {
    context->set_deadline(absl::ToChronoTime(deadline));
  }
  absl::MutexLock lock(&mu_);
  if (cancelled_) return nullptr;
  active_ = context.get();
  return context;
}

void WorkerClient::ReleaseContext() {
  absl::MutexLock lock(&mu_);
  active_ = nullptr;
}

bool WorkerClient::Backoff(absl::Duration d) {
  absl::MutexLock lock(&mu_);
  // Wakes early only when Cancel() flips the flag.
  mu_.AwaitWithTimeout(absl::Condition(&cancelled_), d);
  return !cancelled_;
}

bool WorkerClient::ServerAway(const grpc::Status& s) const {
  // A server shutting down cancels the calls it has; a Cancel() here is
  // this worker's own doing.
  return s.error_code() == grpc::StatusCode::UNAVAILABLE ||
         (s.error_code() == grpc::StatusCode::CANCELLED && !cancelled());
}

absl::Status WorkerClient::Join(const TensorLayout& layout) {
  if (phase_ != Phase::kNew) {
    return absl::FailedPreconditionError("Join: already joined");
  }
  if (options_.rank < -1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rank must be -1 (assigned by the server) or >= 0, got ",
        options_.rank));
  }
  if (layout.num_elements() == 0) {
    return absl::InvalidArgumentError("Join: the layout has no tensors");
  }
  if (absl::Status s = ValidateAdamOptions(options_.adam); !s.ok()) return s;

  layout_ = layout;
  if (absl::Status s =
          JoinAs(options_.rank, absl::Now() + options_.connect_timeout);
      !s.ok()) {
    return s;
  }
  phase_ = Phase::kJoined;
  return absl::OkStatus();
}

absl::Status WorkerClient::JoinAs(int rank, absl::Time deadline) {
  pb::JoinRequest request;
  *request.mutable_layout() = LayoutToProto(layout_);
  *request.mutable_compression() = CompressionToProto(options_.compression);
  request.set_rank(rank);

  pb::JoinResponse reply;
  absl::Duration backoff = kFirstBackoff;
  auto stub = pb::ParameterServer::NewStub(channel_);
  while (true) {
    auto context = NewContext(deadline);
    if (context == nullptr) return absl::CancelledError("cancelled");
    const grpc::Status s = stub->Join(context.get(), request, &reply);
    ReleaseContext();
    if (s.ok()) break;
    // Not listening yet, or going away; anything else is the server's
    // answer and final.
    if (!ServerAway(s)) {
      return FromGrpc(s, absl::StrCat("Join ", options_.server));
    }
    if (absl::Now() + backoff >= deadline) {
      return FromGrpc(s, absl::StrCat("Join: no server answered at ",
                                      options_.server, " in time"));
    }
    if (!Backoff(backoff)) return absl::CancelledError("cancelled");
    backoff = std::min(2 * backoff, kMaxBackoff);
  }

  if (reply.expected_workers() <= 0 || reply.rank() < 0 ||
      reply.rank() >= reply.expected_workers() ||
      (rank >= 0 && reply.rank() != rank)) {
    return absl::InternalError(absl::StrCat(
        "Join: the server assigned rank ", reply.rank(), " of ",
        reply.expected_workers(), " workers (asked for ", rank, ")"));
  }
  if (num_workers_ != 0 && reply.expected_workers() != num_workers_) {
    // The data shard was chosen for the old N.
    return absl::FailedPreconditionError(absl::StrCat(
        "Join: the server now expects ", reply.expected_workers(),
        " workers; this worker started with ", num_workers_));
  }
  if (reply.num_elements() != static_cast<int64_t>(layout_.num_elements())) {
    return absl::InternalError(absl::StrCat(
        "Join: the server reports ", reply.num_elements(),
        " elements for a layout of ", layout_.num_elements()));
  }
  if (reply.max_chunk_bytes() < 4 || reply.max_chunk_bytes() > kMaxChunkBytes) {
    return absl::FailedPreconditionError(absl::StrCat(
        "Join: the server's max_chunk_bytes ", reply.max_chunk_bytes(),
        " is outside what this worker accepts, [4, ", kMaxChunkBytes, "]"));
  }
  // The server refuses a Join whose settings differ from its own, so a
  // reply naming other settings means the two sides disagree on the protocol.
  if (absl::Status s = CheckCompressionMatches(
          reply.compression(), options_.compression, "this worker", "server");
      !s.ok()) {
    return absl::InternalError(absl::StrCat(
        "Join: the server accepted this worker but ", s.message()));
  }
  rank_ = reply.rank();
  num_workers_ = reply.expected_workers();
  upload_ = reply.upload_initial_params();
  max_chunk_bytes_ = reply.max_chunk_bytes();
  round_ = reply.round();
  return absl::OkStatus();
}

absl::Status WorkerClient::Upload(absl::Span<const float> x,
                                  absl::Time deadline) {
  auto stub = pb::ParameterServer::NewStub(channel_);
  auto context = NewContext(deadline);
  if (context == nullptr) return absl::CancelledError("cancelled");
  pb::UploadParamsResponse reply;
  auto writer = stub->UploadParams(context.get(), &reply);
  const size_t per_chunk = static_cast<size_t>(max_chunk_bytes_) / 4;
  pb::ParamsChunk chunk;
  chunk.set_rank(rank_);
  for (size_t begin = 0; begin < x.size(); begin += per_chunk) {
    const size_t n = std::min(per_chunk, x.size() - begin);
    chunk.set_begin(static_cast<int64_t>(begin));
    chunk.set_values(reinterpret_cast<const char*>(x.data() + begin),
                     n * sizeof(float));
    // A failed Write means the call is over; Finish says why.
    if (!writer->Write(chunk)) break;
    wire_.join += static_cast<int64_t>(chunk.ByteSizeLong());
  }
  writer->WritesDone();
  const grpc::Status s = writer->Finish();
  ReleaseContext();
  if (s.ok()) join_bytes_ += static_cast<int64_t>(x.size() * sizeof(float));
  return FromGrpc(s, "UploadParams");
}

absl::StatusOr<std::vector<float>> WorkerClient::Fetch(absl::Time deadline) {
  auto stub = pb::ParameterServer::NewStub(channel_);
  const size_t n = layout_.num_elements();
  ChunkRules rules;
  rules.total_bytes = n * sizeof(float);
  rules.max_chunk_bytes = static_cast<size_t>(max_chunk_bytes_);
  rules.unit = sizeof(float);
  rules.finite_float32 = true;
  rules.rank = rank_;
  absl::StatusOr<ChunkAssembler> assembler = ChunkAssembler::Create(rules);
  if (!assembler.ok()) return assembler.status();
  absl::Duration backoff = kFirstBackoff;
  while (true) {
    auto context = NewContext(deadline);
    if (context == nullptr) return absl::CancelledError("cancelled");
    pb::FetchParamsRequest request;
    request.set_rank(rank_);
    auto reader = stub->FetchParams(context.get(), request);
    // Every chunk names the round x is current for; the first sets it.
    assembler->Start(std::nullopt);
    absl::Status bad;
    pb::ParamsChunk chunk;
    while (reader->Read(&chunk)) {
      wire_.join += static_cast<int64_t>(chunk.ByteSizeLong());
      if (!bad.ok()) continue;  // drain, so that Finish may be called
      bad = assembler->Add(chunk.rank(), chunk.round(), chunk.begin(),
                           chunk.values());
      if (!bad.ok()) context->TryCancel();
    }
    const grpc::Status s = reader->Finish();
    ReleaseContext();
    if (s.ok() && bad.ok()) bad = assembler->Finish();
    if (!bad.ok()) {
      return absl::InternalError(
          absl::StrCat("FetchParams: the server's x: ", bad.message()));
    }
    if (s.ok()) {
      const std::string bytes = assembler->TakeBuffer();
      std::vector<float> x(n);
      std::memcpy(x.data(), bytes.data(), bytes.size());
      join_bytes_ += static_cast<int64_t>(n * sizeof(float));
      round_ = *assembler->round();
      return x;
    }
    // UNAVAILABLE: the first worker has not uploaded x yet (or the server
    // is going away).
    if (!ServerAway(s)) return FromGrpc(s, "FetchParams");
    if (absl::Now() + backoff >= deadline) {
      return FromGrpc(s, absl::StrCat("FetchParams: the server had no "
                                      "parameters within ",
                                      absl::FormatDuration(
                                          options_.connect_timeout)));
    }
    if (!Backoff(backoff)) return absl::CancelledError("cancelled");
    backoff = std::min(2 * backoff, kMaxBackoff);
  }
}

absl::Status WorkerClient::Start(absl::Span<const float> initial_params) {
  if (phase_ != Phase::kJoined) {
    return absl::FailedPreconditionError(
        phase_ == Phase::kNew ? "Start: Join first" : "Start: already started");
  }
  const size_t n = layout_.num_elements();
  const CompressionConfig& cc = options_.compression;
  auto wc = UpdateCodec::Create(layout_, cc.worker_codec, cc.options);
  if (!wc.ok()) return wc.status();
  auto sc = UpdateCodec::Create(layout_, cc.server_codec, cc.options);
  if (!sc.ok()) return sc.status();

  const absl::Time deadline = absl::Now() + options_.connect_timeout;
  if (upload_) {
    if (initial_params.size() != n) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Start: ", initial_params.size(),
          " initial parameters for a layout of ", n, " elements"));
    }
    if (absl::Status s = Upload(initial_params, deadline); !s.ok()) return s;
  }
  absl::StatusOr<std::vector<float>> x0 = Fetch(deadline);
  if (!x0.ok()) return x0.status();

  WorkerOptimizer::Options wo;
  wo.adam = options_.adam;
  wo.error_feedback = cc.worker_error_feedback;
  wo.seed = options_.seed;
  wo.rank = rank_;
  ChunkRules delta_rules;
  delta_rules.total_bytes = (*sc)->encoded_size();
  delta_rules.max_chunk_bytes = static_cast<size_t>(max_chunk_bytes_);
  absl::StatusOr<ChunkAssembler> delta_assembler =
      ChunkAssembler::Create(delta_rules);
  if (!delta_assembler.ok()) return delta_assembler.status();
  delta_assembler_ =
      std::make_unique<ChunkAssembler>(*std::move(delta_assembler));
  server_codec_ = *std::move(sc);
  auto optimizer = WorkerOptimizer::Create(*std::move(wc), server_codec_,
                                           *std::move(x0), wo);
  if (!optimizer.ok()) return optimizer.status();
  optimizer_ = *std::move(optimizer);

  if (absl::Status s = OpenStream(); !s.ok()) return s;
  phase_ = Phase::kTraining;
  return absl::OkStatus();
}

absl::Status WorkerClient::OpenStream() {
  auto stream = std::make_unique<Stream>();
  // The stream lives as long as the worker: no deadline, Cancel ends it.
  stream->context = NewContext(absl::InfiniteFuture());
  if (stream->context == nullptr) return absl::CancelledError("cancelled");
  auto stub = pb::ParameterServer::NewStub(channel_);
  stream->rw = stub->Train(stream->context.get());
  stream_ = std::move(stream);
  return absl::OkStatus();
}

absl::Status WorkerClient::Recover(absl::Status ended) {
  if (server_finished_ || cancelled() ||
      options_.reconnect_timeout <= absl::ZeroDuration() ||
      !(absl::IsUnavailable(ended) || absl::IsAborted(ended) ||
        absl::IsCancelled(ended))) {
    return ended;
  }
  const absl::Time deadline = absl::Now() + options_.reconnect_timeout;
  absl::Duration backoff = kFirstBackoff;
  while (true) {
    absl::Status s = Resync(deadline);
    if (s.ok()) {
      ++resyncs_;
      final_status_ = absl::OkStatus();
      phase_ = Phase::kTraining;
      return absl::OkStatus();
    }
    if (cancelled()) break;
    // ALREADY_EXISTS: the server has not yet seen this rank's old stream
    // end. UNAVAILABLE, CANCELLED: it is not back yet, or going away again.
    const bool again = absl::IsUnavailable(s) || absl::IsAlreadyExists(s) ||
                       absl::IsAborted(s) || absl::IsCancelled(s);
    if (!again || absl::Now() + backoff >= deadline || !Backoff(backoff)) {
      final_status_ = absl::Status(
          s.code(), absl::StrCat("reconnecting after \"", ended.message(),
                                 "\": ", s.message()));
      return final_status_;
    }
    backoff = std::min(2 * backoff, kMaxBackoff);
  }
  final_status_ = absl::CancelledError("cancelled");
  return final_status_;
}

absl::Status WorkerClient::Resync(absl::Time deadline) {
  if (absl::Status s = JoinAs(rank_, deadline); !s.ok()) return s;
  // A server that restarted without a checkpoint asks for the initial
  // parameters: this replica is the best there is.
  if (upload_) {
    const std::vector<float> x(params().begin(), params().end());
    if (absl::Status s = Upload(x, deadline); !s.ok()) return s;
  }
  absl::StatusOr<std::vector<float>> x = Fetch(deadline);
  if (!x.ok()) return x.status();
  if (absl::Status s = optimizer_->ResetParams(*x); !s.ok()) return s;
  return OpenStream();
}

absl::Span<const float> WorkerClient::params() const {
  if (optimizer_ == nullptr) return {};
  return optimizer_->params();
}

absl::Span<const float> WorkerClient::error_memory() const {
  if (optimizer_ == nullptr) return {};
  return optimizer_->error_memory();
}

absl::Status WorkerClient::EndStream(absl::string_view during) {
  // After a failed Read or Write no message is pending, so Finish returns
  // the server's status at once.
  pb::ServerMessage ignored;
  while (stream_->rw->Read(&ignored)) {
    wire_.server_to_worker += static_cast<int64_t>(ignored.ByteSizeLong());
  }
  const grpc::Status s = stream_->rw->Finish();
  ReleaseContext();
  stream_.reset();
  phase_ = Phase::kDone;
  if (s.ok()) {
    server_finished_ = true;
    final_status_ = absl::OutOfRangeError(absl::StrCat(
        "the server ended training before round ", round_));
  } else if (s.error_code() == grpc::StatusCode::CANCELLED && cancelled()) {
    final_status_ = absl::CancelledError("cancelled");
  } else {
    final_status_ = FromGrpc(s, absl::StrCat("Train, ", during));
  }
  return final_status_;
}

absl::Status WorkerClient::Step(absl::Span<const float> grad, float loss) {
  if (phase_ != Phase::kTraining) {
    if (phase_ == Phase::kDone && !final_status_.ok()) return final_status_;
    return absl::FailedPreconditionError("Step: call Start first");
  }
  if (absl::Status s = optimizer_->ComputeUpdate(grad, &update_); !s.ok()) {
    return s;
  }
  const int64_t round = round_;
  const size_t size = update_.size();
  const size_t chunk_bytes = static_cast<size_t>(max_chunk_bytes_);
  pb::WorkerMessage msg;
  msg.set_rank(rank_);
  msg.set_round(round);
  size_t offset = 0;
  do {
    const size_t n = std::min(chunk_bytes, size - offset);
    msg.set_offset(static_cast<int64_t>(offset));
    msg.set_payload(update_.data() + offset, n);
    offset += n;
    msg.set_loss(offset == size ? loss : 0.0f);
    if (!stream_->rw->Write(msg)) {
      return Recover(
          EndStream(absl::StrCat("sending the update of round ", round)));
    }
    wire_.worker_to_server += static_cast<int64_t>(msg.ByteSizeLong());
  } while (offset < size);

  traffic_.worker_to_server += static_cast<int64_t>(size);
  traffic_.fp32_worker_to_server +=
      static_cast<int64_t>(sizeof(float) * optimizer_->params().size());

  // The delta's length follows from the layout and the server codec, so the
  // last chunk is known without an end marker.
  delta_assembler_->Start(round);
  pb::ServerMessage reply;
  while (!delta_assembler_->complete()) {
    if (!stream_->rw->Read(&reply)) {
      return Recover(
          EndStream(absl::StrCat("waiting for the delta of round ", round)));
    }
    wire_.server_to_worker += static_cast<int64_t>(reply.ByteSizeLong());
    if (absl::Status s = delta_assembler_->Add(
            -1, reply.round(), reply.offset(), reply.payload());
        !s.ok()) {
      return Abandon(absl::InternalError(absl::StrCat(
          "Train: the delta of round ", round, ": ", s.message())));
    }
    contributors_ = reply.contributors();
  }
  delta_ = delta_assembler_->TakeBuffer();
  if (absl::Status s = optimizer_->ApplyDelta(delta_); !s.ok()) {
    return Abandon(absl::InternalError(
        absl::StrCat("Train, round ", round, ": ", s.message())));
  }
  traffic_.server_to_worker += static_cast<int64_t>(delta_.size());
  traffic_.fp32_server_to_worker +=
      static_cast<int64_t>(sizeof(float) * optimizer_->params().size());
  ++round_;
  return absl::OkStatus();
}

absl::Status WorkerClient::Abandon(absl::Status why) {
  // Cancelling tells the server this worker left; its status is moot.
  stream_->context->TryCancel();
  EndStream("").IgnoreError();
  server_finished_ = false;
  final_status_ = std::move(why);
  return final_status_;
}

absl::Status WorkerClient::Run(
    int64_t last_round,
    const std::function<absl::StatusOr<float>(absl::Span<const float>,
                                              absl::Span<float>)>& gradient) {
  if (phase_ != Phase::kTraining) {
    return absl::FailedPreconditionError("Run: call Start first");
  }
  std::vector<float> grad(optimizer_->params().size());
  while (round_ <= last_round) {
    absl::StatusOr<float> loss = gradient(params(), absl::MakeSpan(grad));
    if (!loss.ok()) return loss.status();
    absl::Status s = Step(grad, *loss);
    if (server_finished_) break;
    if (!s.ok()) return s;
  }
  return Finish();
}

absl::Status WorkerClient::Finish() {
  if (phase_ == Phase::kDone) {
    return server_finished_ ? absl::OkStatus() : final_status_;
  }
  if (phase_ != Phase::kTraining) {
    phase_ = Phase::kDone;
    return absl::OkStatus();
  }
  // WritesDone tells the server this worker is leaving; it then ends the
  // stream. A watchdog bounds the wait on a server that does not.
  stream_->rw->WritesDone();
  bool done = false, timed_out = false;
  grpc::ClientContext* context = stream_->context.get();
  std::thread watchdog([&] {
    absl::MutexLock lock(&mu_);
    if (!mu_.AwaitWithTimeout(absl::Condition(&done),
                              options_.finish_timeout)) {
      timed_out = true;
      context->TryCancel();
    }
  });
  // Deltas of rounds this worker no longer takes part in may still arrive.
  pb::ServerMessage ignored;
  while (stream_->rw->Read(&ignored)) {
    wire_.server_to_worker += static_cast<int64_t>(ignored.ByteSizeLong());
  }
  const grpc::Status s = stream_->rw->Finish();
  {
    absl::MutexLock lock(&mu_);
    done = true;
  }
  watchdog.join();
  ReleaseContext();
  stream_.reset();
  phase_ = Phase::kDone;
  if (timed_out) {
    final_status_ = absl::DeadlineExceededError(absl::StrCat(
        "Train: the server did not end the stream within ",
        absl::FormatDuration(options_.finish_timeout),
        " of this worker's last round"));
  } else if (s.error_code() == grpc::StatusCode::CANCELLED && cancelled()) {
    final_status_ = absl::CancelledError("cancelled");
  } else {
    final_status_ = FromGrpc(s, "Train, closing the stream");
  }
  return final_status_;
}

}  // namespace effadam
