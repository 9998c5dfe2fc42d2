#include "worker/shard_link.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "effadam/v1/parameter_server.grpc.pb.h"

namespace effadam {

// Parameters travel as raw float32 bytes, which the wire defines as
// little-endian; a big-endian host would need a byte swap here.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "effadam's wire format is little-endian");

namespace {

namespace pb = ::effadam::v1;

constexpr absl::Duration kFirstBackoff = absl::Milliseconds(100);
constexpr absl::Duration kMaxBackoff = absl::Seconds(2);
// How often Retry reports that it still waits.
constexpr absl::Duration kLogEvery = absl::Seconds(10);

absl::Status FromGrpc(const grpc::Status& s, absl::string_view during) {
  if (s.ok()) return absl::OkStatus();
  // grpc::StatusCode and absl::StatusCode share their numbering.
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrCat(during, ": ", s.error_message()));
}

}  // namespace

struct ShardLink::Stream {
  std::unique_ptr<grpc::ClientContext> context;
  std::unique_ptr<grpc::ClientReaderWriter<pb::WorkerMessage, pb::ServerMessage>>
      rw;
};

ShardLink::ShardLink(std::string address, const ClientSecurity& security,
                     const ClientKeepalive& keepalive, Logger* log)
    : address_(std::move(address)), security_(security), log_(log) {
  grpc::ChannelArguments args;
  // The server may not be listening yet; reconnect as eagerly as Join
  // retries instead of gRPC's default 1 s .. 120 s.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
              static_cast<int>(absl::ToInt64Milliseconds(kFirstBackoff)));
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS,
              static_cast<int>(absl::ToInt64Milliseconds(kFirstBackoff)));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
              static_cast<int>(absl::ToInt64Milliseconds(kMaxBackoff)));
  // Room for the largest chunk a server may send plus the message's other
  // fields.
  args.SetMaxReceiveMessageSize(MaxMessageBytes(kLargestServerChunkBytes));
  // TLS and keepalive: transport/grpc_security.h.
  channel_ = NewClientChannel(address_, security_, args, keepalive);
}

ShardLink::~ShardLink() {
  // A stream still open (an error path skipped Finish) is cancelled rather
  // than closed: the server sees this worker leave at once.
  if (stream_ != nullptr) Abandon();
}

void ShardLink::Cancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  if (active_ != nullptr) active_->TryCancel();
}

bool ShardLink::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

std::unique_ptr<grpc::ClientContext> ShardLink::NewContext(
    absl::Time deadline) {
  auto context = std::make_unique<grpc::ClientContext>();
  AddCallCredentials(security_, context.get());
  if (deadline != absl::InfiniteFuture()) {
    context->set_deadline(absl::ToChronoTime(deadline));
  }
  absl::MutexLock lock(&mu_);
  if (cancelled_) return nullptr;
  active_ = context.get();
  return context;
}

void ShardLink::ReleaseContext() {
  absl::MutexLock lock(&mu_);
  active_ = nullptr;
}

bool ShardLink::ServerAway(const absl::Status& s) const {
  return absl::IsUnavailable(s) || (absl::IsCancelled(s) && !cancelled());
}

absl::Status ShardLink::Retry(
    absl::Time deadline, absl::string_view late,
    absl::FunctionRef<absl::Status()> attempt,
    absl::FunctionRef<bool(const absl::Status&)> retry) {
  absl::Duration backoff = kFirstBackoff;
  absl::Time last_logged = absl::InfinitePast();
  for (int attempts = 1;; ++attempts) {
    const absl::Status s = attempt();
    if (cancelled()) return absl::CancelledError("cancelled");
    if (s.ok() || !retry(s)) return s;
    const absl::Time now = absl::Now();
    if (now + backoff >= deadline) {
      if (late.empty()) return s;
      return absl::Status(s.code(), absl::StrCat(late, ": ", s.message()));
    }
    if (now - last_logged >= kLogEvery) {
      last_logged = now;
      log_->Info(absl::StrCat("waiting (attempt ", attempts, ", for up to ",
                              absl::FormatDuration(absl::Trunc(
                                  deadline - now, absl::Seconds(1))),
                              " more): ", s.ToString()));
    }
    absl::MutexLock lock(&mu_);
    // Wakes early only when Cancel() flips the flag.
    mu_.AwaitWithTimeout(absl::Condition(&cancelled_), backoff);
    if (cancelled_) return absl::CancelledError("cancelled");
    backoff = std::min(2 * backoff, kMaxBackoff);
  }
}

