#include "server/round_coordinator.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"

namespace effadam {
namespace {

// How many closed rounds keep their delta. A worker whose update arrives
// after its round closed on the timeout is sent that round's delta, so it
// stays in step; one that falls further behind must join again.
constexpr size_t kKeptRounds = 4;

}  // namespace

RoundCoordinator::RoundCoordinator(const Rules& rules,
                                   const Membership& membership,
                                   const Clock& clock, ServerObserver& observer,
                                   Logger& logger, DeltaLog& delta_log)
    : rules_(rules),
      membership_(membership),
      clock_(clock),
      observer_(observer),
      logger_(logger),
      delta_log_(delta_log),
      last_loss_(std::numeric_limits<double>::quiet_NaN()) {}

void RoundCoordinator::Start(std::unique_ptr<RoundEngine> engine,
                             Checkpoint identity, int64_t rounds_closed,
                             bool resumed) {
  engine_ = std::move(engine);
  identity_ = std::move(identity);
  identity_.state = {};
  rounds_closed_ = rounds_closed;
  rounds_closed_at_start_ = rounds_closed;
  if (resumed) Resumed();
}

void RoundCoordinator::Resumed() {
  resumed_at_round_ = engine_->round();
  // A state saved after the last round: nothing is left to do.
  if (CompletesRun(engine_->round(), rules_.rounds)) {
    final_closed_at_ = clock_.Now();
  }
  observer_.OnResumed(engine_->round());
}

bool RoundCoordinator::AcceptsReplica(int64_t round) const {
  return engine_ != nullptr && fatal_.ok() &&
         rounds_closed_ == rounds_closed_at_start_ &&
         round > engine_->round() &&
         (rules_.rounds == 0 || round <= rules_.rounds + 1);
}

void RoundCoordinator::Recover(std::unique_ptr<RoundEngine> engine) {
  rounds_closed_ += engine->round() - engine_->round();
  rounds_closed_at_start_ = rounds_closed_;
  engine_ = std::move(engine);
  closed_.clear();
  delta_buffers_.clear();
  loss_sum_ = 0;
  loss_count_ = 0;
  due_checkpoint_.reset();
  Resumed();
}

const ClosedRound* RoundCoordinator::FindClosed(int64_t round) const {
  for (const ClosedRound& c : closed_) {
    if (c.round == round) return &c;
  }
  return nullptr;
}

absl::Status RoundCoordinator::CheckRound(int rank, int64_t round) const {
  if (!fatal_.ok()) return fatal_;
  if (rules_.rounds > 0 && round > rules_.rounds) {
    return Rejected(
        Rejection::kTrainingEnded,
        absl::FailedPreconditionError(absl::StrCat(
            "rank ", rank, " sent round ", round,
            " but training ends after round ", rules_.rounds, " (--rounds)")));
  }
  if (round < 1) {
    return Rejected(
        Rejection::kWrongRound,
        absl::InvalidArgumentError(absl::StrCat(
            "rank ", rank, " sent round ", round, "; rounds count from 1")));
  }
  const int64_t current = engine_->round();
  if (round == current || (round < current && FindClosed(round))) {
    return absl::OkStatus();
  }
  if (round > current) {
    return Rejected(Rejection::kWrongRound,
                    absl::FailedPreconditionError(absl::StrCat(
                        "rank ", rank, " sent an update for round ", round,
                        " but the server is collecting round ", current)));
  }
  // ABORTED, not FAILED_PRECONDITION: the worker did nothing wrong and
  // recovers by joining again and fetching x (WorkerClient does).
  return Rejected(
      Rejection::kLagging,
      absl::AbortedError(absl::StrCat(
          "rank ", rank, " sent an update for round ", round,
          ", too late: the server is collecting round ", current,
          " and no longer keeps that round's delta; join again and fetch x")));
}

absl::Status RoundCoordinator::Accept(int rank, int64_t round,
                                      std::string update, float loss) {
  return Accept(rank, round,
                std::make_shared<const std::string>(std::move(update)),
                /*validated=*/false, loss);
}

absl::Status RoundCoordinator::Accept(int rank, int64_t round,
                                      std::shared_ptr<const std::string> update,
                                      bool validated, float loss) {
  // The round may have moved on while the update was read.
  if (absl::Status s = CheckRound(rank, round); !s.ok()) return s;
  if (round == engine_->round() && !engine_->HasSubmitted(rank)) {
    // CheckRound and HasSubmitted leave only bytes that do not validate as
    // a reason for Submit to refuse.
    if (absl::Status s =
            engine_->Submit(rank, round, std::move(update), validated);
        !s.ok()) {
      return Rejected(Rejection::kInvalidPayload, s);
    }
    if (engine_->num_submitted() == 1) round_opened_at_ = clock_.Now();
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
    absl::Status s = validated ? absl::OkStatus()
                               : engine_->worker_codec().Validate(*update);
    if (!s.ok()) {
      return Rejected(Rejection::kInvalidPayload,
                      absl::InvalidArgumentError(absl::StrCat(
                          "update from rank ", rank, ": ", s.message())));
    }
  }
  MaybeClose();
  return absl::OkStatus();
}

void RoundCoordinator::MaybeClose() {
  if (!engine_ || !fatal_.ok() || engine_->num_submitted() == 0) return;
  bool missing = false;
  for (int r = 0; r < rules_.workers && !missing; ++r) {
    missing = !engine_->HasSubmitted(r) && !membership_.HasDeparted(r);
  }
  if (missing && clock_.Now() < round_opened_at_ + Timeout()) return;
  Close();
}

absl::Duration RoundCoordinator::Timeout() const {
  const bool awaiting_replicas =
      resumed_at_round_ > 0 && rounds_closed_ == rounds_closed_at_start_;
  if (awaiting_replicas && !membership_.EveryRankJoined()) {
    return std::max(rules_.round_timeout, rules_.replica_wait);
  }
  return rules_.round_timeout;
}

void RoundCoordinator::Close() {
  const int64_t round = engine_->round();
  const int contributors = static_cast<int>(engine_->num_submitted());
  int lagging = 0;  // live, yet not in this round
  for (int r = 0; r < rules_.workers; ++r) {
    lagging += membership_.IsLive(r) && !engine_->HasSubmitted(r);
  }
  const int64_t dropped_before = engine_->dropped_rounds();
  // The memory of an old delta that no stream sends any more, else new.
  // The fence pairs with the release of the last sender's reference.
  std::shared_ptr<std::string> delta = std::move(spare_delta_);
  const bool reusable = delta != nullptr && delta.use_count() == 1;
  std::atomic_thread_fence(std::memory_order_acquire);
  if (!reusable) delta = std::make_shared<std::string>();
  if (absl::Status s = engine_->CloseRoundInto(delta.get()); !s.ok()) {
    // Only a broken invariant gets here (the engine validated every update
    // and drops rounds whose result is not finite); the server cannot go
    // on. Every stream ends with this error and the daemon exits.
    fatal_ = absl::InternalError(
        absl::StrCat("round ", round, " could not be closed: ", s.message()));
    logger_.Error(fatal_.message());
    return;
  }
  const bool dropped = engine_->dropped_rounds() > dropped_before;
  if (dropped) {
    logger_.Warning(absl::StrCat(
        "round ", round, " dropped: the result of its ", contributors,
        " updates is not finite in float; x and E are unchanged and the "
        "delta is zero"));
  }
  // Before any worker can have it: a server killed from here on replays it.
  if (absl::Status s = delta_log_.Append(round, *delta); !s.ok()) {
    logger_.Warning(absl::StrCat("the delta of round ", round,
                                 " is not in the delta log: ", s.message()));
  }
  const absl::Time now = clock_.Now();
  if (contributors < rules_.workers) ++short_rounds_;
  closed_.push_back(ClosedRound{round, delta, contributors});
  delta_buffers_.push_back(std::move(delta));
  while (closed_.size() > kKeptRounds) {
    closed_.pop_front();
    spare_delta_ = std::move(delta_buffers_.front());
    delta_buffers_.pop_front();
  }
  ++rounds_closed_;
  last_loss_ = loss_count_ > 0 ? loss_sum_ / loss_count_
                               : std::numeric_limits<double>::quiet_NaN();
  loss_sum_ = 0;
  loss_count_ = 0;
  if (rules_.rounds > 0 && round == rules_.rounds) final_closed_at_ = now;

  ClosedRoundStats stats;
  stats.round = round;
  stats.contributors = contributors;
  stats.live_workers = membership_.LiveCount();
  stats.lagging_workers = lagging;
  stats.duration_seconds = absl::ToDoubleSeconds(now - round_opened_at_);
  stats.train_loss = last_loss_;
  // O(n) per round, so only for an observer that listens; double, so that
  // a large model's sum of squares keeps the small entries.
  if (&observer_ != &ServerObserver::None()) {
    double sum_squares = 0;
    for (float e : engine_->error_memory()) {
      sum_squares += static_cast<double>(e) * static_cast<double>(e);
    }
    stats.error_memory_norm = std::sqrt(sum_squares);
  }
  stats.dropped = dropped;
  observer_.OnRoundClosed(stats);

  if (rules_.checkpoint_every > 0 &&
      rounds_closed_ % rules_.checkpoint_every == 0) {
    due_checkpoint_ = Snapshot();
  }
}

std::optional<absl::StatusOr<ClosedRound>> RoundCoordinator::Outcome(
    int64_t round) const {
  if (const ClosedRound* closed = FindClosed(round)) return *closed;
  if (!fatal_.ok()) return absl::StatusOr<ClosedRound>(fatal_);
  if (engine_->round() > round) {
    return absl::StatusOr<ClosedRound>(
        Rejected(Rejection::kLagging,
                 absl::AbortedError(absl::StrCat(
                     "the delta of round ", round,
                     " is no longer kept (the server is at round ",
                     engine_->round(), "); join again and fetch x"))));
  }
  return std::nullopt;
}

std::optional<absl::Time> RoundCoordinator::TimeoutAt() const {
  if (!engine_ || engine_->num_submitted() == 0) return std::nullopt;
  return round_opened_at_ + Timeout();
}

std::optional<Checkpoint> RoundCoordinator::Snapshot() const {
  if (!engine_) return std::nullopt;
  Checkpoint c = identity_;
  c.rounds_closed = rounds_closed_;
  c.state.round = engine_->round();
  c.state.params.assign(engine_->params().begin(), engine_->params().end());
  c.state.error_memory.assign(engine_->error_memory().begin(),
                              engine_->error_memory().end());
  return c;
}

std::optional<Checkpoint> RoundCoordinator::TakeDueCheckpoint() {
  std::optional<Checkpoint> c = std::move(due_checkpoint_);
  due_checkpoint_.reset();
  return c;
}

}  // namespace effadam
