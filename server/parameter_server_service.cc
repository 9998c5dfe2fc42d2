#include "server/parameter_server_service.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <new>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/checksum.h"
#include "core/codec_spec.h"
#include "server/chunk_streams.h"
#include "transport/chunk_assembler.h"
#include "transport/compression_proto.h"

namespace effadam {
namespace {

// Waiters wake at least this often (real time) to notice a cancelled call
// and to apply the timing rules against the clock, which may be a fake one
// that jumps.
constexpr absl::Duration kPoll = absl::Milliseconds(100);

// FetchParams gives up this long before the call's deadline, so the client
// sees UNAVAILABLE (retry) rather than DEADLINE_EXCEEDED.
constexpr absl::Duration kDeadlineMargin = absl::Milliseconds(50);

// A joined rank keeps its place this long without a Train stream (or an
// Upload/Fetch call), and an uploader may pause this long: at least a
// minute, so a worker that loads its data or computes its first gradient
// slowly is not mistaken for a dead one.
absl::Duration IdleGrace(absl::Duration round_timeout) {
  return std::max(round_timeout, absl::Seconds(60));
}

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

// How long a call may still take by its deadline (gRPC's clock, which is
// the transport's business, not a rule of the service); infinite without.
absl::Duration CallTimeLeft(const grpc::ServerContext& context) {
  const std::chrono::system_clock::time_point deadline = context.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) {
    return absl::InfiniteDuration();
  }
  return absl::FromChrono(deadline - std::chrono::system_clock::now());
}

}  // namespace

absl::StatusOr<std::unique_ptr<ParameterServerService>>
ParameterServerService::Create(const ServerOptions& options) {
  // The bound keeps the per-rank table small; no cluster comes near it.
  if (options.workers <= 0 || options.workers > 65536) {
    return absl::InvalidArgumentError(
        absl::StrCat("--workers must be in [1, 65536], got ", options.workers));
  }
  if (options.rounds < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--rounds must be >= 0, got ", options.rounds));
  }
  if (options.round_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--round_timeout must be > 0, got ",
                     absl::FormatDuration(options.round_timeout)));
  }
  if (options.num_shards < 1 || options.shard < 0 ||
      options.shard >= options.num_shards) {
    return absl::InvalidArgumentError(
        absl::StrCat("--shard must be in [0, --num_shards), got shard ",
                     options.shard, " of ", options.num_shards));
  }
  if (options.max_chunk_bytes < sizeof(float)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_chunk_bytes must hold at least one float32, got ",
                     options.max_chunk_bytes));
  }
  return std::unique_ptr<ParameterServerService>(
      new ParameterServerService(options));
}

namespace {

Membership::Rules MembershipRules(const ServerOptions& o) {
  Membership::Rules r;
  r.workers = o.workers;
  r.join_idle_grace = IdleGrace(o.round_timeout);
  r.upload_stall_timeout = IdleGrace(o.round_timeout);
  return r;
}

RoundCoordinator::Rules RoundRules(const ServerOptions& o) {
  RoundCoordinator::Rules r;
  r.workers = o.workers;
  r.rounds = o.rounds;
  r.round_timeout = o.round_timeout;
  r.replica_wait = IdleGrace(o.round_timeout);
  r.checkpoint_every = o.checkpoint_every;
  return r;
}

}  // namespace

ParameterServerService::ParameterServerService(const ServerOptions& options)
    : options_(options),
      clock_(options.clock != nullptr ? *options.clock : Clock::Real()),
      logger_(options.logger != nullptr ? *options.logger : Logger::Discard()),
      observer_(options.observer != nullptr ? *options.observer
                                            : ServerObserver::None()),
      delta_log_(options.delta_log != nullptr ? *options.delta_log
                                              : DeltaLog::None()),
      rejection_log_(/*burst=*/20, absl::Seconds(10)),
      membership_(MembershipRules(options)),
      rounds_(RoundRules(options), membership_, clock_, observer_, logger_,
              delta_log_),
      delta_messages_(options.max_chunk_bytes) {}

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

