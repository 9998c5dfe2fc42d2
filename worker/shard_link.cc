#include "worker/shard_link.h"

#include <grpc/support/time.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "effadam/v1/parameter_server.grpc.pb.h"
#include "transport/compression_proto.h"
#include "transport/protocol_version.h"
#include "worker/retry_backoff.h"

namespace effadam {

// Parameters travel as raw float32 bytes, which the wire defines as
// little-endian; a big-endian host would need a byte swap here.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "effadam's wire format is little-endian");

namespace {

namespace pb = ::effadam::v1;

// The longest a wait for the Clock blocks before it reads the clock again
// (a FakeClock that jumps is noticed within this much real time).
constexpr absl::Duration kClockPoll = absl::Milliseconds(100);
// The longest a wait for the channel to connect blocks on the channel
// before it reads the clock and the cancel flag again.
constexpr absl::Duration kConnectPoll = absl::Milliseconds(50);

absl::Status FromGrpc(const grpc::Status& s, absl::string_view during) {
  if (s.ok()) return absl::OkStatus();
  // grpc::StatusCode and absl::StatusCode share their numbering.
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrCat(during, ": ", s.error_message()));
}

}  // namespace

struct ShardLink::Rpc {
  struct Stream {
    std::unique_ptr<grpc::ClientContext> context;
    std::unique_ptr<
        grpc::ClientReaderWriter<pb::WorkerMessage, pb::ServerMessage>>
        rw;
  };

  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<pb::ParameterServer::Stub> stub;
  std::unique_ptr<Stream> stream;  // null: no Train stream open
};

ShardLink::ShardLink(ShardLinkOptions options)
    : options_(std::move(options)),
      clock_(*options_.clock),
      rpc_(std::make_unique<Rpc>()) {
  grpc::ChannelArguments args;
  // Room for the largest chunk a server may send plus the message's other
  // fields.
  args.SetMaxReceiveMessageSize(MaxMessageBytes(kLargestServerChunkBytes));
  // TLS, keepalive and reconnect backoff: transport/grpc_security.h.
  rpc_->channel = NewClientChannel(options_.address, options_.security, args,
                                   options_.keepalive);
  rpc_->stub = pb::ParameterServer::NewStub(rpc_->channel);
}

ShardLink::~ShardLink() {
  // A stream still open (an error path skipped Finish) is cancelled rather
  // than closed: the server sees this worker leave at once.
  if (rpc_->stream != nullptr) Abandon();
}

