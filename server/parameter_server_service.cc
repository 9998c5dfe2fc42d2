#include "server/parameter_server_service.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <new>
#include <system_error>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "grpcpp/support/method_handler.h"
#include "server/token_authenticator.h"
#include "transport/chunk_assembler.h"
#include "transport/compression_proto.h"
#include "transport/protocol_version.h"

namespace effadam {
namespace {

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  std::string message(s.message());
  if (message.size() > kMaxStatusMessageBytes) {
    constexpr absl::string_view kCut = " ... (cut; the server log has it all)";
    message.resize(kMaxStatusMessageBytes - kCut.size());
    message.append(kCut.data(), kCut.size());
  }
  // absl and gRPC share the canonical code numbering.
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), message);
}

// A gRPC call as the server's rules see it.
class GrpcCall final : public ServerCall {
 public:
  explicit GrpcCall(grpc::ServerContext* context) : context_(*context) {}
  bool IsCancelled() const override { return context_.IsCancelled(); }
  void Cancel() override { context_.TryCancel(); }
  // gRPC's clock, which is the transport's business, not a rule of the
  // server.
  absl::Duration TimeLeft() const override {
    const std::chrono::system_clock::time_point deadline = context_.deadline();
    if (deadline == std::chrono::system_clock::time_point::max()) {
      return absl::InfiniteDuration();
    }
    return absl::FromChrono(deadline - std::chrono::system_clock::now());
  }

