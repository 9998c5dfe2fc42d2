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
  arrivals_.clear();
  timed_out_ = false;
  closing_delta_.reset();
  segments_closed_ = 0;
  attempt_ = 0;
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

absl::StatusOr<int64_t> RoundCoordinator::PlaceUpdate(int rank,
                                                      int64_t round) const {
  if (absl::Status s = CheckRound(rank, round); !s.ok()) return s;
  const int64_t current = engine_->round();
  const bool next_open = rules_.rounds <= 0 || current <= rules_.rounds;
  if (round < current && next_open && !engine_->HasSubmitted(rank) &&
      arrivals_.find(rank) == arrivals_.end()) {
    return current;
  }
  return round;
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
  if (absl::Status s = CheckRound(rank, round); !s.ok()) return s;
  if (!validated) {
    if (absl::Status s = engine_->worker_codec().Validate(*update); !s.ok()) {
      return Rejected(Rejection::kInvalidPayload,
                      absl::InvalidArgumentError(absl::StrCat(
                          "update from rank ", rank, ": ", s.message())));
    }
  }
  const size_t segments = engine_->worker_codec().segments().size();
  return Progress(rank, round, std::move(update), segments, loss);
}

absl::Status RoundCoordinator::Progress(
    int rank, int64_t round, std::shared_ptr<const std::string> update,
    size_t segments, float loss) {
  // The round may have moved on while the update was read.
  if (absl::Status s = CheckRound(rank, round); !s.ok()) return s;
  const bool complete = segments >= engine_->worker_codec().segments().size();
  if (round == engine_->round()) {
    const std::string* buffer = update.get();
    auto it = arrivals_.find(rank);
    if (it == arrivals_.end() && !engine_->HasSubmitted(rank) &&
        !engine_->closing()) {
      // CheckRound, HasSubmitted and closing leave only bytes that do not
      // validate as a reason for Submit to refuse.
      if (absl::Status s = engine_->Submit(rank, round, std::move(update),
                                           /*validated=*/true);
          !s.ok()) {
        return Rejected(Rejection::kInvalidPayload, s);
      }
      if (arrivals_.empty()) round_opened_at_ = clock_.Now();
      it = arrivals_.emplace(rank, Arrival{buffer, 0}).first;
    }
    // Otherwise its round is closing over the others, or an earlier
    // incarnation of this rank already contributed to it: not averaged,
    // but the worker gets the round's delta like everyone else.
    if (it != arrivals_.end() && it->second.buffer == buffer &&
        segments > it->second.segments) {
      it->second.segments = segments;
      // The loss is the worker's report, not part of the math: a NaN or
      // Inf one is left out of the mean rather than refusing a good update.
      if (complete && std::isfinite(loss)) {
        loss_sum_ += loss;
        ++loss_count_;
      }
    }
  }
  MaybeClose();
  return absl::OkStatus();
}

void RoundCoordinator::Abandon(int rank, int64_t round) {
  if (!engine_ || round != engine_->round()) return;
  auto it = arrivals_.find(rank);
  const size_t all = engine_->worker_codec().segments().size();
  if (it == arrivals_.end() || it->second.segments >= all) return;
  Reopen();
  engine_->Withdraw(rank);
  arrivals_.erase(it);
  MaybeClose();
}

void RoundCoordinator::Reopen() {
  if (!engine_->closing()) return;
  engine_->AbortClose();
  ++attempt_;
  // Streams may still be sending the old attempt's bytes: a new buffer.
  closing_delta_.reset();
  segments_closed_ = 0;
}

void RoundCoordinator::WithdrawIncomplete() {
  const size_t all = engine_->worker_codec().segments().size();
  Reopen();
  for (auto it = arrivals_.begin(); it != arrivals_.end();) {
    if (it->second.segments < all) {
      engine_->Withdraw(it->first);
      it = arrivals_.erase(it);
    } else {
      ++it;
    }
  }
}

void RoundCoordinator::MaybeClose() {
  if (!engine_ || !fatal_.ok() || engine_->num_submitted() == 0) return;
  if (!timed_out_ && clock_.Now() >= round_opened_at_ + Timeout()) {
    timed_out_ = true;
    // The round closes over the complete updates; those still arriving
    // come too late (their workers get the delta and stay in step). With
    // none complete it waits for those that began.
    const size_t all = engine_->worker_codec().segments().size();
    const bool any_complete =
        std::any_of(arrivals_.begin(), arrivals_.end(),
                    [&](const auto& a) { return a.second.segments >= all; });
    if (any_complete) WithdrawIncomplete();
  }
  if (!engine_->closing()) {
    bool missing = false;
    for (int r = 0; r < rules_.workers && !missing; ++r) {
      missing = !engine_->HasSubmitted(r) && !membership_.HasDeparted(r);
    }
    if (missing && !timed_out_) return;
    BeginClose();
    if (!fatal_.ok()) return;
  }
  CloseReadySegments();
}