absl::StatusOr<pb::JoinResponse> ShardLink::Join(
    const pb::JoinRequest& request, absl::Time deadline,
    absl::Time rank_taken_deadline) {
  pb::JoinResponse reply;
  auto stub = pb::ParameterServer::NewStub(channel_);
  // Not listening yet, or going away; or the rank still taken: retried,
  // each until its own deadline. Anything else is the server's answer and
  // final.
  const absl::Status s = Retry(
      std::max(deadline, rank_taken_deadline), "",
      [&]() -> absl::Status {
        auto context = NewContext(deadline);
        if (context == nullptr) return absl::CancelledError("cancelled");
        const grpc::Status s = stub->Join(context.get(), request, &reply);
        ReleaseContext();
        return FromGrpc(s, absl::StrCat("Join ", address_));
      },
      [&](const absl::Status& s) {
        const absl::Time now = absl::Now();
        return (ServerAway(s) && now < deadline) ||
               (absl::IsAlreadyExists(s) && now < rank_taken_deadline);
      });
  if (ServerAway(s)) {
    return absl::Status(
        s.code(), absl::StrCat("no server answered in time: ", s.message()));
  }
  if (!s.ok()) return s;
  return reply;
}

absl::Status ShardLink::Upload(int rank, int64_t round,
                               absl::Span<const float> x,
                               size_t max_chunk_bytes, absl::Time deadline) {
  auto stub = pb::ParameterServer::NewStub(channel_);
  auto context = NewContext(deadline);
  if (context == nullptr) return absl::CancelledError("cancelled");
  pb::UploadParamsResponse reply;
  auto writer = stub->UploadParams(context.get(), &reply);
  const size_t per_chunk = max_chunk_bytes / sizeof(float);
  pb::ParamsChunk chunk;
  chunk.set_rank(rank);
  chunk.set_round(round);
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
  return FromGrpc(s, absl::StrCat("UploadParams to ", address_));
}

absl::StatusOr<std::vector<float>> ShardLink::Fetch(int rank, size_t n,
                                                    size_t max_chunk_bytes,
                                                    absl::Time deadline,
                                                    int64_t* round) {
  auto stub = pb::ParameterServer::NewStub(channel_);
  ChunkRules rules;
  rules.total_bytes = n * sizeof(float);
  rules.max_chunk_bytes = max_chunk_bytes;
  rules.unit = sizeof(float);
  rules.finite_float32 = true;
  rules.rank = rank;
  absl::StatusOr<ChunkAssembler> assembler = ChunkAssembler::Create(rules);
  if (!assembler.ok()) return assembler.status();
  // `bad`: the server's bytes did not assemble, which is final.
  absl::Status bad;
  const absl::Status s = Retry(
      deadline, "no parameters in time",
      [&]() -> absl::Status {
        auto context = NewContext(deadline);
        if (context == nullptr) return absl::CancelledError("cancelled");
        pb::FetchParamsRequest request;
        request.set_rank(rank);
        auto reader = stub->FetchParams(context.get(), request);
        // Every chunk names the round x is current for; the first sets it.
        assembler->Start(std::nullopt);
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
        if (!bad.ok()) return bad;
        return FromGrpc(s, absl::StrCat("FetchParams ", address_));
      },
      // UNAVAILABLE: the first worker has not uploaded x yet (or the server
      // is going away).
      [&](const absl::Status& s) { return bad.ok() && ServerAway(s); });
  if (!bad.ok()) {
    return absl::InternalError(absl::StrCat("FetchParams: ", address_,
                                            "'s x: ", bad.message()));
  }
  if (!s.ok()) return s;
  const std::string bytes = assembler->TakeBuffer();
  std::vector<float> x(n);
  std::memcpy(x.data(), bytes.data(), bytes.size());
  *round = *assembler->round();
  return x;
}