bool ShardLink::stream_open() const { return rpc_->stream != nullptr; }

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
  AddCallCredentials(options_.security, context.get());
  if (deadline != absl::InfiniteFuture()) {
    // gRPC adds a timespan to its own clock's now.
    const absl::Duration left =
        std::max(deadline - clock_.Now(), absl::ZeroDuration());
    context->set_deadline(
        gpr_time_from_micros(absl::ToInt64Microseconds(left), GPR_TIMESPAN));
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

bool ShardLink::ChannelConnected() {
  // true: an idle channel starts connecting (after a failed attempt gRPC
  // reports it idle once its own backoff has passed).
  return rpc_->channel->GetState(/*try_to_connect=*/true) == GRPC_CHANNEL_READY;
}

bool ShardLink::AwaitConnected(absl::Duration at_most) {
  const grpc_connectivity_state state =
      rpc_->channel->GetState(/*try_to_connect=*/true);
  if (state == GRPC_CHANNEL_READY) return true;
  // Waiting on the channel's state is what drives its connection attempt:
  // a synchronous client reads a socket only while some thread waits in
  // gRPC, and between calls nothing does but gRPC's backup poller, every
  // 5 s. A connection whose TCP handshake had completed sat with the
  // server's SETTINGS unread until its attempt timed out ("tcp handshaker
  // shutdown"), again and again (docs/faults.md, "Reconnecting after a
  // link cut"). A relative deadline: this bounds a wait on the network, in
  // real time.
  rpc_->channel->WaitForStateChange(
      state,
      gpr_time_from_micros(absl::ToInt64Microseconds(at_most), GPR_TIMESPAN));
  return rpc_->channel->GetState(/*try_to_connect=*/false) ==
         GRPC_CHANNEL_READY;
}

bool ShardLink::WaitUntil(absl::Time t, bool or_connected) {
  for (;;) {
    // Each look at the channel waits up to kConnectPoll on it.
    if (or_connected && AwaitConnected(kConnectPoll)) return !cancelled();
    absl::MutexLock lock(&mu_);
    if (cancelled_) return false;
    const absl::Duration left = t - clock_.Now();
    if (left <= absl::ZeroDuration()) return true;
    if (!or_connected) {
      // Wakes early only when Cancel() flips the flag.
      mu_.AwaitWithTimeout(absl::Condition(&cancelled_),
                           std::min(left, kClockPoll));
    }
  }
}

absl::Status ShardLink::Retry(
    absl::Time deadline, absl::string_view late,
    absl::FunctionRef<absl::Status()> attempt,
    absl::FunctionRef<bool(const absl::Status&)> retry) {
  RetryBackoff backoff(clock_, deadline);
  for (int attempts = 1;; ++attempts) {
    const absl::Status s = attempt();
    if (cancelled()) return absl::CancelledError("cancelled");
    if (s.ok() || !retry(s)) return s;
    // A call on a channel that is not connected fails at once (gRPC calls
    // without wait_for_ready), so the attempt told nothing about the
    // server: the next one goes as soon as the channel connects rather
    // than after a backoff of up to 2 s (docs/faults.md, "Reconnecting
    // after a link cut"). A connected channel's failure is the server's
    // answer (the rank still taken, shutting down): that waits its turn.
    const bool or_connected = !ChannelConnected();
    const std::optional<absl::Time> next = backoff.NextAttempt();
    if (!next.has_value()) {
      if (late.empty()) return s;
      return absl::Status(s.code(), absl::StrCat(late, ": ", s.message()));
    }
    if (backoff.ShouldLog()) {
      options_.log->Info(
          absl::StrCat("waiting (attempt ", attempts, ", for up to ",
                       absl::FormatDuration(absl::Trunc(deadline - clock_.Now(),
                                                        absl::Seconds(1))),
                       " more): ", s.ToString()));
    }
    if (!WaitUntil(*next, or_connected)) {
      return absl::CancelledError("cancelled");
    }
  }
}

absl::StatusOr<JoinReply> ShardLink::Join(const TensorLayout& layout,
                                          const CompressionConfig& compression,
                                          const JoinClaim& claim,
                                          absl::Time deadline,
                                          absl::Time rank_taken_deadline) {
  pb::JoinRequest request;
  *request.mutable_layout() = LayoutToProto(layout);
  *request.mutable_compression() = CompressionToProto(compression);
  request.set_rank(claim.rank);
  request.set_protocol(kProtocolVersion);
  if (claim.replica_round > 0) {
    request.set_replica_round(claim.replica_round);
    request.set_replica_checksum(claim.replica_checksum);
  }
  pb::JoinResponse reply;
  // Not listening yet, or going away; or the rank still taken: retried,
  // each until its own deadline. Anything else is the server's answer and
  // final.
  const absl::Status s = Retry(
      std::max(deadline, rank_taken_deadline), "",
      [&]() -> absl::Status {
        // After `deadline` an attempt only follows a rank-taken answer: the
        // server is there, and the call may take until the rank's own
        // deadline.
        auto context = NewContext(
            clock_.Now() < deadline ? deadline
                                    : std::max(deadline, rank_taken_deadline));
        if (context == nullptr) return absl::CancelledError("cancelled");
        const grpc::Status s = rpc_->stub->Join(context.get(), request, &reply);
        ReleaseContext();
        return FromGrpc(s, absl::StrCat("Join ", address()));
      },
      [&](const absl::Status& s) {
        const absl::Time now = clock_.Now();
        return (ServerAway(s) && now < deadline) ||
               (absl::IsAlreadyExists(s) && now < rank_taken_deadline);
      });
  if (ServerAway(s)) {
    return absl::Status(
        s.code(), absl::StrCat("no server answered in time: ", s.message()));
  }
  if (!s.ok()) return s;
  if (reply.protocol() != kProtocolVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "Join: ", address(), " speaks protocol version ", reply.protocol(),
        " (0: from before versions) but this worker speaks version ",
        kProtocolVersion, " (", kProtocolChange,
        "); run the same effadam release on both sides"));
  }
  if (reply.max_chunk_bytes() < 4 ||
      reply.max_chunk_bytes() > kLargestServerChunkBytes) {
    return absl::FailedPreconditionError(absl::StrCat(
        "Join: the max_chunk_bytes ", reply.max_chunk_bytes(), " of ",
        address(), " is outside what this worker accepts, [4, ",
        kLargestServerChunkBytes, "]"));
  }
  // The server refuses a Join whose settings differ from its own, so a
  // reply naming other settings means the two sides disagree on the protocol.
  if (absl::Status c = CheckCompressionMatches(reply.compression(), compression,
                                               "this worker", address());
      !c.ok()) {
    return absl::InternalError(absl::StrCat(
        "Join: ", address(), " accepted this worker but ", c.message()));
  }
  JoinReply out;
  out.rank = reply.rank();
  out.expected_workers = reply.expected_workers();
  out.num_elements = reply.num_elements();
  out.max_chunk_bytes = reply.max_chunk_bytes();
  out.num_shards = reply.num_shards();
  out.shard = reply.shard();
  out.shard_begin = reply.shard_begin();
  out.shard_size = reply.shard_size();
  out.upload_initial_params = reply.upload_initial_params();
  out.round = reply.round();
  return out;
}

