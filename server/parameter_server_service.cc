#include "server/parameter_server_service.h"

#include "common/compression_proto.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/checksum.h"
#include "common/chunk_assembler.h"
#include "common/codec_spec.h"

namespace effadam {
namespace {

// How many closed rounds keep their delta. A worker whose update arrives
// after its round closed on the timeout is sent that round's delta, so it
// stays in step; one that falls further behind must join again.
constexpr size_t kKeptRounds = 4;

// Waiters wake at least this often to notice a cancelled call, an idle
// join that expired or a round timeout.
constexpr absl::Duration kPoll = absl::Milliseconds(100);

// FetchParams gives up this long before the call's deadline, so the client
// sees UNAVAILABLE (retry) rather than DEADLINE_EXCEEDED.
constexpr absl::Duration kDeadlineMargin = absl::Milliseconds(50);

// A joined rank keeps its place this long without a Train stream (or an
// Upload/Fetch call) before it is dropped from the live set: at least a
// minute, so a worker that loads its data or computes its first gradient
// slowly is not mistaken for a dead one.
absl::Duration JoinIdleGrace(absl::Duration round_timeout) {
  return std::max(round_timeout, absl::Seconds(60));
}

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  // absl and gRPC share the canonical code numbering.
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()),
                      std::string(s.message()));
}

void Log(const std::string& line) {
  std::fprintf(stderr, "effadam-server: %s\n", line.c_str());
}

// When a FetchParams that waits for the initial parameters gives up.
absl::Time FetchGiveUp(const grpc::ServerContext& context, absl::Time now,
                       absl::Duration cap) {
  absl::Time give_up = now + cap;
  const std::chrono::system_clock::time_point deadline = context.deadline();
  if (deadline != std::chrono::system_clock::time_point::max()) {
    give_up = std::min(give_up, absl::FromChrono(deadline) - kDeadlineMargin);
  }
  return give_up;
}

// The rejection reason of a chunk the Train stream's assembler refused.
// The first chunk's round is checked before the assembler sees it, so a
// round it refuses is one that changed in the middle of an update.
Rejection TrainRejection(ChunkFault fault) {
  switch (fault) {
    case ChunkFault::kWrongRank:
      return Rejection::kWrongRank;
    case ChunkFault::kWrongRound:
    case ChunkFault::kBadOffset:
      return Rejection::kBadOffset;
    case ChunkFault::kTruncated:
      return Rejection::kTruncatedUpdate;
    case ChunkFault::kNone:
    case ChunkFault::kBadSize:
    case ChunkFault::kNonFinite:  // not checked for encoded updates
      break;
  }
  return Rejection::kBadChunkSize;
}

}  // namespace

double ServerSummary::compression_ratio() const {
  const int64_t actual = bytes_worker_to_server + bytes_server_to_worker;
  if (actual == 0) return 0;
  return static_cast<double>(fp32_equivalent_bytes()) /
         static_cast<double>(actual);
}

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
    return absl::InvalidArgumentError(absl::StrCat(
        "--shard must be in [0, --num_shards), got shard ", options.shard,
        " of ", options.num_shards));
  }
  if (options.max_chunk_bytes < sizeof(float)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_chunk_bytes must hold at least one float32, got ",
                     options.max_chunk_bytes));
  }
  return std::unique_ptr<ParameterServerService>(
      new ParameterServerService(options));
}

ParameterServerService::ParameterServerService(const ServerOptions& options)
    : options_(options),
      ranks_(static_cast<size_t>(options.workers)),
      last_loss_(std::numeric_limits<double>::quiet_NaN()) {}

ParameterServerService::~ParameterServerService() = default;

absl::Status ParameterServerService::Reject(Rejection why,
                                            absl::Status status) const {
  if (options_.observer != nullptr) options_.observer->OnRejected(why);
  return status;
}

grpc::Status ParameterServerService::Authenticate(
    const grpc::ServerContext& context) const {
  if (options_.authenticator == nullptr) return grpc::Status::OK;
  absl::Status s = options_.authenticator->Check(context);
  if (s.ok()) return grpc::Status::OK;
  return ToGrpc(Reject(Rejection::kUnauthenticated, std::move(s)));
}

void ParameterServerService::CountWireLocked(TrafficDirection direction,
                                             int64_t bytes) {
  switch (direction) {
    case TrafficDirection::kWorkerToServer:
      wire_worker_to_server_ += bytes;
      break;
    case TrafficDirection::kServerToWorker:
      wire_server_to_worker_ += bytes;
      break;
    case TrafficDirection::kJoin:
      wire_join_ += bytes;
      break;
  }
  if (options_.observer != nullptr) {
    options_.observer->OnWireBytes(direction, bytes);
  }
}

void ParameterServerService::CountWire(TrafficDirection direction,
                                       int64_t bytes) {
  absl::MutexLock lock(&mu_);
  CountWireLocked(direction, bytes);
}

