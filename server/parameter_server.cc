#include "server/parameter_server.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/checksum.h"
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

}  // namespace

absl::StatusOr<std::unique_ptr<ParameterServer>> ParameterServer::Create(
    const ServerOptions& options) {
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
  return std::unique_ptr<ParameterServer>(new ParameterServer(options));
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

ParameterServer::ParameterServer(const ServerOptions& options)
    : options_(options),
      clock_(options.clock != nullptr ? *options.clock : Clock::Real()),
      logger_(options.logger != nullptr ? *options.logger : Logger::Discard()),
      observer_(options.observer != nullptr ? *options.observer
                                            : ServerObserver::None()),
      delta_log_(options.delta_log != nullptr ? *options.delta_log
                                              : DeltaLog::None()),
      membership_(MembershipRules(options)),
      rounds_(RoundRules(options), membership_, clock_, observer_, logger_,
              delta_log_) {}

ParameterServer::~ParameterServer() = default;

void ParameterServer::CountWire(TrafficDirection direction, int64_t bytes) {
  absl::MutexLock lock(&mu_);
  CountWireLocked(direction, bytes);
}

// ---------------------------------------------------------------------- Join

absl::StatusOr<ParameterServer::JoinResult> ParameterServer::Join(
    const JoinArgs& args) {
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
  if (model_.has_value() && model_->layout != args.layout) {
    return Rejected(Rejection::kLayoutMismatch,
                    absl::FailedPreconditionError(absl::StrCat(
                        "the layout differs from the server's: server has [",
                        model_->layout.DebugString(), "], worker sent [",
                        args.layout.DebugString(), "]")));
  }
  std::optional<Model> new_model;
  if (!model_.has_value()) {
    // A codec refuses a layout it cannot encode (or split into the shards):
    // the layout's fault, since the settings are the server's own.
    absl::StatusOr<Model> m = ModelFor(args.layout);
    if (!m.ok()) return Rejected(Rejection::kBadLayout, m.status());
    new_model = *std::move(m);
  }
  if (args.replica_round < 0) {
    return Rejected(Rejection::kWrongRound,
                    absl::InvalidArgumentError(absl::StrCat(
                        "replica_round must be >= 0 (0: no replica), got ",
                        args.replica_round)));
  }
  // Parameters are wanted when there are none, or when the worker's
  // replica is newer than x (a restarted server).
  const bool wanted =
      !rounds_.started() || rounds_.AcceptsReplica(args.replica_round);
  JoinResult result;
  absl::StatusOr<int> rank =
      membership_.Join(args.rank, wanted, clock_.Now(), &result.upload);
  if (!rank.ok()) return rank.status();
  if (new_model.has_value()) model_ = *std::move(new_model);
  if (result.upload) {
    replica_claim_.reset();
    if (args.replica_round > 0) {
      replica_claim_ =
          ReplicaClaim{*rank, args.replica_round, args.replica_checksum};
    }
  }
  result.rank = *rank;
  result.round = rounds_.round();
  result.num_elements = static_cast<int64_t>(model_->layout.num_elements());
  result.range = model_->codecs.range;
  observer_.OnLiveWorkers(membership_.LiveCount());
  LogJoinLocked(*rank, args.replica_round, result.upload);
  return result;
}

void ParameterServer::LogJoinLocked(int rank, int64_t replica_round,
                                    bool upload) {
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
  logger_.Info(absl::StrCat("rank ", rank, " joined (", membership_.LiveCount(),
                            "/", options_.workers, " live)", note));
}

// ------------------------------------------------------------- UploadParams

absl::StatusOr<ParameterServer::UploadPlan> ParameterServer::BeginUpload(
    int rank, ServerCall& call) {
  absl::MutexLock lock(&mu_);
  if (shutting_down_) {
    return absl::UnavailableError("the server is shutting down");
  }
  UploadPlan plan;
  if (replica_claim_.has_value() && replica_claim_->rank == rank) {
    plan.round = replica_claim_->round;
    plan.checksum = replica_claim_->checksum;
  }
  if (rounds_.started() &&
      !(plan.checksum.has_value() && rounds_.AcceptsReplica(plan.round))) {
    return Rejected(Rejection::kBadUpload,
                    absl::FailedPreconditionError(
                        "the initial parameters are already uploaded"));
  }
  absl::StatusOr<int64_t> id = membership_.BeginUpload(rank, clock_.Now());
  if (!id.ok()) return id.status();
  plan.id = *id;
  upload_call_ = &call;
  plan.num_elements = model_->codecs.worker->num_elements();
  return plan;
}

void ParameterServer::UploadProgress() {
  absl::MutexLock lock(&mu_);
  membership_.UploadProgress(clock_.Now());
}

absl::Status ParameterServer::EndUpload(int rank, const UploadPlan& plan,
                                        absl::StatusOr<std::vector<float>> x) {
  absl::MutexLock lock(&mu_);
  if (!membership_.EndUpload(plan.id, rank, clock_.Now())) {
    // Given up on as stalled (and cancelled): its rank left then, and may
    // be a new incarnation by now.
    return Rejected(Rejection::kBadUpload,
                    absl::DeadlineExceededError(
                        "the upload stalled and was given up; join again"));
  }
  upload_call_ = nullptr;
  absl::Status s = x.status();
  if (s.ok() && plan.checksum.has_value() &&
      ParamsChecksum(*x) != *plan.checksum) {
    s = absl::InvalidArgumentError(
        absl::StrCat("the replica's params_checksum is ", ParamsChecksum(*x),
                     ", not the ", *plan.checksum, " its Join declared"));
  }
  if (s.ok() && shutting_down_) {
    s = absl::UnavailableError("the server is shutting down");
  }
  if (s.ok()) s = StartFromUpload(rank, plan.round, *std::move(x));
  if (s.ok()) {
    CountPayloadLocked(TrafficDirection::kJoin,
                       static_cast<int64_t>(plan.num_elements * sizeof(float)),
                       0);
    changed_.SignalAll();
    return absl::OkStatus();
  }
  // Nothing is kept. The uploader must join again (so its rank is freed),
  // and the next Join is told to upload.
  if (membership_.IsLive(rank)) {
    LeaveLocked(rank, absl::StrCat("upload failed: ", s.message()));
  }
  ResetIfEmptyLocked();
  if (absl::IsResourceExhausted(s) || absl::IsUnavailable(s)) {
    return s;  // the server's limits or state, not the upload's bytes
  }
  return Rejected(Rejection::kBadUpload, s);
}

// -------------------------------------------------------------- FetchParams

absl::StatusOr<ParameterServer::ParamsCopy> ParameterServer::WaitForParams(
    int rank, const ServerCall& call) {
  absl::MutexLock lock(&mu_);
  const absl::Time give_up =
      clock_.Now() +
      std::min(options_.round_timeout, call.TimeLeft() - kDeadlineMargin);
  while (!rounds_.started() && !shutting_down_ && !call.IsCancelled() &&
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
  if (call.IsCancelled()) {
    return absl::CancelledError("the client went away during FetchParams");
  }
  // One consistent snapshot: x as of the start of `round`.
  const RoundEngine& engine = *rounds_.engine();
  ParamsCopy copy;
  copy.x.assign(engine.params().begin(), engine.params().end());
  copy.round = engine.round();
  copy.tracked = membership_.BeginCall(rank);
  return copy;
}

void ParameterServer::EndFetch(int rank, bool tracked, int64_t payload_bytes) {
  absl::MutexLock lock(&mu_);
  CountPayloadLocked(TrafficDirection::kJoin, payload_bytes, 0);
  if (tracked) membership_.EndCall(rank, clock_.Now());
}

void ParameterServer::FetchClientGone(int rank) {
  absl::MutexLock lock(&mu_);
  // A worker killed while it fetched x would otherwise keep its rank for
  // the idle grace: its restarted process would be refused and rounds would
  // wait for it.
  if (membership_.ClientWentAway(rank)) {
    LeaveLocked(rank,
                "its FetchParams call was cancelled before it opened its "
                "Train stream (the worker went away)");
  }
}

// -------------------------------------------------------------------- Train

absl::Status ParameterServer::BeginTrain(int rank) {
  absl::MutexLock lock(&mu_);
  if (absl::Status s = ServingLocked(); !s.ok()) return s;
  if (!rounds_.started()) {
    return Rejected(Rejection::kNotReady,
                    absl::FailedPreconditionError(
                        "the initial parameters have not been uploaded yet"));
  }
  return membership_.BeginTrain(rank);
}

std::shared_ptr<const UpdateCodec> ParameterServer::worker_codec() const {
  absl::MutexLock lock(&mu_);
  return model_.has_value() ? model_->codecs.worker : nullptr;
}

absl::StatusOr<int64_t> ParameterServer::PlaceUpdate(int rank,
                                                     int64_t round) const {
  absl::MutexLock lock(&mu_);
  if (absl::Status s = ServingLocked(); !s.ok()) return s;
  return rounds_.PlaceUpdate(rank, round);
}

void ParameterServer::DeltaSent(const ClosedRound& closed) {
  absl::MutexLock lock(&mu_);
  CountPayloadLocked(
      TrafficDirection::kServerToWorker,
      static_cast<int64_t>(closed.delta->size()),
      static_cast<int64_t>(model_->codecs.server->num_elements() *
                           sizeof(float)));
}

absl::Status ParameterServer::SubmitProgress(
    int rank, int64_t round, const std::shared_ptr<const std::string>& update,
    size_t segments, float loss) {
  absl::MutexLock lock(&mu_);
  if (absl::Status s = ServingLocked(); !s.ok()) return s;
  const UpdateCodec& codec = rounds_.engine()->worker_codec();
  const bool complete = segments == codec.segments().size();
  if (absl::Status s = rounds_.Progress(rank, round, update, segments,
                                        complete ? loss : NAN);
      !s.ok()) {
    return s;
  }
  if (complete) {
    CountPayloadLocked(
        TrafficDirection::kWorkerToServer, static_cast<int64_t>(update->size()),
        static_cast<int64_t>(codec.num_elements() * sizeof(float)));
  }
  changed_.SignalAll();
  return absl::OkStatus();
}

void ParameterServer::AbandonUpdate(int rank, int64_t round) {
  absl::MutexLock lock(&mu_);
  rounds_.Abandon(rank, round);
  changed_.SignalAll();
}

void ParameterServer::Wake() {
  absl::MutexLock lock(&mu_);
  changed_.SignalAll();
}

absl::StatusOr<std::optional<ParameterServer::DeltaProgress>>
ParameterServer::AwaitDelta(int64_t round, int attempt, size_t want_bytes,
                            const ServerCall& call,
                            const std::atomic<bool>& stop) {
  absl::MutexLock lock(&mu_);
  while (true) {
    if (stop.load()) return std::nullopt;
    if (std::optional<absl::StatusOr<ClosedRound>> outcome =
            rounds_.Outcome(round)) {
      if (!outcome->ok()) return outcome->status();
      DeltaProgress p;
      p.closed = **outcome;
      p.ready_bytes = p.closed->delta->size();
      return p;
    }
    if (shutting_down_) {
      return absl::UnavailableError("the server is shutting down");
    }
    if (call.IsCancelled()) {
      return absl::CancelledError("the worker cancelled its Train stream");
    }
    if (std::optional<ClosingRound> c = rounds_.Closing(round)) {
      size_t ready = 0;
      if (c->segments_closed > 0) {
        const Segment& last =
            rounds_.engine()->server_codec().segments()[c->segments_closed - 1];
        ready = last.byte_begin + last.byte_size;
      }
      // A last chunk is shorter than the others.
      if ((attempt >= 0 && c->attempt != attempt) ||
          ready >= std::min(want_bytes, c->delta->size())) {
        DeltaProgress p;
        p.closing = *c;
        p.ready_bytes = ready;
        return p;
      }
    }
    TickLocked();
    if (rounds_.Outcome(round).has_value()) continue;
    WaitLocked(rounds_.TimeoutAt().value_or(absl::InfiniteFuture()));
  }
}

void ParameterServer::EndTrain(int rank, const absl::Status& result) {
  absl::MutexLock lock(&mu_);
  // Streams that a shutdown or a failed round engine ends are the server's
  // doing, not a worker dropping out.
  if (!result.ok() && ServingLocked().ok()) observer_.OnWorkerDropped();
  LeaveLocked(rank,
              result.ok() ? "closed its Train stream" : result.ToString());
}

// ---------------------------------------------------------------- operators

ServerSummary ParameterServer::StatusNow() {
  absl::MutexLock lock(&mu_);
  TickLocked();
  return SummaryLocked();
}

// ------------------------------------------------------------------ helpers

absl::Status ParameterServer::ServingLocked() const {
  if (shutting_down_) {
    return absl::UnavailableError("the server is shutting down");
  }
  return rounds_.fatal();
}

void ParameterServer::CountWireLocked(TrafficDirection direction,
                                      int64_t bytes) {
  traffic_[direction].wire += bytes;
  observer_.OnWireBytes(direction, bytes);
}

void ParameterServer::CountPayloadLocked(TrafficDirection direction,
                                         int64_t payload_bytes,
                                         int64_t fp32_bytes) {
  traffic_[direction].payload += payload_bytes;
  traffic_[direction].fp32 += fp32_bytes;
  observer_.OnPayloadBytes(direction, payload_bytes, fp32_bytes);
}

void ParameterServer::WaitLocked(absl::Time deadline) {
  changed_.WaitWithTimeout(
      &mu_, std::clamp(deadline - clock_.Now(), absl::ZeroDuration(), kPoll));
}

void ParameterServer::TickLocked() {
  const absl::Time now = clock_.Now();
  for (const Membership::Expired& e : membership_.Expire(now)) {
    if (e.stalled_uploader && upload_call_ != nullptr) {
      upload_call_->Cancel();
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

void ParameterServer::ResetIfEmptyLocked() {
  if (rounds_.started() || !membership_.Empty()) return;
  model_.reset();
  membership_.ResetUploader();
}

void ParameterServer::LeaveLocked(int rank, absl::string_view why) {
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

absl::Status ParameterServer::StartFromUpload(int rank, int64_t round,
                                              std::vector<float> x) {
  RoundEngineState state;
  state.round = std::max<int64_t>(round, 1);
  state.params = std::move(x);  // E starts at zero
  // The initial parameters begin a new history: no logged delta is theirs
  // (the first round closed removes the old records).
  const int64_t replayed =
      round > 0 ? ReplayDeltas(delta_log_, *model_->codecs.server, &state) : 0;
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

ServerSummary ParameterServer::SummaryLocked() const {
  ServerSummary s;
  s.round = rounds_.round();
  s.rounds_closed = rounds_.rounds_closed();
  s.short_rounds = rounds_.short_rounds();
  s.dropped_rounds = rounds_.dropped_rounds();
  s.resumed_at_round = rounds_.resumed_at_round();
  s.awaiting_replicas =
      !rounds_.started() || (rounds_.resumed_at_round() > 0 &&
                             rounds_.AcceptsReplica(rounds_.round() + 1));
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

ServerSummary ParameterServer::Summary() const {
  absl::MutexLock lock(&mu_);
  ServerSummary s = SummaryLocked();
  // O(n), so here only and not in every Status call.
  if (rounds_.started()) {
    s.error_checksum = ParamsChecksum(rounds_.engine()->error_memory());
  }
  return s;
}

RoundEngineOptions ParameterServer::EngineOptions() const {
  RoundEngineOptions eo;
  eo.error_feedback = options_.compression.server_error_feedback;
  eo.seed = options_.seed;
  eo.threads = options_.threads;
  return eo;
}

absl::StatusOr<ParameterServer::Model> ParameterServer::ModelFor(
    TensorLayout layout) const {
  absl::StatusOr<ShardCodecs> codecs = MakeShardCodecs(
      layout, options_.compression, options_.shard, options_.num_shards);
  if (!codecs.ok()) return codecs.status();
  return Model{std::move(layout), *std::move(codecs)};
}

std::optional<Checkpoint> ParameterServer::Snapshot() const {
  absl::MutexLock lock(&mu_);
  return rounds_.Snapshot();
}

std::optional<Checkpoint> ParameterServer::TakeDueCheckpoint() {
  absl::MutexLock lock(&mu_);
  return rounds_.TakeDueCheckpoint();
}

absl::Status ParameterServer::Restore(Checkpoint checkpoint) {
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
  // Before the server serves, so nothing waits for the lock while the
  // delta log is read.
  absl::MutexLock lock(&mu_);
  if (model_.has_value() || rounds_.started()) {
    return absl::InvalidArgumentError(
        "Restore: the server already has a layout or parameters");
  }
  absl::StatusOr<Model> model = ModelFor(checkpoint.layout);
  if (!model.ok()) return model.status();
  const int64_t checkpoint_round = checkpoint.state.round;
  const int64_t replayed =
      ReplayDeltas(delta_log_, *model->codecs.server, &checkpoint.state);
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
  model_ = *std::move(model);
  const int64_t rounds_closed = checkpoint.rounds_closed;
  rounds_.Start(*std::move(engine), std::move(checkpoint), rounds_closed,
                /*resumed=*/true);
  changed_.SignalAll();
  return absl::OkStatus();
}

bool ParameterServer::DoneLocked() const {
  if (!ServingLocked().ok()) return true;
  const std::optional<absl::Time> final_closed = rounds_.final_closed_at();
  if (!final_closed.has_value()) return false;
  return membership_.TrainingCount() == 0 ||
         clock_.Now() >= *final_closed + options_.round_timeout;
}

bool ParameterServer::WaitUntilDone(absl::Duration timeout) {
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

void ParameterServer::Shutdown() {
  absl::MutexLock lock(&mu_);
  shutting_down_ = true;
  changed_.SignalAll();
}

}  // namespace effadam