absl::Status ParameterServerService::ServingLocked() const {
  if (shutting_down_) {
    return absl::UnavailableError("the server is shutting down");
  }
  return rounds_.fatal();
}

void ParameterServerService::CountWireLocked(TrafficDirection direction,
                                             int64_t bytes) {
  traffic_[direction].wire += bytes;
  observer_.OnWireBytes(direction, bytes);
}

void ParameterServerService::CountWire(TrafficDirection direction,
                                       int64_t bytes) {
  absl::MutexLock lock(&mu_);
  CountWireLocked(direction, bytes);
}

void ParameterServerService::CountPayloadLocked(TrafficDirection direction,
                                                int64_t payload_bytes,
                                                int64_t fp32_bytes) {
  traffic_[direction].payload += payload_bytes;
  traffic_[direction].fp32 += fp32_bytes;
  observer_.OnPayloadBytes(direction, payload_bytes, fp32_bytes);
}

void ParameterServerService::WaitLocked(absl::Time deadline) {
  changed_.WaitWithTimeout(
      &mu_, std::clamp(deadline - clock_.Now(), absl::ZeroDuration(), kPoll));
}

// ---------------------------------------------------------------- membership

void ParameterServerService::TickLocked() {
  const absl::Time now = clock_.Now();
  for (const Membership::Expired& e : membership_.Expire(now)) {
    if (e.stalled_uploader && upload_call_ != nullptr) {
      upload_call_->TryCancel();
      upload_call_ = nullptr;  // its handler returns without touching it
    }
    LeaveLocked(e.rank,
                e.stalled_uploader
                    ? "it was asked to upload the initial parameters and "
                      "sent nothing for too long; the next Join uploads"
                    : "joined but sent nothing on a Train stream for too "
                      "long");
  }
  const int64_t closed_before = rounds_.rounds_closed();
  rounds_.MaybeClose();
  if (rounds_.rounds_closed() != closed_before) changed_.SignalAll();
}

void ParameterServerService::ResetIfEmptyLocked() {
  if (rounds_.started() || !membership_.Empty()) return;
  model_.reset();
  membership_.ResetUploader();
}