 private:
  grpc::ServerContext& context_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ParameterServerService>>
ParameterServerService::Create(const ServerOptions& options) {
  absl::StatusOr<std::unique_ptr<ParameterServer>> server =
      ParameterServer::Create(options);
  if (!server.ok()) return server.status();
  return std::unique_ptr<ParameterServerService>(
      new ParameterServerService(*std::move(server)));
}

ParameterServerService::ParameterServerService(
    std::unique_ptr<ParameterServer> server)
    : server_(std::move(server)),
      options_(server_->options()),
      clock_(server_->clock()),
      logger_(server_->logger()),
      observer_(server_->observer()),
      rejection_log_(/*burst=*/20, absl::Seconds(10)),
      delta_messages_(options_.max_chunk_bytes) {
  // Train writes the ServerMessages it serialized itself (TrainStream): the
  // generated handler would have gRPC serialize each message once per
  // stream. The same synchronous bidi handler, with the response as bytes
  // (what the generated WithStreamedUnaryMethod_ classes do for theirs); the
  // method's index is its place in the proto's service.
  const int train = v1::WorkerMessage::descriptor()
                        ->file()
                        ->FindServiceByName("ParameterServer")
                        ->FindMethodByName("Train")
                        ->index();
  MarkMethodStreamed(
      train, new grpc::internal::BidiStreamingHandler<
                 ParameterServerService, v1::WorkerMessage, grpc::ByteBuffer>(
                 [](ParameterServerService* service,
                    grpc::ServerContext* context, TrainStream* stream) {
                   return service->ServeTrain(context, stream);
                 },
                 this));
}

ParameterServerService::~ParameterServerService() = default;

grpc::Status ParameterServerService::Finish(const grpc::ServerContext& context,
                                            const char* rpc, int rank,
                                            const absl::Status& status) const {
  if (status.ok()) return grpc::Status::OK;
  if (std::optional<Rejection> why = RejectionOf(status)) {
    observer_.OnRejected(*why);
    int64_t suppressed = 0;
    if (rejection_log_.Allow(clock_.Now(), &suppressed)) {
      logger_.Warning(absl::StrCat(
          "rejected ", rpc, " from ", context.peer(),
          rank >= 0 ? absl::StrCat(" rank ", rank) : std::string(), " (",
          RejectionName(*why), "): ", status.ToString(),
          suppressed > 0
              ? absl::StrCat(" [", suppressed, " more rejections not logged]")
              : std::string()));
    }
  }
  return ToGrpc(status);
}

absl::Status ParameterServerService::Authenticate(
    const grpc::ServerContext& context) const {
  if (options_.authenticator == nullptr) return absl::OkStatus();
  absl::Status s = options_.authenticator->Check(context);
  if (s.ok()) return s;
  return Rejected(Rejection::kUnauthenticated, std::move(s));
}

// --------------------------------------------------------------------- Join

grpc::Status ParameterServerService::Join(grpc::ServerContext* context,
                                          const v1::JoinRequest* request,
                                          v1::JoinResponse* response) {
  absl::Status s = Authenticate(*context);
  if (s.ok()) s = DoJoin(*request, response);
  return Finish(*context, "Join", request->rank(), s);
}

absl::Status ParameterServerService::DoJoin(const v1::JoinRequest& request,
                                            v1::JoinResponse* response) {
  absl::StatusOr<TensorLayout> layout =
      LayoutFromProto(request.layout(), options_.max_num_elements);
  if (!layout.ok()) return Rejected(Rejection::kBadLayout, layout.status());
  if (request.protocol() != kProtocolVersion) {
    return Rejected(
        Rejection::kProtocolMismatch,
        absl::FailedPreconditionError(absl::StrCat(
            "the worker speaks protocol version ", request.protocol(),
            " (0: from before versions) but this server speaks version ",
            kProtocolVersion, " (", kProtocolChange,
            "); run the same effadam release on both sides")));
  }
  if (absl::Status s = CheckCompressionMatches(
          request.compression(), options_.compression, "server", "worker");
      !s.ok()) {
    // InvalidArgument: malformed on its own; else it differs from ours.
    return Rejected(s.code() == absl::StatusCode::kInvalidArgument
                        ? Rejection::kBadCompression
                        : Rejection::kCompressionMismatch,
                    s);
  }
  ParameterServer::JoinArgs args;
  args.rank = request.rank();
  args.layout = *std::move(layout);
  args.replica_round = request.replica_round();
  args.replica_checksum = request.replica_checksum();
  absl::StatusOr<ParameterServer::JoinResult> joined = server_->Join(args);
  if (!joined.ok()) return joined.status();

  response->set_rank(joined->rank);
  response->set_round(joined->round);
  response->set_upload_initial_params(joined->upload);
  response->set_num_elements(joined->num_elements);
  response->set_max_chunk_bytes(static_cast<int64_t>(options_.max_chunk_bytes));
  response->set_protocol(kProtocolVersion);
  response->set_expected_workers(options_.workers);
  *response->mutable_compression() = CompressionToProto(options_.compression);
  response->set_shard(options_.shard);
  response->set_num_shards(options_.num_shards);
  response->set_shard_begin(static_cast<int64_t>(joined->range.begin));
  response->set_shard_size(static_cast<int64_t>(joined->range.size));
  return absl::OkStatus();
}

// ------------------------------------------------------------- UploadParams

grpc::Status ParameterServerService::UploadParams(
    grpc::ServerContext* context, grpc::ServerReader<v1::ParamsChunk>* reader,
    v1::UploadParamsResponse* /*response*/) {
  int rank = -1;
  absl::Status s = Authenticate(*context);
  if (s.ok()) s = DoUploadParams(context, reader, &rank);
  return Finish(*context, "UploadParams", rank, s);
}

absl::Status ParameterServerService::DoUploadParams(
    grpc::ServerContext* context, grpc::ServerReader<v1::ParamsChunk>* reader,
    int* rank) {
  v1::ParamsChunk chunk;
  if (!reader->Read(&chunk)) {
    return Rejected(Rejection::kBadUpload,
                    absl::InvalidArgumentError("the upload has no chunks"));
  }
  *rank = chunk.rank();
  // A refused upload counts the one chunk that was read.
  const int64_t first_wire = static_cast<int64_t>(chunk.ByteSizeLong());
  server_->CountWire(TrafficDirection::kJoin, first_wire);
  GrpcCall call(context);
  absl::StatusOr<ParameterServer::UploadPlan> plan =
      server_->BeginUpload(*rank, call);
  if (!plan.ok()) return plan.status();
  int64_t wire = 0;
  absl::StatusOr<std::vector<float>> x;
  try {
    x = ReadParams(reader, *rank, plan->round, plan->num_elements, &chunk,
                   &wire);
  } catch (const std::bad_alloc&) {
    x = absl::ResourceExhaustedError(
        absl::StrCat("the server cannot hold the ", plan->num_elements,
                     " parameters of this layout"));
  }
  // ReadParams counted the first chunk again.
  server_->CountWire(TrafficDirection::kJoin, wire - first_wire);
  return server_->EndUpload(*rank, *plan, std::move(x));
}

absl::StatusOr<std::vector<float>> ParameterServerService::ReadParams(
    grpc::ServerReader<v1::ParamsChunk>* reader, int rank, int64_t round,
    size_t num_elements, v1::ParamsChunk* chunk, int64_t* wire_bytes) {
  ChunkRules rules;
  rules.total_bytes = num_elements * sizeof(float);
  rules.max_chunk_bytes = options_.max_chunk_bytes;
  rules.unit = sizeof(float);
  rules.finite_float32 = true;
  rules.rank = rank;
  // The layout was only declared: memory follows the bytes that arrive.
  rules.reserve_total = false;
  absl::StatusOr<ChunkAssembler> assembler = ChunkAssembler::Create(rules);
  if (!assembler.ok()) return assembler.status();
  assembler->Start(round);
  // A chunk after the last one runs past the end, so read to the end.
  while (true) {
    *wire_bytes += static_cast<int64_t>(chunk->ByteSizeLong());
    if (!assembler
             ->Add(chunk->rank(), chunk->round(), chunk->begin(),
                   chunk->values())
             .ok() ||
        !reader->Read(chunk)) {
      break;
    }
    server_->UploadProgress();
  }
  if (absl::Status s = assembler->Finish(); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("initial parameters: ", s.message()));
  }
  // Little-endian float32 on the wire, the byte order of every host the
  // codecs run on.
  const std::string bytes = assembler->TakeBuffer();
  std::vector<float> x(num_elements);
  std::memcpy(x.data(), bytes.data(), bytes.size());
  return x;
}