absl::Status ShardLink::Upload(int rank, int64_t round,
                               absl::Span<const float> x,
                               size_t max_chunk_bytes, absl::Time deadline) {
  auto context = NewContext(deadline);
  if (context == nullptr) return absl::CancelledError("cancelled");
  pb::UploadParamsResponse reply;
  auto writer = rpc_->stub->UploadParams(context.get(), &reply);
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
    wire_bytes(TrafficDirection::kJoin) +=
        static_cast<int64_t>(chunk.ByteSizeLong());
  }
  writer->WritesDone();
  const grpc::Status s = writer->Finish();
  ReleaseContext();
  return FromGrpc(s, absl::StrCat("UploadParams to ", address()));
}

absl::Status ShardLink::Fetch(int rank, absl::Span<float> out,
                              size_t max_chunk_bytes, absl::Time deadline,
                              int64_t* round) {
  ChunkRules rules;
  rules.total_bytes = out.size() * sizeof(float);
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
        auto reader = rpc_->stub->FetchParams(context.get(), request);
        // Every chunk names the round x is current for; the first sets it.
        assembler->Start(std::nullopt);
        pb::ParamsChunk chunk;
        while (reader->Read(&chunk)) {
          wire_bytes(TrafficDirection::kJoin) +=
              static_cast<int64_t>(chunk.ByteSizeLong());
          if (!bad.ok()) continue;  // drain, so that Finish may be called
          bad = assembler->Add(chunk.rank(), chunk.round(), chunk.begin(),
                               chunk.values());
          if (!bad.ok()) context->TryCancel();
        }
        const grpc::Status s = reader->Finish();
        ReleaseContext();
        if (s.ok() && bad.ok()) bad = assembler->Finish();
        if (!bad.ok()) return bad;
        return FromGrpc(s, absl::StrCat("FetchParams ", address()));
      },
      // UNAVAILABLE: the first worker has not uploaded x yet (or the server
      // is going away).
      [&](const absl::Status& s) { return bad.ok() && ServerAway(s); });
  if (!bad.ok()) {
    return absl::InternalError(
        absl::StrCat("FetchParams: ", address(), "'s x: ", bad.message()));
  }
  if (!s.ok()) return s;
  const std::string bytes = assembler->TakeBuffer();
  std::memcpy(out.data(), bytes.data(), bytes.size());
  *round = *assembler->round();
  return absl::OkStatus();
}