absl::Status ShardLink::OpenStream() {
  auto stream = std::make_unique<Stream>();
  stream->context = NewContext(absl::InfiniteFuture());
  if (stream->context == nullptr) return absl::CancelledError("cancelled");
  auto stub = pb::ParameterServer::NewStub(channel_);
  stream->rw = stub->Train(stream->context.get());
  stream_ = std::move(stream);
  server_finished_ = false;
  return absl::OkStatus();
}

absl::Status ShardLink::EndStream(absl::string_view during) {
  // After a failed Read or Write no message is pending, so Finish returns
  // the server's status at once.
  pb::ServerMessage ignored;
  while (stream_->rw->Read(&ignored)) {
    wire_.server_to_worker += static_cast<int64_t>(ignored.ByteSizeLong());
  }
  const grpc::Status s = stream_->rw->Finish();
  ReleaseContext();
  stream_.reset();
  if (s.ok()) {
    server_finished_ = true;
    return absl::OkStatus();
  }
  if (s.error_code() == grpc::StatusCode::CANCELLED && cancelled()) {
    return absl::CancelledError("cancelled");
  }
  return FromGrpc(s, absl::StrCat("Train with ", address_, ", ", during));
}

absl::Status ShardLink::Exchange(int rank, int64_t round,
                                 absl::string_view update, float loss,
                                 size_t max_chunk_bytes,
                                 ChunkAssembler* assembler,
                                 int* contributors) {
  pb::WorkerMessage msg;
  msg.set_rank(rank);
  msg.set_round(round);
  size_t offset = 0;
  do {
    const size_t n = std::min(max_chunk_bytes, update.size() - offset);
    msg.set_offset(static_cast<int64_t>(offset));
    msg.set_payload(update.data() + offset, n);
    offset += n;
    msg.set_loss(offset == update.size() ? loss : 0.0f);
    if (!stream_->rw->Write(msg)) {
      return EndStream(absl::StrCat("sending the update of round ", round));
    }
    wire_.worker_to_server += static_cast<int64_t>(msg.ByteSizeLong());
  } while (offset < update.size());

  // The delta's length follows from the layout and the server codec, so the
  // last chunk is known without an end marker.
  assembler->Start(round);
  pb::ServerMessage reply;
  while (!assembler->complete()) {
    if (!stream_->rw->Read(&reply)) {
      return EndStream(absl::StrCat("waiting for the delta of round ", round));
    }
    wire_.server_to_worker += static_cast<int64_t>(reply.ByteSizeLong());
    if (absl::Status s = assembler->Add(-1, reply.round(), reply.offset(),
                                        reply.payload());
        !s.ok()) {
      Abandon();
      return absl::InternalError(absl::StrCat(
          "Train: the delta of round ", round, " from ", address_, ": ",
          s.message()));
    }
    *contributors = reply.contributors();
  }
  return absl::OkStatus();
}

void ShardLink::Abandon() {
  if (stream_ == nullptr) return;
  // Cancelling tells the server this worker left; its status is moot.
  stream_->context->TryCancel();
  EndStream("").IgnoreError();
  server_finished_ = false;
}

absl::Status ShardLink::Finish(absl::Duration timeout) {
  if (stream_ == nullptr) return absl::OkStatus();
  // WritesDone tells the server this worker is leaving; it then ends the
  // stream. A watchdog bounds the wait on a server that does not.
  stream_->rw->WritesDone();
  bool done = false, timed_out = false;
  grpc::ClientContext* context = stream_->context.get();
  std::thread watchdog([&] {
    absl::MutexLock lock(&mu_);
    if (!mu_.AwaitWithTimeout(absl::Condition(&done), timeout)) {
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
  if (timed_out) {
    return absl::DeadlineExceededError(absl::StrCat(
        "Train: ", address_, " did not end the stream within ",
        absl::FormatDuration(timeout), " of this worker's last round"));
  }
  if (s.error_code() == grpc::StatusCode::CANCELLED && cancelled()) {
    return absl::CancelledError("cancelled");
  }
  return FromGrpc(s, "Train, closing the stream");
}

}  // namespace effadam