// -------------------------------------------------------------- FetchParams

grpc::Status ParameterServerService::FetchParams(
    grpc::ServerContext* context, const v1::FetchParamsRequest* request,
    grpc::ServerWriter<v1::ParamsChunk>* writer) {
  absl::Status s = Authenticate(*context);
  if (s.ok()) {
    s = DoFetchParams(context, *request, writer);
    if (context->IsCancelled()) server_->FetchClientGone(request->rank());
  }
  return Finish(*context, "FetchParams", request->rank(), s);
}

absl::Status ParameterServerService::DoFetchParams(
    grpc::ServerContext* context, const v1::FetchParamsRequest& request,
    grpc::ServerWriter<v1::ParamsChunk>* writer) {
  const int rank = request.rank();
  absl::StatusOr<ParameterServer::ParamsCopy> params =
      server_->WaitForParams(rank, GrpcCall(context));
  if (!params.ok()) return params.status();
  const std::vector<float>& x = params->x;
  const size_t per_chunk = options_.max_chunk_bytes / sizeof(float);
  int64_t written = 0;
  int64_t wire = 0;
  bool ok = true;
  v1::ParamsChunk chunk;
  for (size_t begin = 0; begin < x.size() && ok; begin += per_chunk) {
    const size_t count = std::min(per_chunk, x.size() - begin);
    chunk.set_rank(rank);
    chunk.set_begin(static_cast<int64_t>(begin));
    chunk.set_round(params->round);
    chunk.set_values(reinterpret_cast<const char*>(x.data() + begin),
                     count * sizeof(float));
    ok = writer->Write(chunk);
    if (ok) {
      written += static_cast<int64_t>(count * sizeof(float));
      wire += static_cast<int64_t>(chunk.ByteSizeLong());
    }
  }
  server_->CountWire(TrafficDirection::kJoin, wire);
  server_->EndFetch(rank, params->tracked, written);
  if (!ok) {
    return absl::CancelledError("the client went away during FetchParams");
  }
  return absl::OkStatus();
}