absl::Status ShardLink::OpenStream() {
  auto stream = std::make_unique<Rpc::Stream>();
  stream->context = NewContext(absl::InfiniteFuture());
  if (stream->context == nullptr) return absl::CancelledError("cancelled");
  stream->rw = rpc_->stub->Train(stream->context.get());
  rpc_->stream = std::move(stream);
  server_finished_ = false;
  return absl::OkStatus();
}

void ShardLink::DrainStream() {
  pb::ServerMessage ignored;
  while (rpc_->stream->rw->Read(&ignored)) {
    wire_bytes(TrafficDirection::kServerToWorker) +=
        static_cast<int64_t>(ignored.ByteSizeLong());
  }
}

absl::Status ShardLink::EndStream(absl::string_view during) {
  // After a failed Read or Write no message is pending, so Finish returns
  // the server's status at once.
  DrainStream();
  const grpc::Status s = rpc_->stream->rw->Finish();
  ReleaseContext();
  rpc_->stream.reset();
  if (s.ok()) {
    server_finished_ = true;
    return absl::OkStatus();
  }
  if (s.error_code() == grpc::StatusCode::CANCELLED && cancelled()) {
    return absl::CancelledError("cancelled");
  }
  return FromGrpc(s, absl::StrCat("Train with ", address(), ", ", during));
}

absl::Status ShardLink::Exchange(int rank, int64_t round,
                                 absl::string_view update, float loss,
                                 size_t max_chunk_bytes,
                                 ChunkAssembler* assembler, int* contributors,
                                 bool* dropped, EarlierDeltas* earlier,
                                 const AwaitUpdateBytes& await_bytes) {
  *dropped = false;
  earlier->count = 0;
  // The server sends the delta segment by segment while this worker's
  // update is still going up, so the delta is read on a second thread at
  // the same time: gRPC allows one reader and one writer on a stream at
  // once, and the server's writes would otherwise stall on flow control
  // until the whole update is written.
  Rpc::Stream& stream = *rpc_->stream;
  absl::Status bad_delta;  // of the reading thread
  bool read_ended = false;
  int64_t read_wire = 0;
  std::thread reader([&] {
    int64_t reading = round;  // later after a late update's missed deltas
    int64_t taken_into = 0;   // the round the server took the update into
    assembler->Start(reading);
    pb::ServerMessage reply;
    const auto refuse = [&](absl::string_view what) {
      bad_delta = absl::InternalError(absl::StrCat("Train: the delta of round ",
                                                   reading, " from ", address(),
                                                   ": ", what));
      // Ends the writer's Write too.
      stream.context->TryCancel();
    };
    while (true) {
      if (!stream.rw->Read(&reply)) {
        read_ended = true;
        return;
      }
      read_wire += static_cast<int64_t>(reply.ByteSizeLong());
      switch (reply.kind()) {
        case pb::ServerMessage::CHUNK:
          if (absl::Status s = assembler->Add(-1, reply.round(), reply.offset(),
                                              reply.payload());
              !s.ok()) {
            return refuse(s.message());
          }
          break;
        case pb::ServerMessage::RESTART:
          assembler->Start(reading);
          break;
        case pb::ServerMessage::COMMIT:
        case pb::ServerMessage::DROP: {
          if (reply.round() != reading) {
            return refuse(absl::StrCat("its end names round ", reply.round()));
          }
          const bool drop = reply.kind() == pb::ServerMessage::DROP;
          if (!drop && !assembler->complete()) {
            return refuse(
                absl::StrCat("COMMIT after ", assembler->received_bytes(),
                             " of ", assembler->rules().total_bytes, " bytes"));
          }
          if (reply.update_taken_into() != 0) {
            // A delta the late update missed; the one of the round it went
            // into (ending with 0) follows.
            const int64_t into = reply.update_taken_into();
            if (into <= reading || (taken_into != 0 && into != taken_into) ||
                into - round > kMostMissedRounds) {
              return refuse(absl::StrCat("the update of round ", round,
                                         " was taken into round ", into));
            }
            taken_into = into;
            const size_t i = earlier->count++;
            if (earlier->bytes.size() <= i) {
              earlier->bytes.resize(i + 1);
              earlier->dropped.resize(i + 1);
            }
            earlier->dropped[i] = drop;
            if (drop) {
              earlier->bytes[i].clear();
            } else {
              earlier->bytes[i] = *assembler->SharedBuffer();
            }
            assembler->Start(++reading);
            break;
          }
          if (reading != (taken_into != 0 ? taken_into : round)) {
            return refuse(absl::StrCat("the update of round ", round,
                                       " was taken into round ", taken_into,
                                       " but the deltas end at ", reading));
          }
          *dropped = drop;
          *contributors = reply.contributors();
          return;
        }
        default:
          return refuse(absl::StrCat("a message of unknown kind ",
                                     static_cast<int>(reply.kind()),
                                     " (a newer protocol?)"));
      }
    }
  });
  pb::WorkerMessage msg;
  msg.set_rank(rank);
  msg.set_round(round);
  size_t offset = 0;
  bool written = true;
  bool abandoned = false;
  do {
    const size_t n = std::min(max_chunk_bytes, update.size() - offset);
    if (await_bytes && !await_bytes(offset + n, &loss)) {
      abandoned = true;
      break;
    }
    msg.set_offset(static_cast<int64_t>(offset));
    msg.set_payload(update.data() + offset, n);
    offset += n;
    msg.set_loss(offset == update.size() ? loss : 0.0f);
    written = stream.rw->Write(msg);
    if (written) {
      wire_bytes(TrafficDirection::kWorkerToServer) +=
          static_cast<int64_t>(msg.ByteSizeLong());
    }
  } while (written && offset < update.size());
  // The reader waits for a delta that will not come.
  if (abandoned) stream.context->TryCancel();
  // A failed Write means the stream is over; the Read fails as well.
  reader.join();
  wire_bytes(TrafficDirection::kServerToWorker) += read_wire;
  if (!bad_delta.ok()) {
    Abandon();
    return bad_delta;
  }
  if (abandoned) {
    Abandon();
    return absl::CancelledError(
        absl::StrCat("Train, round ", round, ": the update was abandoned"));
  }
  if (!written) {
    return EndStream(absl::StrCat("sending the update of round ", round));
  }
  if (read_ended) {
    return EndStream(absl::StrCat("waiting for the delta of round ", round));
  }
  return absl::OkStatus();
}