void ParameterServerService::CountPayloadLocked(TrafficDirection direction,
                                                int64_t payload_bytes,
                                                int64_t fp32_bytes) {
  switch (direction) {
    case TrafficDirection::kWorkerToServer:
      bytes_worker_to_server_ += payload_bytes;
      fp32_worker_to_server_ += fp32_bytes;
      break;
    case TrafficDirection::kServerToWorker:
      bytes_server_to_worker_ += payload_bytes;
      fp32_server_to_worker_ += fp32_bytes;
      break;
    case TrafficDirection::kJoin:
      bytes_join_ += payload_bytes;
      break;
  }
  if (options_.observer != nullptr) {
    options_.observer->OnPayloadBytes(direction, payload_bytes, fp32_bytes);
  }
}

// ---------------------------------------------------------------- membership

bool ParameterServerService::IsLive(int rank) const {
  const Phase p = ranks_[rank].phase;
  return p == Phase::kJoined || p == Phase::kTraining;
}

int ParameterServerService::LiveCountLocked() const {
  int live = 0;
  for (int r = 0; r < options_.workers; ++r) live += IsLive(r);
  return live;
}

void ParameterServerService::ExpireIdleJoinsLocked(absl::Time now) {
  for (int r = 0; r < options_.workers; ++r) {
    const RankState& s = ranks_[r];
    if (s.phase == Phase::kJoined && s.active_calls == 0 &&
        now - s.last_seen > JoinIdleGrace(options_.round_timeout)) {
      Leave(r, "joined but sent nothing on a Train stream for too long");
      ranks_[r].expired = true;
    }
  }
}

void ParameterServerService::ResetIfEmptyLocked() {
  if (engine_ || upload_active_ || LiveCountLocked() > 0) return;
  layout_.reset();
  worker_codec_.reset();
  server_codec_.reset();
  uploader_ = -1;
}

void ParameterServerService::Leave(int rank, absl::string_view why) {
  ranks_[rank].phase = Phase::kDeparted;
  if (uploader_ == rank && !engine_ && !upload_active_) uploader_ = -1;
  // After the last round every stream ends; that is no news.
  if (!final_closed_at_.has_value()) {
    Log(absl::StrCat("rank ", rank, " left (", LiveCountLocked(), "/",
                     options_.workers, " live): ", why));
  }
  if (options_.observer != nullptr) {
    options_.observer->OnLiveWorkers(LiveCountLocked());
  }
  ResetIfEmptyLocked();
  MaybeCloseRoundLocked(absl::Now());
  changed_.SignalAll();
}

grpc::Status ParameterServerService::Join(grpc::ServerContext* context,
                                          const v1::JoinRequest* request,
                                          v1::JoinResponse* response) {
  if (grpc::Status s = Authenticate(*context); !s.ok()) return s;
  absl::StatusOr<TensorLayout> layout =
      LayoutFromProto(request->layout(), options_.max_num_elements);
  if (!layout.ok()) return ToGrpc(Reject(Rejection::kBadLayout, layout.status()));
  if (absl::Status s =
          CheckCompressionMatches(request->compression(), options_.compression,
                                  "server", "worker");
      !s.ok()) {
    // InvalidArgument: malformed on its own; else it differs from ours.
    return ToGrpc(Reject(s.code() == absl::StatusCode::kInvalidArgument
                             ? Rejection::kBadCompression
                             : Rejection::kCompressionMismatch,
                         s));
  }

  absl::MutexLock lock(&mu_);
  if (shutting_down_) {
    return ToGrpc(absl::UnavailableError("the server is shutting down"));
  }
  if (!fatal_.ok()) return ToGrpc(fatal_);
  if (final_closed_at_.has_value()) {
    return ToGrpc(Reject(Rejection::kTrainingEnded,
                         absl::FailedPreconditionError(absl::StrCat(
                             "training has ended after round ",
                             options_.rounds, " (--rounds)"))));
  }
  const absl::Time now = absl::Now();
  ExpireIdleJoinsLocked(now);
  if (layout_.has_value() && *layout_ != *layout) {
    return ToGrpc(Reject(
        Rejection::kLayoutMismatch,
        absl::FailedPreconditionError(absl::StrCat(
            "the layout differs from the server's: server has [",
            layout_->DebugString(), "], worker sent [", layout->DebugString(),
            "]"))));
  }
  int rank = request->rank();
  if (rank == -1) {
    rank = 0;
    while (rank < options_.workers && IsLive(rank)) ++rank;
    if (rank == options_.workers) {
      return ToGrpc(Reject(
          Rejection::kNoFreeRank,
          absl::ResourceExhaustedError(absl::StrCat(
              "all ", options_.workers,
              " ranks are taken by live workers (--workers=", options_.workers,
              ")"))));
    }
  } else if (rank < 0 || rank >= options_.workers) {
    return ToGrpc(Reject(
        Rejection::kBadRank,
        absl::InvalidArgumentError(absl::StrCat(
            "rank ", rank, " is outside [0, ", options_.workers,
            ") (--workers); ask for -1 to get the lowest free rank"))));
  } else if (IsLive(rank)) {
    return ToGrpc(Reject(Rejection::kRankTaken,
                         absl::AlreadyExistsError(absl::StrCat(
                             "rank ", rank, " is taken by a live worker"))));
  }

  if (!layout_.has_value()) {
    // A codec refuses a layout it cannot encode (or split into the shards):
    // the layout's fault, since the settings are the server's own.
    absl::StatusOr<Codecs> codecs = CodecsFor(*layout);
    if (!codecs.ok()) {
      return ToGrpc(Reject(Rejection::kBadLayout, codecs.status()));
    }
    worker_codec_ = std::move(codecs->worker);
    server_codec_ = std::move(codecs->server);
    shard_range_ = codecs->range;
    layout_ = *std::move(layout);
  }
  bool upload = false;
  if (!engine_ && uploader_ < 0) {
    uploader_ = rank;
    upload = true;
  }
  // active_calls survives a rejoin: calls of the old incarnation may still
  // be finishing and will decrement it.
  ranks_[rank].phase = Phase::kJoined;
  ranks_[rank].last_seen = now;
  ranks_[rank].expired = false;

  response->set_rank(rank);
  response->set_round(engine_ ? engine_->round() : 1);
  response->set_upload_initial_params(upload);
  response->set_num_elements(static_cast<int64_t>(layout_->num_elements()));
  response->set_max_chunk_bytes(static_cast<int64_t>(options_.max_chunk_bytes));
  response->set_expected_workers(options_.workers);
  *response->mutable_compression() = CompressionToProto(options_.compression);
  response->set_shard(options_.shard);
  response->set_num_shards(options_.num_shards);
  response->set_shard_begin(static_cast<int64_t>(shard_range_.begin));
  response->set_shard_size(static_cast<int64_t>(shard_range_.size));
  if (options_.observer != nullptr) {
    options_.observer->OnLiveWorkers(LiveCountLocked());
  }
  Log(absl::StrCat("rank ", rank, " joined (", LiveCountLocked(), "/",
                   options_.workers, " live)",
                   upload ? "; it uploads the initial parameters" : ""));
  return grpc::Status::OK;
}