void ParameterServerService::LeaveLocked(int rank, absl::string_view why) {
  membership_.Leave(rank);
  // After the last round every stream ends; that is no news.
  if (!rounds_.final_closed_at().has_value()) {
    logger_.Info(absl::StrCat("rank ", rank, " left (", membership_.LiveCount(),
                              "/", options_.workers, " live): ", why));
  }
  observer_.OnLiveWorkers(membership_.LiveCount());
  ResetIfEmptyLocked();
  rounds_.MaybeClose();
  changed_.SignalAll();
}

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
  if (absl::Status s = CheckCompressionMatches(
          request.compression(), options_.compression, "server", "worker");
      !s.ok()) {
    // InvalidArgument: malformed on its own; else it differs from ours.
    return Rejected(s.code() == absl::StatusCode::kInvalidArgument
                        ? Rejection::kBadCompression
                        : Rejection::kCompressionMismatch,
                    s);
  }

  absl::MutexLock lock(&mu_);
  if (absl::Status s = ServingLocked(); !s.ok()) return s;
  if (rounds_.final_closed_at().has_value()) {
    // OUT_OF_RANGE: a worker that was away takes the final x and ends too.
    return Rejected(
        Rejection::kTrainingEnded,
        absl::OutOfRangeError(absl::StrCat("training has ended after round ",
                                           options_.rounds, " (--rounds)")));
  }
  TickLocked();
  if (model_.has_value() && model_->layout != *layout) {
    return Rejected(Rejection::kLayoutMismatch,
                    absl::FailedPreconditionError(absl::StrCat(
                        "the layout differs from the server's: server has [",
                        model_->layout.DebugString(), "], worker sent [",
                        layout->DebugString(), "]")));
  }
  std::optional<Model> new_model;
  if (!model_.has_value()) {
    // A codec refuses a layout it cannot encode (or split into the shards):
    // the layout's fault, since the settings are the server's own.
    absl::StatusOr<Model> m = ModelFor(*std::move(layout));
    if (!m.ok()) return Rejected(Rejection::kBadLayout, m.status());
    new_model = *std::move(m);
  }
  const int64_t replica_round = request.replica_round();
  if (replica_round < 0) {
    return Rejected(Rejection::kWrongRound,
                    absl::InvalidArgumentError(absl::StrCat(
                        "replica_round must be >= 0 (0: no replica), got ",
                        replica_round)));
  }
  // Parameters are wanted when there are none, or when the worker's
  // replica is newer than x (a restarted server).
  const bool wanted =
      !rounds_.started() || rounds_.AcceptsReplica(replica_round);
  bool upload = false;
  absl::StatusOr<int> rank =
      membership_.Join(request.rank(), wanted, clock_.Now(), &upload);
  if (!rank.ok()) return rank.status();
  if (new_model.has_value()) model_ = *std::move(new_model);
  if (upload) {
    replica_claim_.reset();
    if (replica_round > 0) {
      replica_claim_ =
          ReplicaClaim{*rank, replica_round, request.replica_checksum()};
    }
  }

  response->set_rank(*rank);
  response->set_round(rounds_.round());
  response->set_upload_initial_params(upload);
  response->set_num_elements(
      static_cast<int64_t>(model_->layout.num_elements()));
  response->set_max_chunk_bytes(static_cast<int64_t>(options_.max_chunk_bytes));
  response->set_expected_workers(options_.workers);
  *response->mutable_compression() = CompressionToProto(options_.compression);
  response->set_shard(options_.shard);
  response->set_num_shards(options_.num_shards);
  response->set_shard_begin(static_cast<int64_t>(model_->codecs.range.begin));
  response->set_shard_size(static_cast<int64_t>(model_->codecs.range.size));
  observer_.OnLiveWorkers(membership_.LiveCount());
  std::string note;
  if (replica_round > 0) {
    note = absl::StrCat(
        "; its replica is at round ", replica_round, ", x at ",
        rounds_.started() ? absl::StrCat(rounds_.round()) : std::string("none"),
        upload ? ": it uploads its replica"
               : ": x is kept (as new, or rounds closed "
                 "since the start)");
  } else if (upload) {
    note = "; it uploads the initial parameters";
  }
  logger_.Info(absl::StrCat("rank ", *rank, " joined (",
                            membership_.LiveCount(), "/", options_.workers,
                            " live)", note));
  return absl::OkStatus();
}

// ---------------------------------------------------------- initial params