// -------------------------------------------------------------------- Train

absl::Status ParameterServerService::SendRound(const ServerCall& call,
                                               TrainStream* stream,
                                               int64_t round,
                                               int64_t update_taken_into,
                                               const std::atomic<bool>& stop) {
  const size_t chunk = options_.max_chunk_bytes;
  int attempt = -1;  // the attempt whose chunks are being sent; -1: none
  size_t sent = 0;   // its messages written
  while (true) {
    // The bytes of the next chunk.
    const size_t want = (sent + 1) * chunk;
    absl::StatusOr<std::optional<ParameterServer::DeltaProgress>> next =
        server_->AwaitDelta(round, attempt, want, call, stop);
    if (!next.ok()) return next.status();
    if (!next->has_value()) return absl::OkStatus();  // stopped
    const ParameterServer::DeltaProgress& p = **next;
    int64_t wire = 0;  // of the messages written, also when one fails
    absl::Status s;
    if (p.closed && p.closed->dropped) {
      s = WriteRoundMark(stream, round, v1::ServerMessage::DROP,
                         p.closed->contributors, update_taken_into, &wire);
      server_->CountWire(TrafficDirection::kServerToWorker, wire);
      return s;
    }
    const DeltaView view =
        p.closed ? DeltaView{round, p.closed->attempt, p.closed->delta,
                             p.ready_bytes, p.closed->contributors}
                 : DeltaView{round, p.closing.attempt, p.closing.delta,
                             p.ready_bytes, 0};
    // The round started again over fewer updates: what was sent is void.
    if (attempt >= 0 && view.attempt != attempt && sent > 0) {
      s = WriteRoundMark(stream, round, v1::ServerMessage::RESTART, 0, 0,
                         &wire);
      sent = 0;
    }
    attempt = view.attempt;
    size_t ready = 0;
    std::shared_ptr<const std::vector<grpc::ByteBuffer>> messages =
        delta_messages_.For(view, &ready);
    if (s.ok()) s = WriteDelta(stream, round, *messages, sent, ready, &wire);
    sent = ready;
    if (s.ok() && p.closed) {
      s = WriteRoundMark(stream, round, v1::ServerMessage::COMMIT,
                         p.closed->contributors, update_taken_into, &wire);
    }
    server_->CountWire(TrafficDirection::kServerToWorker, wire);
    if (!s.ok()) return s;
    if (p.closed) {
      server_->DeltaSent(*p.closed);
      return absl::OkStatus();
    }
  }
}