void ShardLink::Abandon() {
  if (rpc_->stream == nullptr) return;
  // Cancelling tells the server this worker left; its status is moot.
  rpc_->stream->context->TryCancel();
  EndStream("").IgnoreError();
  server_finished_ = false;
}

absl::Status ShardLink::Finish(absl::Duration timeout) {
  if (rpc_->stream == nullptr) return absl::OkStatus();
  Rpc::Stream& stream = *rpc_->stream;
  // WritesDone tells the server this worker is leaving; it then ends the
  // stream. A watchdog bounds the wait on a server that does not.
  stream.rw->WritesDone();
  bool done = false, timed_out = false;
  grpc::ClientContext* context = stream.context.get();
  std::thread watchdog([&] {
    absl::MutexLock lock(&mu_);
    if (!mu_.AwaitWithTimeout(absl::Condition(&done), timeout)) {
      timed_out = true;
      context->TryCancel();
    }
  });
  // Deltas of rounds this worker no longer takes part in may still arrive.
  DrainStream();
  const grpc::Status s = stream.rw->Finish();
  {
    absl::MutexLock lock(&mu_);
    done = true;
  }
  watchdog.join();
  ReleaseContext();
  rpc_->stream.reset();
  if (timed_out) {
    return absl::DeadlineExceededError(absl::StrCat(
        "Train: ", address(), " did not end the stream within ",
        absl::FormatDuration(timeout), " of this worker's last round"));
  }
  if (s.error_code() == grpc::StatusCode::CANCELLED && cancelled()) {
    return absl::CancelledError("cancelled");
  }
  return FromGrpc(s, "Train, closing the stream");
}

}  // namespace effadam