// ---------------------------------------------------------- initial params

absl::Status ParameterServerService::ReadParams(
    grpc::ServerReader<v1::ParamsChunk>* reader, int rank,
    v1::ParamsChunk* chunk, std::vector<float>* x, int64_t* wire_bytes) const {
  ChunkRules rules;
  rules.total_bytes = x->size() * sizeof(float);
  rules.max_chunk_bytes = options_.max_chunk_bytes;
  rules.unit = sizeof(float);
  rules.finite_float32 = true;
  rules.rank = rank;
  absl::StatusOr<ChunkAssembler> assembler = ChunkAssembler::Create(rules);
  if (!assembler.ok()) return assembler.status();
  // ParamsChunk.round is FetchParams' field; an upload leaves it 0.
  assembler->Start(0);
  do {
    *wire_bytes += static_cast<int64_t>(chunk->ByteSizeLong());
    if (!assembler->Add(chunk->rank(), chunk->round(), chunk->begin(),
                        chunk->values())
             .ok()) {
      break;
    }
    // A chunk after the last one runs past the end, so read to the end.
  } while (reader->Read(chunk));
  if (absl::Status s = assembler->Finish(); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("initial parameters: ", s.message()));
  }
  // Little-endian float32 on the wire, the byte order of every host the
  // codecs run on.
  const std::string bytes = assembler->TakeBuffer();
  std::memcpy(x->data(), bytes.data(), bytes.size());
  return absl::OkStatus();
}