absl::Status ParameterServerService::RunTrain(grpc::ServerContext* context,
                                              TrainStream* stream, int rank,
                                              v1::WorkerMessage* msg) {
  absl::StatusOr<UpdateReader> reader = UpdateReader::Create(
      server_->worker_codec(), options_.max_chunk_bytes, rank);
  if (!reader.ok()) return reader.status();
  const auto count_up = [this](int64_t bytes) {
    server_->CountWire(TrafficDirection::kWorkerToServer, bytes);
  };
  const GrpcCall call(context);
  int64_t next = 0;  // the round this stream must send; 0 before the first
  while (true) {
    // *msg is the first chunk of an update.
    const int64_t round = msg->round();
    if (next != 0 && round != next) {
      return Rejected(Rejection::kWrongRound,
                      absl::FailedPreconditionError(
                          absl::StrCat("rank ", rank, " sent round ", round,
                                       "; after the delta of round ", next - 1,
                                       " it must send round ", next)));
    }
    // Fails fast on a hopeless round, before reading a whole update. A
    // late update counts in the current round (`target`): the stream then
    // sends the deltas of the rounds it missed first.
    absl::StatusOr<int64_t> placed = server_->PlaceUpdate(rank, round);
    if (!placed.ok()) return placed.status();
    const int64_t target = *placed;
    // The delta goes out on a second thread while the update comes in.
    std::atomic<bool> stop{false};
    absl::Status sent;
    std::thread sender;
    try {
      sender = std::thread([&] {
        for (int64_t missed = round; missed < target; ++missed) {
          sent = SendRound(call, stream, missed, target, stop);
          if (!sent.ok() || stop) return;
        }
        sent = SendRound(call, stream, target, 0, stop);
      });
    } catch (const std::system_error& e) {
      // Out of threads (a pids limit): this stream ends, the server goes on.
      return absl::ResourceExhaustedError(absl::StrCat(
          "no thread to send the delta of round ", round, ": ", e.what()));
    }
    absl::StatusOr<std::shared_ptr<const std::string>> update = reader->Read(
        stream, round, msg, count_up,
        [&](const std::shared_ptr<const std::string>& buffer, size_t segments) {
          return server_->SubmitProgress(rank, target, buffer, segments,
                                         msg->loss());
        });
    if (!update.ok()) {
      server_->AbandonUpdate(rank, target);
      stop = true;
      server_->Wake();
    }
    sender.join();
    if (!update.ok()) return update.status();
    if (!sent.ok()) return sent;
    if (options_.rounds > 0 && target >= options_.rounds) {
      return absl::OkStatus();
    }
    next = target + 1;
    // A worker that closes its side between rounds leaves cleanly.
    if (!stream->Read(msg)) return absl::OkStatus();
    server_->CountWire(TrafficDirection::kWorkerToServer,
                       static_cast<int64_t>(msg->ByteSizeLong()));
  }
}

grpc::Status ParameterServerService::ServeTrain(grpc::ServerContext* context,
                                                TrainStream* stream) {
  int rank = -1;
  absl::Status s = Authenticate(*context);
  if (s.ok()) s = DoTrain(context, stream, &rank);
  return Finish(*context, "Train", rank, s);
}

absl::Status ParameterServerService::DoTrain(grpc::ServerContext* context,
                                             TrainStream* stream, int* rank) {
  v1::WorkerMessage msg;
  if (!stream->Read(&msg)) return absl::OkStatus();
  *rank = msg.rank();
  server_->CountWire(TrafficDirection::kWorkerToServer,
                     static_cast<int64_t>(msg.ByteSizeLong()));
  if (absl::Status s = server_->BeginTrain(*rank); !s.ok()) return s;
  const absl::Status result = RunTrain(context, stream, *rank, &msg);
  server_->EndTrain(*rank, result);
  return result;
}

// ------------------------------------------------------------------- Status

grpc::Status ParameterServerService::Status(
    grpc::ServerContext* context, const v1::StatusRequest* /*request*/,
    v1::StatusResponse* response) {
  if (absl::Status s = Authenticate(*context); !s.ok()) {
    return Finish(*context, "Status", -1, s);
  }
  const ServerSummary s = server_->StatusNow();
  response->set_round(s.round);
  response->set_live_workers(s.live_workers);
  response->set_expected_workers(options_.workers);
  response->set_num_elements(s.num_elements);
  response->set_bytes_worker_to_server(s.traffic.up().payload);
  response->set_bytes_server_to_worker(s.traffic.down().payload);
  response->set_bytes_join(s.traffic.join().payload);
  response->set_fp32_equivalent_bytes(s.traffic.fp32_equivalent());
  response->set_params_checksum(s.params_checksum);
  response->set_awaiting_replicas(s.awaiting_replicas);
  return grpc::Status::OK;
}

}  // namespace effadam