absl::Status ParameterServerService::ReadParams(
    grpc::ServerReader<v1::ParamsChunk>* reader, int rank, int64_t round,
    size_t num_elements, v1::ParamsChunk* chunk, std::vector<float>* x,
    int64_t* wire_bytes) {
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
    absl::MutexLock lock(&mu_);
    membership_.UploadProgress(clock_.Now());
  }
  if (absl::Status s = assembler->Finish(); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("initial parameters: ", s.message()));
  }
  // Little-endian float32 on the wire, the byte order of every host the
  // codecs run on.
  const std::string bytes = assembler->TakeBuffer();
  x->resize(num_elements);
  std::memcpy(x->data(), bytes.data(), bytes.size());
  return absl::OkStatus();
}

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
  const int64_t first_wire = static_cast<int64_t>(chunk.ByteSizeLong());
  size_t n = 0;
  int64_t upload_id = 0;
  std::optional<ReplicaClaim> claim;  // the replica this rank declared
  {
    absl::MutexLock lock(&mu_);
    // A refused upload counts the one chunk that was read.
    CountWireLocked(TrafficDirection::kJoin, first_wire);
    if (shutting_down_) {
      return absl::UnavailableError("the server is shutting down");
    }
    if (replica_claim_.has_value() && replica_claim_->rank == *rank) {
      claim = replica_claim_;
    }
    if (rounds_.started() &&
        !(claim.has_value() && rounds_.AcceptsReplica(claim->round))) {
      return Rejected(Rejection::kBadUpload,
                      absl::FailedPreconditionError(
                          "the initial parameters are already uploaded"));
    }
    absl::StatusOr<int64_t> id = membership_.BeginUpload(*rank, clock_.Now());
    if (!id.ok()) return id.status();
    upload_id = *id;
    upload_call_ = context;
    n = model_->codecs.worker->num_elements();  // this shard's part of x
  }
  // Chunks of the initial parameters carry round 0; a replica's, its round.
  const int64_t round = claim.has_value() ? claim->round : 0;
  std::vector<float> x;
  int64_t wire = 0;
  absl::Status s;
  try {
    s = ReadParams(reader, *rank, round, n, &chunk, &x, &wire);
  } catch (const std::bad_alloc&) {
    s = absl::ResourceExhaustedError(absl::StrCat(
        "the server cannot hold the ", n, " parameters of this layout"));
  }

  absl::MutexLock lock(&mu_);
  // ReadParams counted the first chunk again.
  CountWireLocked(TrafficDirection::kJoin, wire - first_wire);
  if (!membership_.EndUpload(upload_id, *rank, clock_.Now())) {
    // Given up on as stalled (and cancelled): its rank left then, and may
    // be a new incarnation by now.
    return Rejected(Rejection::kBadUpload,
                    absl::DeadlineExceededError(
                        "the upload stalled and was given up; join again"));
  }
  upload_call_ = nullptr;
  if (s.ok() && claim.has_value() && ParamsChecksum(x) != claim->checksum) {
    s = absl::InvalidArgumentError(
        absl::StrCat("the replica's params_checksum is ", ParamsChecksum(x),
                     ", not the ", claim->checksum, " its Join declared"));
  }
  if (s.ok() && !shutting_down_)
    s = StartFromUpload(*rank, round, std::move(x));
  if (s.ok()) {
    CountPayloadLocked(TrafficDirection::kJoin,
                       static_cast<int64_t>(n * sizeof(float)), 0);
    changed_.SignalAll();
    return absl::OkStatus();
  }
  if (s.ok()) s = absl::UnavailableError("the server is shutting down");
  // Nothing is kept. The uploader must join again (so its rank is freed),
  // and the next Join is told to upload.
  if (membership_.IsLive(*rank)) {
    LeaveLocked(*rank, absl::StrCat("upload failed: ", s.message()));
  }
  ResetIfEmptyLocked();
  if (absl::IsResourceExhausted(s) || absl::IsUnavailable(s)) {
    return s;  // the server's limits or state, not the upload's bytes
  }
  return Rejected(Rejection::kBadUpload, s);
}

absl::Status ParameterServerService::StartFromUpload(int rank, int64_t round,
                                                     std::vector<float> x) {
  RoundEngineState state;
  state.round = std::max<int64_t>(round, 1);
  state.params = std::move(x);  // E starts at zero
  // The initial parameters begin a new history: no logged delta is theirs
  // (the first round closed removes the old records).
  const int64_t replayed = round > 0 ? ReplayLoggedDeltas(*model_, &state) : 0;
  absl::StatusOr<std::unique_ptr<RoundEngine>> engine =
      RoundEngine::Restore(model_->codecs.worker, model_->codecs.server,
                           std::move(state), EngineOptions());
  if (!engine.ok()) return engine.status();
  const std::string checksum = ParamsChecksum((*engine)->params());
  const std::string from_log =
      replayed > 0 ? absl::StrCat(" and ", replayed,
                                  " round(s) from the delta log (now round ",
                                  (*engine)->round(), ")")
                   : "";
  if (!rounds_.started()) {
    Checkpoint identity;
    identity.layout = model_->layout;
    identity.compression = CompressionToProto(options_.compression);
    identity.shard = options_.shard;
    identity.num_shards = options_.num_shards;
    // A replica's rounds all closed, on this server's earlier life.
    rounds_.Start(*std::move(engine), std::move(identity),
                  /*rounds_closed=*/std::max<int64_t>(round - 1, 0) + replayed,
                  /*resumed=*/round > 0);
    if (round > 0) {
      logger_.Info(absl::StrCat("x recovered from rank ", rank,
                                "'s replica at round ", round, from_log,
                                " (no checkpoint), params_checksum ", checksum,
                                "; the server's error memory starts at zero"));
    }
    return absl::OkStatus();
  }
  // A round may have closed while the replica was read.
  if (!rounds_.AcceptsReplica(round)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the replica of round ", round, " is no longer newer than x (round ",
        rounds_.round(), ")"));
  }
  const int64_t was = rounds_.round();
  rounds_.Recover(*std::move(engine));
  logger_.Info(absl::StrCat(
      "x recovered from rank ", rank, "'s replica at round ", round, from_log,
      ", newer than x at round ", was, ", params_checksum ", checksum,
      "; the server's error memory starts at zero"));
  return absl::OkStatus();
}