absl::Duration RoundCoordinator::Timeout() const {
  const bool awaiting_replicas =
      resumed_at_round_ > 0 && rounds_closed_ == rounds_closed_at_start_;
  if (awaiting_replicas && !membership_.EveryRankJoined()) {
    return std::max(rules_.round_timeout, rules_.replica_wait);
  }
  return rules_.round_timeout;
}

void RoundCoordinator::BeginClose() {
  // The memory of an old delta that no stream sends any more, else new.
  // The fence pairs with the release of the last sender's reference.
  std::shared_ptr<std::string> delta = std::move(spare_delta_);
  const bool reusable = delta != nullptr && delta.use_count() == 1;
  std::atomic_thread_fence(std::memory_order_acquire);
  if (!reusable) delta = std::make_shared<std::string>();
  if (absl::Status s = engine_->BeginClose(delta.get()); !s.ok()) {
    Fail(engine_->round(), s);
    return;
  }
  closing_delta_ = std::move(delta);
  segments_closed_ = 0;
}

void RoundCoordinator::CloseReadySegments() {
  const size_t all = engine_->worker_codec().segments().size();
  size_t ready = all;
  for (const auto& [rank, arrival] : arrivals_) {
    if (engine_->HasSubmitted(rank)) {
      ready = std::min(ready, arrival.segments);
    }
  }
  if (ready > segments_closed_) {
    if (absl::Status s = engine_->CloseSegments(segments_closed_, ready,
                                                closing_delta_.get());
        !s.ok()) {
      Fail(engine_->round(), s);
      return;
    }
    segments_closed_ = ready;
  }
  if (segments_closed_ == all) Finish();
}

void RoundCoordinator::Fail(int64_t round, const absl::Status& s) {
  // Only a broken invariant gets here (the engine validated every update
  // and drops rounds whose result is not finite); the server cannot go
  // on. Every stream ends with this error and the daemon exits.
  engine_->AbortClose();
  fatal_ = absl::InternalError(
      absl::StrCat("round ", round, " could not be closed: ", s.message()));
  logger_.Error(fatal_.message());
}

void RoundCoordinator::Finish() {
  const int64_t round = engine_->round();
  const int contributors = static_cast<int>(engine_->num_submitted());
  int lagging = 0;  // live, yet not in this round
  for (int r = 0; r < rules_.workers; ++r) {
    lagging += membership_.IsLive(r) && !engine_->HasSubmitted(r);
  }
  std::shared_ptr<std::string> delta = std::move(closing_delta_);
  const int attempt = attempt_;
  arrivals_.clear();
  timed_out_ = false;
  segments_closed_ = 0;
  attempt_ = 0;
  bool dropped = false;
  // A dropped round's zero delta goes to a buffer of its own: streams may
  // still be sending the bytes of the segments closed in `delta`.
  std::string zero_delta;
  if (absl::Status s = engine_->FinishClose(&zero_delta, &dropped); !s.ok()) {
    Fail(round, s);
    return;
  }
  if (dropped) delta = std::make_shared<std::string>(std::move(zero_delta));
  if (dropped) {
    logger_.Warning(absl::StrCat(
        "round ", round, " dropped: the result of its ", contributors,
        " updates is not finite in float; x and E are unchanged and the "
        "delta is zero"));
  }
  // Before any worker can apply it: a server killed from here on replays
  // it.
  if (absl::Status s = delta_log_.Append(round, *delta); !s.ok()) {
    logger_.Warning(absl::StrCat("the delta of round ", round,
                                 " is not in the delta log: ", s.message()));
  }
  const absl::Time now = clock_.Now();
  if (contributors < rules_.workers) ++short_rounds_;
  closed_.push_back(ClosedRound{round, delta, contributors, dropped, attempt});
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
  stats.error_memory_norm = engine_->error_memory_norm();
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

std::optional<ClosingRound> RoundCoordinator::Closing(int64_t round) const {
  if (!engine_ || !engine_->closing() || engine_->round() != round) {
    return std::nullopt;
  }
  return ClosingRound{round, attempt_, closing_delta_, segments_closed_};
}

std::optional<absl::Time> RoundCoordinator::TimeoutAt() const {
  if (!engine_ || engine_->num_submitted() == 0 || timed_out_) {
    return std::nullopt;
  }
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