grpc::Status ParameterServerService::UploadParams(
    grpc::ServerContext* context,
    grpc::ServerReader<v1::ParamsChunk>* reader,
    v1::UploadParamsResponse* /*response*/) {
  if (grpc::Status s = Authenticate(*context); !s.ok()) return s;
  v1::ParamsChunk chunk;
  if (!reader->Read(&chunk)) {
    return ToGrpc(Reject(Rejection::kBadUpload,
                         absl::InvalidArgumentError("the upload has no chunks")));
  }
  const int rank = chunk.rank();
  const int64_t first_wire = static_cast<int64_t>(chunk.ByteSizeLong());
  size_t n = 0;
  {
    absl::MutexLock lock(&mu_);
    // A refused upload counts the one chunk that was read.
    CountWireLocked(TrafficDirection::kJoin, first_wire);
    if (shutting_down_) {
      return ToGrpc(absl::UnavailableError("the server is shutting down"));
    }
    if (engine_) {
      return ToGrpc(Reject(Rejection::kBadUpload,
                           absl::FailedPreconditionError(
                               "the initial parameters are already uploaded")));
    }
    if (rank != uploader_ || rank < 0 || ranks_[rank].phase != Phase::kJoined) {
      return ToGrpc(Reject(
          Rejection::kBadUpload,
          absl::FailedPreconditionError(absl::StrCat(
              "rank ", rank, " was not asked to upload the initial parameters",
              uploader_ >= 0 ? absl::StrCat(" (rank ", uploader_, " was)")
                             : ""))));
    }
    if (upload_active_) {
      return ToGrpc(Reject(
          Rejection::kBadUpload,
          absl::FailedPreconditionError(
              "an upload of the initial parameters is already in progress")));
    }
    upload_active_ = true;
    ++ranks_[rank].active_calls;
    n = worker_codec_->num_elements();  // this shard's part of x
  }
  std::vector<float> x(n);
  int64_t wire = 0;
  absl::Status s = ReadParams(reader, rank, &chunk, &x, &wire);

  absl::MutexLock lock(&mu_);
  // ReadParams counted the first chunk again.
  CountWireLocked(TrafficDirection::kJoin, wire - first_wire);
  upload_active_ = false;
  --ranks_[rank].active_calls;
  ranks_[rank].last_seen = absl::Now();
  if (s.ok()) {
    absl::StatusOr<std::unique_ptr<RoundEngine>> engine = RoundEngine::Create(
        worker_codec_, server_codec_, std::move(x), EngineOptions());
    if (engine.ok()) {
      engine_ = *std::move(engine);
      CountPayloadLocked(TrafficDirection::kJoin,
                         static_cast<int64_t>(n * sizeof(float)), 0);
      changed_.SignalAll();
      return grpc::Status::OK;
    }
    s = engine.status();
  }
  // Nothing is kept. The uploader must join again (so its rank is freed),
  // and the next Join is told to upload.
  if (uploader_ == rank) uploader_ = -1;
  if (ranks_[rank].phase == Phase::kJoined) {
    Leave(rank, absl::StrCat("upload failed: ", s.message()));
  }
  ResetIfEmptyLocked();
  return ToGrpc(Reject(Rejection::kBadUpload, s));
}