int64_t ParameterServerService::ReplayLoggedDeltas(const Model& model,
                                                   RoundEngineState* state) {
  return ReplayDeltas(delta_log_, *model.codecs.server, state);
}

grpc::Status ParameterServerService::FetchParams(
    grpc::ServerContext* context, const v1::FetchParamsRequest* request,
    grpc::ServerWriter<v1::ParamsChunk>* writer) {
  absl::Status s = Authenticate(*context);
  if (s.ok()) {
    s = DoFetchParams(context, *request, writer);
    if (context->IsCancelled()) {
      absl::MutexLock lock(&mu_);
      FetchClientGoneLocked(request->rank());
    }
  }
  return Finish(*context, "FetchParams", request->rank(), s);
}

absl::Status ParameterServerService::DoFetchParams(
    grpc::ServerContext* context, const v1::FetchParamsRequest& request,
    grpc::ServerWriter<v1::ParamsChunk>* writer) {
  const int rank = request.rank();
  std::vector<float> x;
  int64_t round = 0;
  bool tracked = false;  // a live rank's call, which keeps it from expiring
  {
    absl::MutexLock lock(&mu_);
    const absl::Time give_up =
        clock_.Now() + std::min(options_.round_timeout,
                                CallTimeLeft(*context) - kDeadlineMargin);
    while (!rounds_.started() && !shutting_down_ && !context->IsCancelled() &&
           clock_.Now() < give_up) {
      TickLocked();
      if (rounds_.started()) break;
      if (membership_.IsLive(rank) && membership_.uploader() < 0 &&
          !membership_.upload_active()) {
        // The uploader went away (failed, stalled, left) before x arrived:
        // a live worker waiting here joins again, and the first to do so
        // uploads its replica.
        LeaveLocked(rank, "nobody is uploading the initial parameters");
        return absl::AbortedError(
            "nobody is uploading the initial parameters any more (the "
            "uploader went away); join again: the next Join uploads them");
      }
      WaitLocked(give_up);
    }
    if (shutting_down_) {
      return absl::UnavailableError("the server is shutting down");
    }
    if (!rounds_.started()) {
      return absl::UnavailableError(
          "the initial parameters have not been uploaded yet; retry");
    }
    // A client that already went away costs no copy of x.
    if (context->IsCancelled()) {
      return absl::CancelledError("the client went away during FetchParams");
    }
    // One consistent snapshot: x as of the start of `round`.
    const RoundEngine& engine = *rounds_.engine();
    x.assign(engine.params().begin(), engine.params().end());
    round = engine.round();
    tracked = membership_.BeginCall(rank);
  }
  const size_t per_chunk = options_.max_chunk_bytes / sizeof(float);
  int64_t written = 0;
  int64_t wire = 0;
  bool ok = true;
  v1::ParamsChunk chunk;
  for (size_t begin = 0; begin < x.size() && ok; begin += per_chunk) {
    const size_t count = std::min(per_chunk, x.size() - begin);
    chunk.set_rank(rank);
    chunk.set_begin(static_cast<int64_t>(begin));
    chunk.set_round(round);
    chunk.set_values(reinterpret_cast<const char*>(x.data() + begin),
                     count * sizeof(float));
    ok = writer->Write(chunk);
    if (ok) {
      written += static_cast<int64_t>(count * sizeof(float));
      wire += static_cast<int64_t>(chunk.ByteSizeLong());
    }
  }
  absl::MutexLock lock(&mu_);
  CountWireLocked(TrafficDirection::kJoin, wire);
  CountPayloadLocked(TrafficDirection::kJoin, written, 0);
  if (tracked) membership_.EndCall(rank, clock_.Now());
  if (!ok) {
    return absl::CancelledError("the client went away during FetchParams");
  }
  return absl::OkStatus();
}

