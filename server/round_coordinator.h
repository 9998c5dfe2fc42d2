#ifndef EFFADAM_SERVER_ROUND_COORDINATOR_H_
#define EFFADAM_SERVER_ROUND_COORDINATOR_H_

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/logger.h"
#include "core/round_engine.h"
#include "server/checkpoint.h"
#include "server/membership.h"
#include "server/server_observer.h"

namespace effadam {

// A closed round's delta, shared by the streams that send it.
struct ClosedRound {
  int64_t round = 0;
  std::shared_ptr<const std::string> delta;
  int contributors = 0;
  // Its result was not finite: x and E unchanged, a zero delta.
  bool dropped = false;
  // Which attempt at closing the round this delta is (see ClosingRound).
  int attempt = 0;
};

// The open round while it closes segment by segment: its delta buffer,
// whose first segments_closed segments (of the server codec) hold their
// final bytes, which no one writes again. A RESTART (a participant left or
// timed out mid-round) starts a new attempt with a new buffer.
struct ClosingRound {
  int64_t round = 0;
  int attempt = 0;
  std::shared_ptr<const std::string> delta;
  size_t segments_closed = 0;
};

// Drives the synchronous rounds of one parameter server over its
// RoundEngine (docs/protocol.md, "Rounds"): which updates a round takes,
// when it closes, the deltas of the last few closed rounds (for workers
// whose update came after its round closed), the mean loss, and the
// checkpoints that fall due.
//
// A round closes segment by segment while the updates arrive (Progress):
// its participants are fixed once every rank has begun sending its update
// or departed (ranks that never joined are waited for), or at round_timeout
// after its first update (replica_wait for the first round after a restart
// while ranks have not rejoined): then the ranks whose update is complete,
// or, when none is, every rank that began. Segment k then closes as soon
// as every participant's segment k is in, so its delta can be sent while
// later segments still arrive (closing()). A participant that leaves
// mid-round (Abandon), or is still incomplete at the timeout, is taken out
// and the round closes again from segment 0 over the rest: a new attempt
// (ClosingRound::attempt; workers hear RESTART). x and E change only when
// the last segment closed and the round is finite.
//
// A closed round's delta goes to the injected DeltaLog before any worker
// can apply it (Outcome), so a restarted server can replay it.
//
// Refusals are statuses tagged with their Rejection. Holds no lock and
// starts no thread: not thread-safe; ParameterServer calls it under
// the lock that also guards the Membership it reads.
class RoundCoordinator {
 public:
  struct Rules {
    int workers = 1;
    int64_t rounds = 0;  // 0: until shut down
    absl::Duration round_timeout = absl::Seconds(60);
    // After a restart from saved state, while a rejoining worker's replica
    // may still be newer than x, the first round waits this long (instead
    // of round_timeout) for ranks that have not joined again: closing it
    // early with a lagging worker's update would forgo the newer replicas
    // of the others, losing their rounds.
    absl::Duration replica_wait = absl::Seconds(60);
    int64_t checkpoint_every = 0;  // 0: no snapshots while training
  };
  // The references must outlive the coordinator.
  RoundCoordinator(const Rules& rules, const Membership& membership,
                   const Clock& clock, ServerObserver& observer, Logger& logger,
                   DeltaLog& delta_log = DeltaLog::None());

  // Once the parameters exist: `engine` (fresh, or restored from a
  // checkpoint), what every checkpoint of it names (layout, settings,
  // shard; its state is ignored), and the rounds closed before.
  void Start(std::unique_ptr<RoundEngine> engine, Checkpoint identity,
             int64_t rounds_closed, bool resumed);
  bool started() const { return engine_ != nullptr; }

  // Zero lost rounds: until a round closes after Start, a replica that
  // rejoining workers hold at a round later than x's is better than x (a
  // restarted server's checkpoint is up to checkpoint_every - 1 rounds
  // old). Whether a replica at `round` would be taken now.
  bool AcceptsReplica(int64_t round) const;
  // Goes on from a replica: `engine` holds it (at its round, with E zero:
  // the server's residual of the rounds since the checkpoint is lost).
  // rounds_closed counts the rounds the replica is ahead; updates pending
  // for the old round are dropped, and their workers, told that the delta
  // is gone, resync. Needs AcceptsReplica(engine->round()).
  void Recover(std::unique_ptr<RoundEngine> engine);
  // Null before Start.
  const RoundEngine* engine() const { return engine_.get(); }
  // The round being collected; 1 before Start.
  int64_t round() const { return engine_ ? engine_->round() : 1; }