grpc::Status ParameterServerService::FetchParams(
    grpc::ServerContext* context, const v1::FetchParamsRequest* request,
    grpc::ServerWriter<v1::ParamsChunk>* writer) {
  if (grpc::Status s = Authenticate(*context); !s.ok()) return s;
  const int rank = request->rank();
  std::vector<float> x;
  int64_t round = 0;
  bool tracked = false;  // a live rank's call, which keeps it from expiring
  {
    absl::MutexLock lock(&mu_);
    const absl::Time give_up =
        FetchGiveUp(*context, absl::Now(), options_.round_timeout);
    while (!engine_ && !shutting_down_ && !context->IsCancelled()) {
      const absl::Time now = absl::Now();
      if (now >= give_up) break;
      changed_.WaitWithDeadline(&mu_, std::min(give_up, now + kPoll));
    }
    if (shutting_down_) {
      return ToGrpc(absl::UnavailableError("the server is shutting down"));
    }
    if (!engine_) {
      return ToGrpc(absl::UnavailableError(
          "the initial parameters have not been uploaded yet; retry"));
    }
    // One consistent snapshot: x as of the start of `round`.
    x.assign(engine_->params().begin(), engine_->params().end());
    round = engine_->round();
    if (rank >= 0 && rank < options_.workers && IsLive(rank)) {
      ++ranks_[rank].active_calls;
      tracked = true;
    }
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
  if (tracked) {
    --ranks_[rank].active_calls;
    ranks_[rank].last_seen = absl::Now();
  }
  if (!ok) {
    return ToGrpc(
        absl::CancelledError("the client went away during FetchParams"));
  }
  return grpc::Status::OK;
}

// ------------------------------------------------------------------- rounds

const ParameterServerService::ClosedRound*
ParameterServerService::FindClosedLocked(int64_t round) const {
  for (const ClosedRound& c : closed_) {
    if (c.round == round) return &c;
  }
  return nullptr;
}

absl::Status ParameterServerService::CheckRoundLocked(int rank,
                                                      int64_t round) const {
  if (!fatal_.ok()) return fatal_;
  if (shutting_down_)
    return absl::UnavailableError("the server is shutting down");
  if (options_.rounds > 0 && round > options_.rounds) {
    return Reject(Rejection::kTrainingEnded,
                  absl::FailedPreconditionError(absl::StrCat(
                      "rank ", rank, " sent round ", round,
                      " but training ends after round ", options_.rounds,
                      " (--rounds)")));
  }
  if (round < 1) {
    return Reject(Rejection::kWrongRound,
                  absl::InvalidArgumentError(absl::StrCat(
                      "rank ", rank, " sent round ", round,
                      "; rounds count from 1")));
  }
  const int64_t current = engine_->round();
  if (round == current || (round < current && FindClosedLocked(round))) {
    return absl::OkStatus();
  }
  if (round > current) {
    return Reject(Rejection::kWrongRound,
                  absl::FailedPreconditionError(absl::StrCat(
                      "rank ", rank, " sent an update for round ", round,
                      " but the server is collecting round ", current)));
  }
  // ABORTED, not FAILED_PRECONDITION: the worker did nothing wrong and
  // recovers by joining again and fetching x (WorkerClient does).
  return Reject(
      Rejection::kLagging,
      absl::AbortedError(absl::StrCat(
          "rank ", rank, " sent an update for round ", round,
          ", too late: the server is collecting round ", current,
          " and no longer keeps that round's delta; join again and fetch x")));
}

void ParameterServerService::MaybeCloseRoundLocked(absl::Time now) {
  if (!engine_ || !fatal_.ok() || engine_->num_submitted() == 0) return;
  bool missing = false;
  for (int r = 0; r < options_.workers && !missing; ++r) {
    missing = !engine_->HasSubmitted(r) && ranks_[r].phase != Phase::kDeparted;
  }
  if (missing && now < round_opened_at_ + options_.round_timeout) return;

  const int64_t round = engine_->round();
  const int contributors = static_cast<int>(engine_->num_submitted());
  int lagging = 0;  // live, yet not in this round
  for (int r = 0; r < options_.workers; ++r) {
    lagging += IsLive(r) && !engine_->HasSubmitted(r);
  }
  const int64_t dropped_before = engine_->dropped_rounds();
  absl::StatusOr<std::string> delta = engine_->CloseRound();
  if (!delta.ok()) {
    // Only a broken invariant gets here (the engine validated every update
    // and drops rounds that overflow); the server cannot go on. Every
    // stream ends with this error and the daemon exits.
    fatal_ = absl::InternalError(absl::StrCat(
        "round ", round, " could not be closed: ", delta.status().message()));
    Log(std::string(fatal_.message()));
    changed_.SignalAll();
    return;
  }
  const bool dropped = engine_->dropped_rounds() > dropped_before;
  if (dropped) {
    Log(absl::StrCat("round ", round, " dropped: the average of its ",
                     contributors,
                     " updates overflows float; x and E are unchanged and "
                     "the delta is zero"));
  }
  if (contributors < options_.workers) ++short_rounds_;
  closed_.push_back(
      ClosedRound{round, std::make_shared<const std::string>(*std::move(delta)),
                  contributors});
  while (closed_.size() > kKeptRounds) closed_.pop_front();
  ++rounds_closed_;
  last_loss_ = loss_count_ > 0 ? loss_sum_ / loss_count_
                               : std::numeric_limits<double>::quiet_NaN();
  loss_sum_ = 0;
  loss_count_ = 0;
  if (options_.rounds > 0 && round == options_.rounds) final_closed_at_ = now;
  if (options_.observer != nullptr) {
    ClosedRoundStats stats;
    stats.round = round;
    stats.contributors = contributors;
    stats.live_workers = LiveCountLocked();
    stats.lagging_workers = lagging;
    stats.duration_seconds =
        absl::ToDoubleSeconds(absl::Now() - round_opened_at_);
    stats.train_loss = last_loss_;
    // O(n) per round, so only with an observer; double so that a large
    // model's sum of squares does not lose the small entries.
    double sum_squares = 0;
    for (float e : engine_->error_memory()) {
      sum_squares += static_cast<double>(e) * static_cast<double>(e);
    }
    stats.error_memory_norm = std::sqrt(sum_squares);
    stats.dropped = dropped;
    options_.observer->OnRoundClosed(stats);
  }
  if (options_.checkpoint_every > 0 &&
      rounds_closed_ % options_.checkpoint_every == 0) {
    due_checkpoint_ = SnapshotLocked();
  }
  changed_.SignalAll();
}

absl::StatusOr<ParameterServerService::ClosedRound>
ParameterServerService::AcceptAndWait(grpc::ServerContext* context,
                                      const UpdateCodec& codec, int rank,
                                      int64_t round, std::string update,
                                      float loss) {
  const int64_t size = static_cast<int64_t>(update.size());
  absl::MutexLock lock(&mu_);
  // The round may have moved on while the update was read.
  if (absl::Status s = CheckRoundLocked(rank, round); !s.ok()) return s;
  absl::Time now = absl::Now();
  if (round == engine_->round() && !engine_->HasSubmitted(rank)) {
    // CheckRoundLocked and HasSubmitted leave only bytes that do not
    // validate as a reason for Submit to refuse.
    if (absl::Status s = engine_->Submit(rank, round, std::move(update));
        !s.ok()) {
      return Reject(Rejection::kInvalidPayload, s);
    }
    if (engine_->num_submitted() == 1) round_opened_at_ = now;
    // The loss is the worker's report, not part of the math: a NaN or Inf
    // one is left out of the mean rather than refusing a good update.
    if (std::isfinite(loss)) {
      loss_sum_ += loss;
      ++loss_count_;
    }
  } else {
    // Its round closed without it, or an earlier incarnation of this rank
    // already contributed to it: not averaged, but it must still be well
    // formed, and the worker gets the round's delta like everyone else.
    if (absl::Status s = codec.Validate(update); !s.ok()) {
      return Reject(Rejection::kInvalidPayload,
                    absl::InvalidArgumentError(absl::StrCat(
                        "update from rank ", rank, ": ", s.message())));
    }
  }
  CountPayloadLocked(
      TrafficDirection::kWorkerToServer, size,
      static_cast<int64_t>(codec.num_elements() * sizeof(float)));
  MaybeCloseRoundLocked(now);

  while (true) {
    if (const ClosedRound* closed = FindClosedLocked(round)) return *closed;
    if (!fatal_.ok()) return fatal_;
    if (shutting_down_) {
      return absl::UnavailableError("the server is shutting down");
    }
    if (context->IsCancelled()) {
      return absl::CancelledError("the worker cancelled its Train stream");
    }
    if (engine_->round() > round) {
      return Reject(Rejection::kLagging,
                    absl::AbortedError(absl::StrCat(
                        "the delta of round ", round,
                        " is no longer kept (the server is at round ",
                        engine_->round(), "); join again and fetch x")));
    }
    now = absl::Now();
    ExpireIdleJoinsLocked(now);
    MaybeCloseRoundLocked(now);
    if (FindClosedLocked(round) != nullptr) continue;
    absl::Time wake = now + kPoll;
    if (engine_->num_submitted() > 0) {
      wake = std::min(wake, round_opened_at_ + options_.round_timeout);
    }
    changed_.WaitWithDeadline(&mu_, wake);
  }
}

absl::Status ParameterServerService::SendDelta(
    grpc::ServerReaderWriter<v1::ServerMessage, v1::WorkerMessage>* stream,
    const ClosedRound& closed) {
  const std::string& delta = *closed.delta;
  v1::ServerMessage msg;
  int64_t wire = 0;  // of the chunks written, also when a later one fails
  for (size_t offset = 0; offset < delta.size();
       offset += options_.max_chunk_bytes) {
    const size_t n = std::min(options_.max_chunk_bytes, delta.size() - offset);
    msg.set_round(closed.round);
    msg.set_offset(static_cast<int64_t>(offset));
    msg.set_payload(delta.data() + offset, n);
    msg.set_contributors(closed.contributors);
    if (!stream->Write(msg)) {
      CountWire(TrafficDirection::kServerToWorker, wire);
      return absl::CancelledError(
          absl::StrCat("the worker went away while the delta of round ",
                       closed.round, " was sent"));
    }
    wire += static_cast<int64_t>(msg.ByteSizeLong());
  }
  absl::MutexLock lock(&mu_);
  CountWireLocked(TrafficDirection::kServerToWorker, wire);
  CountPayloadLocked(
      TrafficDirection::kServerToWorker, static_cast<int64_t>(delta.size()),
      static_cast<int64_t>(server_codec_->num_elements() * sizeof(float)));
  return absl::OkStatus();
}

absl::Status ParameterServerService::RunTrain(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::ServerMessage, v1::WorkerMessage>* stream,
    int rank, v1::WorkerMessage* msg) {
  std::shared_ptr<const UpdateCodec> codec;
  {
    absl::MutexLock lock(&mu_);
    codec = worker_codec_;  // fixed for good once the engine exists
  }
  ChunkRules rules;
  rules.total_bytes = codec->encoded_size();
  rules.max_chunk_bytes = options_.max_chunk_bytes;
  rules.rank = rank;
  absl::StatusOr<ChunkAssembler> assembler = ChunkAssembler::Create(rules);
  if (!assembler.ok()) return assembler.status();
  int64_t next = 0;  // the round this stream must send; 0 before the first
  while (true) {
    // *msg is the first chunk of an update.
    const int64_t round = msg->round();
    if (next != 0 && round != next) {
      return Reject(Rejection::kWrongRound,
                    absl::FailedPreconditionError(absl::StrCat(
                        "rank ", rank, " sent round ", round,
                        "; after the delta of round ", next - 1,
                        " it must send round ", next)));
    }
    if (next == 0) {
      // Fail fast on a hopeless round, before reading a whole update.
      absl::MutexLock lock(&mu_);
      if (absl::Status s = CheckRoundLocked(rank, round); !s.ok()) return s;
    }
    assembler->Start(round);
    while (true) {
      absl::Status s = assembler->Add(msg->rank(), msg->round(), msg->offset(),
                                      msg->payload());
      if (s.ok() && assembler->complete()) break;
      if (s.ok() && !stream->Read(msg)) s = assembler->Finish();
      if (!s.ok()) {
        return Reject(TrainRejection(assembler->fault()),
                      absl::InvalidArgumentError(absl::StrCat(
                          "round ", round, "'s ", codec->spec().ToString(),
                          " update from rank ", rank, ": ", s.message())));
      }
      CountWire(TrafficDirection::kWorkerToServer,
                static_cast<int64_t>(msg->ByteSizeLong()));
    }
    absl::StatusOr<ClosedRound> closed =
        AcceptAndWait(context, *codec, rank, round, assembler->TakeBuffer(),
                      msg->loss());
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
  if (grpc::Status s = Authenticate(*context); !s.ok()) return s;
  v1::WorkerMessage msg;
  if (!stream->Read(&msg)) return grpc::Status::OK;
  const int rank = msg.rank();
  {
    absl::MutexLock lock(&mu_);
    CountWireLocked(TrafficDirection::kWorkerToServer,
                    static_cast<int64_t>(msg.ByteSizeLong()));
    if (shutting_down_) {
      return ToGrpc(absl::UnavailableError("the server is shutting down"));
    }
    if (!fatal_.ok()) return ToGrpc(fatal_);
    if (!engine_) {
      return ToGrpc(Reject(Rejection::kNotReady,
                           absl::FailedPreconditionError(
                               "the initial parameters have not been "
                               "uploaded yet")));
    }
    // A rank dropped for idling is welcome back while nobody else has it:
    // it was slow, not gone.
    if (rank < 0 || rank >= options_.workers ||
        ranks_[rank].phase == Phase::kFree ||
        (ranks_[rank].phase == Phase::kDeparted && !ranks_[rank].expired)) {
      return ToGrpc(Reject(Rejection::kUnknownRank,
                           absl::FailedPreconditionError(absl::StrCat(
                               "rank ", rank,
                               " has not joined (or left); call Join first"))));
    }
    if (ranks_[rank].phase == Phase::kTraining) {
      return ToGrpc(Reject(Rejection::kDuplicateStream,
                           absl::FailedPreconditionError(absl::StrCat(
                               "rank ", rank,
                               " already has an open Train stream"))));
    }
    ranks_[rank].phase = Phase::kTraining;
    ranks_[rank].expired = false;
    ++open_streams_;
  }
  const absl::Status result = RunTrain(context, stream, rank, &msg);
  {
    absl::MutexLock lock(&mu_);
    --open_streams_;
    // Streams that a shutdown or a failed round engine ends are the
    // server's doing, not a worker dropping out.
    if (!result.ok() && !shutting_down_ && fatal_.ok() &&
        options_.observer != nullptr) {
      options_.observer->OnWorkerDropped();
    }
    Leave(rank, result.ok() ? "closed its Train stream" : result.ToString());
  }
  return ToGrpc(result);
}

// ---------------------------------------------------------------- operators

ServerSummary ParameterServerService::SummaryLocked() const {
  ServerSummary s;
  s.round = engine_ ? engine_->round() : 1;
  s.rounds_closed = rounds_closed_;
  s.short_rounds = short_rounds_;
  s.dropped_rounds = engine_ ? engine_->dropped_rounds() : 0;
  s.resumed_at_round = resumed_at_round_;
  s.live_workers = LiveCountLocked();
  s.num_elements =
      layout_.has_value() ? static_cast<int64_t>(layout_->num_elements()) : 0;
  s.bytes_worker_to_server = bytes_worker_to_server_;
  s.bytes_server_to_worker = bytes_server_to_worker_;
  s.bytes_join = bytes_join_;
  s.fp32_worker_to_server = fp32_worker_to_server_;
  s.fp32_server_to_worker = fp32_server_to_worker_;
  s.wire_worker_to_server = wire_worker_to_server_;
  s.wire_server_to_worker = wire_server_to_worker_;
  s.wire_join = wire_join_;
  s.train_loss = last_loss_;
  if (engine_) s.params_checksum = ParamsChecksum(engine_->params());
  s.error = fatal_;
  return s;
}

ServerSummary ParameterServerService::Summary() const {
  absl::MutexLock lock(&mu_);
  ServerSummary s = SummaryLocked();
  // O(n), so here only and not in every Status call.
  if (engine_) s.error_checksum = ParamsChecksum(engine_->error_memory());
  return s;
}

grpc::Status ParameterServerService::Status(
    grpc::ServerContext* context, const v1::StatusRequest* /*request*/,
    v1::StatusResponse* response) {
  if (grpc::Status s = Authenticate(*context); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  ExpireIdleJoinsLocked(absl::Now());
  const ServerSummary s = SummaryLocked();
  response->set_round(s.round);
  response->set_live_workers(s.live_workers);
  response->set_expected_workers(options_.workers);
  response->set_num_elements(s.num_elements);
  response->set_bytes_worker_to_server(s.bytes_worker_to_server);
  response->set_bytes_server_to_worker(s.bytes_server_to_worker);
  response->set_bytes_join(s.bytes_join);
  response->set_fp32_equivalent_bytes(s.fp32_equivalent_bytes());
  response->set_params_checksum(s.params_checksum);
  return grpc::Status::OK;
}

RoundEngineOptions ParameterServerService::EngineOptions() const {
  RoundEngineOptions eo;
  eo.error_feedback = options_.compression.server_error_feedback;
  eo.seed = options_.seed;
  return eo;
}

absl::StatusOr<ParameterServerService::Codecs>
ParameterServerService::CodecsFor(const TensorLayout& layout) const {
  const CompressionConfig& c = options_.compression;
  absl::StatusOr<std::unique_ptr<UpdateCodec>> wc =
      UpdateCodec::Create(layout, c.worker_codec, c.options);
  if (!wc.ok()) return absl::InvalidArgumentError(wc.status().message());
  absl::StatusOr<std::unique_ptr<UpdateCodec>> sc =
      UpdateCodec::Create(layout, c.server_codec, c.options);
  if (!sc.ok()) return absl::InvalidArgumentError(sc.status().message());
  absl::StatusOr<std::vector<ShardRange>> plan =
      PlanShards(**wc, options_.num_shards);
  if (!plan.ok()) return plan.status();
  Codecs codecs;
  codecs.range = (*plan)[options_.shard];
  if (options_.num_shards == 1) {
    codecs.worker = *std::move(wc);
    codecs.server = *std::move(sc);
    return codecs;
  }
  absl::StatusOr<std::unique_ptr<UpdateCodec>> ws =
      (*wc)->Slice(codecs.range.first_segment, codecs.range.end_segment);
  if (!ws.ok()) return ws.status();
  absl::StatusOr<std::unique_ptr<UpdateCodec>> ss =
      (*sc)->Slice(codecs.range.first_segment, codecs.range.end_segment);
  if (!ss.ok()) return ss.status();
  codecs.worker = *std::move(ws);
  codecs.server = *std::move(ss);
  return codecs;
}

// -------------------------------------------------------------- checkpoints

std::optional<Checkpoint> ParameterServerService::SnapshotLocked() const {
  if (!engine_) return std::nullopt;
  Checkpoint c;
  c.layout = *layout_;
  c.compression = CompressionToProto(options_.compression);
  c.rounds_closed = rounds_closed_;
  c.shard = options_.shard;
  c.num_shards = options_.num_shards;
  c.state.round = engine_->round();
  c.state.params.assign(engine_->params().begin(), engine_->params().end());
  c.state.error_memory.assign(engine_->error_memory().begin(),
                              engine_->error_memory().end());
  return c;
}

std::optional<Checkpoint> ParameterServerService::Snapshot() const {
  absl::MutexLock lock(&mu_);
  return SnapshotLocked();
}

std::optional<Checkpoint> ParameterServerService::TakeDueCheckpoint() {
  absl::MutexLock lock(&mu_);
  std::optional<Checkpoint> c = std::move(due_checkpoint_);
  due_checkpoint_.reset();
  return c;
}

absl::Status ParameterServerService::Restore(Checkpoint checkpoint) {
  if (absl::Status s =
          CheckCompressionMatches(checkpoint.compression, options_.compression,
                                  "the server's flags", "the checkpoint");
      !s.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot resume from a checkpoint written with other compression "
        "settings: ", s.message()));
  }
  if (checkpoint.shard != options_.shard ||
      checkpoint.num_shards != options_.num_shards) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the checkpoint is of shard ", checkpoint.shard, " of ",
        checkpoint.num_shards, "; this server is shard ", options_.shard,
        " of ", options_.num_shards, " (--shard, --num_shards)"));
  }
  absl::StatusOr<Codecs> codecs = CodecsFor(checkpoint.layout);
  if (!codecs.ok()) return codecs.status();
  const int64_t round = checkpoint.state.round;
  absl::StatusOr<std::unique_ptr<RoundEngine>> engine =
      RoundEngine::Restore(codecs->worker, codecs->server,
                           std::move(checkpoint.state), EngineOptions());
  if (!engine.ok()) return engine.status();

  absl::MutexLock lock(&mu_);
  if (layout_.has_value() || engine_) {
    return absl::InvalidArgumentError(
        "Restore: the server already has a layout or parameters");
  }
  layout_ = std::move(checkpoint.layout);
  worker_codec_ = std::move(codecs->worker);
  server_codec_ = std::move(codecs->server);
  shard_range_ = codecs->range;
  engine_ = *std::move(engine);
  rounds_closed_ = checkpoint.rounds_closed;
  resumed_at_round_ = round;
  // A checkpoint written after the last round: nothing is left to do.
  if (options_.rounds > 0 && round > options_.rounds) {
    final_closed_at_ = absl::Now();
  }
  if (options_.observer != nullptr) options_.observer->OnResumed(round);
  changed_.SignalAll();
  return absl::OkStatus();
}

bool ParameterServerService::DoneLocked(absl::Time now) const {
  if (shutting_down_ || !fatal_.ok()) return true;
  if (!final_closed_at_.has_value()) return false;
  return open_streams_ == 0 ||
         now >= *final_closed_at_ + options_.round_timeout;
}

bool ParameterServerService::WaitUntilDone(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::MutexLock lock(&mu_);
  while (true) {
    const absl::Time now = absl::Now();
    if (DoneLocked(now)) return true;
    if (now >= deadline) return false;
    absl::Time wake = deadline;
    if (final_closed_at_.has_value()) {
      wake = std::min(wake, *final_closed_at_ + options_.round_timeout);
    }
    changed_.WaitWithDeadline(&mu_, wake);
  }
}

void ParameterServerService::Shutdown() {
  absl::MutexLock lock(&mu_);
  shutting_down_ = true;
  changed_.SignalAll();
}

}  // namespace effadam