void ParameterServerService::FetchClientGoneLocked(int rank) {
  // A worker killed while it fetched x would otherwise keep its rank for
  // the idle grace: its restarted process would be refused and rounds would
  // wait for it.
  if (membership_.ClientWentAway(rank)) {
    LeaveLocked(rank,
                "its FetchParams call was cancelled before it opened its "
                "Train stream (the worker went away)");
  }
}

// ------------------------------------------------------------------- rounds

absl::StatusOr<ClosedRound> ParameterServerService::AcceptAndWait(
    grpc::ServerContext* context, int rank, int64_t round,
    std::shared_ptr<const std::string> update, float loss) {
  const int64_t size = static_cast<int64_t>(update->size());
  absl::MutexLock lock(&mu_);
  if (absl::Status s = ServingLocked(); !s.ok()) return s;
  const int64_t fp32 = static_cast<int64_t>(
      rounds_.engine()->worker_codec().num_elements() * sizeof(float));
  if (absl::Status s = rounds_.Accept(rank, round, std::move(update),
                                      /*validated=*/true, loss);
      !s.ok()) {
    return s;
  }
  CountPayloadLocked(TrafficDirection::kWorkerToServer, size, fp32);
  changed_.SignalAll();
  while (true) {
    if (std::optional<absl::StatusOr<ClosedRound>> outcome =
            rounds_.Outcome(round)) {
      return *std::move(outcome);
    }
    if (shutting_down_) {
      return absl::UnavailableError("the server is shutting down");
    }
    if (context->IsCancelled()) {
      return absl::CancelledError("the worker cancelled its Train stream");
    }
    TickLocked();
    if (rounds_.Outcome(round).has_value()) continue;
    WaitLocked(rounds_.TimeoutAt().value_or(absl::InfiniteFuture()));
  }
}

absl::Status ParameterServerService::SendDelta(TrainStream* stream,
                                               const ClosedRound& closed) {
  int64_t wire = 0;  // of the chunks written, also when a later one fails
  absl::Status s = WriteDelta(stream, *delta_messages_.For(closed), &wire);
  absl::MutexLock lock(&mu_);
  CountWireLocked(TrafficDirection::kServerToWorker, wire);
  if (!s.ok()) return s;
  CountPayloadLocked(
      TrafficDirection::kServerToWorker,
      static_cast<int64_t>(closed.delta->size()),
      static_cast<int64_t>(model_->codecs.server->num_elements() *
                           sizeof(float)));
  return absl::OkStatus();
}

absl::Status ParameterServerService::RunTrain(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::ServerMessage, v1::WorkerMessage>* stream,
    int rank, v1::WorkerMessage* msg) {
  std::shared_ptr<const UpdateCodec> codec;
  {
    absl::MutexLock lock(&mu_);
    codec = model_->codecs.worker;  // fixed for good once rounds started
  }
  absl::StatusOr<UpdateReader> reader =
      UpdateReader::Create(codec, options_.max_chunk_bytes, rank);
  if (!reader.ok()) return reader.status();
  const auto count_up = [this](int64_t bytes) {
    CountWire(TrafficDirection::kWorkerToServer, bytes);
  };
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
    if (next == 0) {
      // Fail fast on a hopeless round, before reading a whole update.
      absl::MutexLock lock(&mu_);
      if (absl::Status s = ServingLocked(); !s.ok()) return s;
      if (absl::Status s = rounds_.CheckRound(rank, round); !s.ok()) return s;
    }
    absl::StatusOr<std::shared_ptr<const std::string>> update =
        reader->Read(stream, round, msg, count_up);
    if (!update.ok()) return update.status();
    absl::StatusOr<ClosedRound> closed =
        AcceptAndWait(context, rank, round, *std::move(update), msg->loss());
    if (!closed.ok()) return closed.status();
    if (absl::Status s = SendDelta(stream, *closed); !s.ok()) return s;
    if (options_.rounds > 0 && round >= options_.rounds) {
      return absl::OkStatus();
    }
    next = round + 1;
    // A worker that closes its side between rounds leaves cleanly.
    if (!stream->Read(msg)) return absl::OkStatus();
    CountWire(TrafficDirection::kWorkerToServer,
              static_cast<int64_t>(msg->ByteSizeLong()));
  }
}