  // Whether an update of `rank` for `round` can be taken now (the round
  // being collected, or one that closed without it and whose delta is
  // still kept). Needs Start.
  absl::Status CheckRound(int rank, int64_t round) const;
  // CheckRound, then the round `rank`'s update sent for `round` counts in:
  // `round`, or the round being collected when `round` has closed (its
  // delta still kept) and the rank has sent nothing for the current round
  // yet. Such an update came late (its worker was slow, stopped, cut off
  // or away on another shard); counted in its own round it would not be
  // averaged, and the worker, a round behind per late step, would keep
  // its shards' rounds paired differently from the other workers': with S
  // shards every round then waits for someone's next step, and when three
  // pairings meet, for the round timeout (docs/faults.md, "Workers out of
  // step"). Taken into the current round it is averaged there (stale by
  // the rounds it missed), the worker receives every delta it missed and
  // that round's, and it is in step with the others.
  absl::StatusOr<int64_t> PlaceUpdate(int rank, int64_t round) const;
  // Takes a complete update: averaged if its round is open, else checked
  // and not averaged. May close the round.
  absl::Status Accept(int rank, int64_t round, std::string update, float loss);
  // The same for bytes shared with the caller (RoundEngine::Submit);
  // `validated`: already checked against the worker codec.
  absl::Status Accept(int rank, int64_t round,
                      std::shared_ptr<const std::string> update, bool validated,
                      float loss);
  // The part of `rank`'s update for `round` that has arrived: `update` is
  // the stream's buffer, full size, of which the first `segments` segments
  // are in and validated (it keeps filling on the caller's thread; the
  // coordinator reads only those segments). Call it whenever more segments
  // are in, with the same buffer; `loss` counts once the update is
  // complete. An update whose round closed without it is not averaged.
  // May fix the round's participants, close segments and the round.
  absl::Status Progress(int rank, int64_t round,
                        std::shared_ptr<const std::string> update,
                        size_t segments, float loss);
  // `rank`'s stream ended before its update of `round` was complete: it is
  // taken out of the round (which restarts if it was a participant).
  void Abandon(int rank, int64_t round);
  // Fixes the participants, closes segments or the round, as due (above).
  void MaybeClose();

  // The open round `round` while it closes segment by segment; nullopt
  // before it started closing or after it closed.
  std::optional<ClosingRound> Closing(int64_t round) const;

  // For a worker waiting for `round`'s delta: the closed round, an error
  // (the engine failed; the delta is gone: ABORTED), or nullopt while it
  // is still open.
  std::optional<absl::StatusOr<ClosedRound>> Outcome(int64_t round) const;
  // When the open round closes on the timeout; nullopt with no update yet.
  std::optional<absl::Time> TimeoutAt() const;

  // The run is over: round `rounds` closed (at the returned time).
  std::optional<absl::Time> final_closed_at() const { return final_closed_at_; }
  // Not OK once the engine failed to close a round.
  const absl::Status& fatal() const { return fatal_; }

  int64_t rounds_closed() const { return rounds_closed_; }
  int64_t short_rounds() const { return short_rounds_; }
  int64_t dropped_rounds() const {
    return engine_ ? engine_->dropped_rounds() : 0;
  }
  int64_t resumed_at_round() const { return resumed_at_round_; }
  // Mean loss of the last closed round; NaN before the first.
  double last_loss() const { return last_loss_; }

  // The state as of the last closed round (copies x and E); nullopt
  // before Start.
  std::optional<Checkpoint> Snapshot() const;
  // The snapshot made when a multiple of checkpoint_every rounds had
  // closed, once; a newer one replaces one not taken.
  std::optional<Checkpoint> TakeDueCheckpoint();

 private:
  const ClosedRound* FindClosed(int64_t round) const;
  // How long the open round waits for missing ranks (see Rules).
  absl::Duration Timeout() const;
  // Fixes the open round's participants (engine BeginClose) with a new
  // delta buffer.
  void BeginClose();
  // Stops closing the open round (a new attempt follows).
  void Reopen();
  // Takes the ranks that are not complete out of the round; reopens it
  // first when it was closing.
  void WithdrawIncomplete();
  // Closes every segment all participants have; finishes the round after
  // the last.
  void CloseReadySegments();
  // The engine failed: the server cannot go on.
  void Fail(int64_t round, const absl::Status& s);
  // The last segment closed: the round is committed or dropped, logged,
  // counted and kept for late workers.
  void Finish();
  // The engine holds a saved state (checkpoint or replica): note its round,
  // whether it completes the run, and tell the observer.
  void Resumed();

  const Rules rules_;
  const Membership& membership_;
  const Clock& clock_;
  ServerObserver& observer_;
  Logger& logger_;
  DeltaLog& delta_log_;

  std::unique_ptr<RoundEngine> engine_;
  Checkpoint identity_;
  absl::Status fatal_;
  absl::Time round_opened_at_;  // the open round's first update
  // The open round's updates so far, by rank: the buffer they fill and the
  // segments in (all of them: complete).
  struct Arrival {
    const std::string* buffer = nullptr;
    size_t segments = 0;
  };
  std::map<int, Arrival> arrivals_;
  // The timeout of the open round has been acted on.
  bool timed_out_ = false;
  // The open round while it closes: its delta buffer and attempt, and the
  // segments closed.
  std::shared_ptr<std::string> closing_delta_;
  int attempt_ = 0;
  size_t segments_closed_ = 0;
  double loss_sum_ = 0;
  int loss_count_ = 0;
  double last_loss_;
  // The most recent closed rounds, oldest first, and the same deltas'
  // buffers writable, for reuse once nobody sends them any more.
  std::deque<ClosedRound> closed_;
  std::deque<std::shared_ptr<std::string>> delta_buffers_;
  // The delta buffer of the round that last dropped out of closed_.
  std::shared_ptr<std::string> spare_delta_;
  int64_t rounds_closed_ = 0;
  // rounds_closed_ at Start (or Recover): replicas are taken until it moves.
  int64_t rounds_closed_at_start_ = 0;
  int64_t short_rounds_ = 0;
  int64_t resumed_at_round_ = 0;
  std::optional<Checkpoint> due_checkpoint_;
  std::optional<absl::Time> final_closed_at_;
};

}  // namespace effadam

#endif  // EFFADAM_SERVER_ROUND_COORDINATOR_H_