grpc::Status ParameterServerService::Train(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::ServerMessage, v1::WorkerMessage>* stream) {
  int rank = -1;
  absl::Status s = Authenticate(*context);
  if (s.ok()) s = DoTrain(context, stream, &rank);
  return Finish(*context, "Train", rank, s);
}

absl::Status ParameterServerService::DoTrain(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::ServerMessage, v1::WorkerMessage>* stream,
    int* rank) {
  v1::WorkerMessage msg;
  if (!stream->Read(&msg)) return absl::OkStatus();
  *rank = msg.rank();
  {
    absl::MutexLock lock(&mu_);
    CountWireLocked(TrafficDirection::kWorkerToServer,
                    static_cast<int64_t>(msg.ByteSizeLong()));
    if (absl::Status s = ServingLocked(); !s.ok()) return s;
    if (!rounds_.started()) {
      return Rejected(Rejection::kNotReady,
                      absl::FailedPreconditionError(
                          "the initial parameters have not been uploaded yet"));
    }
    if (absl::Status s = membership_.BeginTrain(*rank); !s.ok()) return s;
  }
  const absl::Status result = RunTrain(context, stream, *rank, &msg);
  absl::MutexLock lock(&mu_);
  // Streams that a shutdown or a failed round engine ends are the server's
  // doing, not a worker dropping out.
  if (!result.ok() && ServingLocked().ok()) observer_.OnWorkerDropped();
  LeaveLocked(*rank,
              result.ok() ? "closed its Train stream" : result.ToString());
  return result;
}

// ---------------------------------------------------------------- operators

ServerSummary ParameterServerService::SummaryLocked() const {
  ServerSummary s;
  s.round = rounds_.round();
  s.rounds_closed = rounds_.rounds_closed();
  s.short_rounds = rounds_.short_rounds();
  s.dropped_rounds = rounds_.dropped_rounds();
  s.resumed_at_round = rounds_.resumed_at_round();
  s.live_workers = membership_.LiveCount();
  s.num_elements = model_.has_value()
                       ? static_cast<int64_t>(model_->layout.num_elements())
                       : 0;
  s.traffic = traffic_;
  s.train_loss = rounds_.last_loss();
  if (rounds_.started()) {
    s.params_checksum = ParamsChecksum(rounds_.engine()->params());
  }
  s.error = rounds_.fatal();
  return s;
}

ServerSummary ParameterServerService::Summary() const {
  absl::MutexLock lock(&mu_);
  ServerSummary s = SummaryLocked();
  // O(n), so here only and not in every Status call.
  if (rounds_.started()) {
    s.error_checksum = ParamsChecksum(rounds_.engine()->error_memory());
  }
  return s;
}

grpc::Status ParameterServerService::Status(
    grpc::ServerContext* context, const v1::StatusRequest* /*request*/,
    v1::StatusResponse* response) {
  if (absl::Status s = Authenticate(*context); !s.ok()) {
    return Finish(*context, "Status", -1, s);
  }
  absl::MutexLock lock(&mu_);
  TickLocked();
  const ServerSummary s = SummaryLocked();
  response->set_round(s.round);
  response->set_live_workers(s.live_workers);
  response->set_expected_workers(options_.workers);
  response->set_num_elements(s.num_elements);
  response->set_bytes_worker_to_server(s.traffic.up().payload);
  response->set_bytes_server_to_worker(s.traffic.down().payload);
  response->set_bytes_join(s.traffic.join().payload);
  response->set_fp32_equivalent_bytes(s.traffic.fp32_equivalent());
  response->set_params_checksum(s.params_checksum);
  response->set_awaiting_replicas(
      !rounds_.started() || (rounds_.resumed_at_round() > 0 &&
                             rounds_.AcceptsReplica(rounds_.round() + 1)));
  return grpc::Status::OK;
}

RoundEngineOptions ParameterServerService::EngineOptions() const {
  RoundEngineOptions eo;
  eo.error_feedback = options_.compression.server_error_feedback;
  eo.seed = options_.seed;
  eo.threads = options_.threads;
  return eo;
}

absl::StatusOr<ParameterServerService::Model> ParameterServerService::ModelFor(
    TensorLayout layout) const {
  absl::StatusOr<ShardCodecs> codecs = MakeShardCodecs(
      layout, options_.compression, options_.shard, options_.num_shards);
  if (!codecs.ok()) return codecs.status();
  return Model{std::move(layout), *std::move(codecs)};
}

// -------------------------------------------------------------- checkpoints

std::optional<Checkpoint> ParameterServerService::Snapshot() const {
  absl::MutexLock lock(&mu_);
  return rounds_.Snapshot();
}

std::optional<Checkpoint> ParameterServerService::TakeDueCheckpoint() {
  absl::MutexLock lock(&mu_);
  return rounds_.TakeDueCheckpoint();
}

absl::Status ParameterServerService::Restore(Checkpoint checkpoint) {
  if (absl::Status s =
          CheckCompressionMatches(checkpoint.compression, options_.compression,
                                  "the server's flags", "the checkpoint");
      !s.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot resume from a checkpoint written with other compression "
        "settings: ",
        s.message()));
  }
  if (checkpoint.shard != options_.shard ||
      checkpoint.num_shards != options_.num_shards) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the checkpoint is of shard ", checkpoint.shard, " of ",
        checkpoint.num_shards, "; this server is shard ", options_.shard,
        " of ", options_.num_shards, " (--shard, --num_shards)"));
  }
  absl::StatusOr<Model> model = ModelFor(checkpoint.layout);
  if (!model.ok()) return model.status();
  const int64_t checkpoint_round = checkpoint.state.round;
  const int64_t replayed = ReplayLoggedDeltas(*model, &checkpoint.state);
  absl::StatusOr<std::unique_ptr<RoundEngine>> engine =
      RoundEngine::Restore(model->codecs.worker, model->codecs.server,
                           std::move(checkpoint.state), EngineOptions());
  if (!engine.ok()) return engine.status();
  if (replayed > 0) {
    checkpoint.rounds_closed += replayed;
    logger_.Info(absl::StrCat(
        "x at round ", checkpoint_round, " from the checkpoint and ", replayed,
        " round(s) from the delta log: x is at round ", (*engine)->round(),
        ", params_checksum ", ParamsChecksum((*engine)->params()),
        "; the server's error memory starts at zero"));
  }

  absl::MutexLock lock(&mu_);
  if (model_.has_value() || rounds_.started()) {
    return absl::InvalidArgumentError(
        "Restore: the server already has a layout or parameters");
  }
  model_ = *std::move(model);
  const int64_t rounds_closed = checkpoint.rounds_closed;
  rounds_.Start(*std::move(engine), std::move(checkpoint), rounds_closed,
                /*resumed=*/true);
  changed_.SignalAll();
  return absl::OkStatus();
}

bool ParameterServerService::DoneLocked() const {
  if (!ServingLocked().ok()) return true;
  const std::optional<absl::Time> final_closed = rounds_.final_closed_at();
  if (!final_closed.has_value()) return false;
  return membership_.TrainingCount() == 0 ||
         clock_.Now() >= *final_closed + options_.round_timeout;
}

bool ParameterServerService::WaitUntilDone(absl::Duration timeout) {
  // How long the calling thread may block is real time; the rules it waits
  // for run on the clock.
  const absl::Time give_up = absl::Now() + timeout;
  absl::MutexLock lock(&mu_);
  while (true) {
    TickLocked();
    if (DoneLocked()) return true;
    const absl::Duration left = give_up - absl::Now();
    if (left <= absl::ZeroDuration()) return false;
    changed_.WaitWithTimeout(&mu_, std::min(kPoll, left));
  }
}

void ParameterServerService::Shutdown() {
  absl::MutexLock lock(&mu_);
  shutting_down_ = true;
  changed_.SignalAll();
}

}  // namespace effadam
