#ifndef EFFADAM_SERVER_ROUND_COORDINATOR_H_
#define EFFADAM_SERVER_ROUND_COORDINATOR_H_

#include <cstdint>
#include <deque>
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
};

// Drives the synchronous rounds of one parameter server over its
// RoundEngine (docs/protocol.md, "Rounds"): which updates a round takes,
// when it closes, the deltas of the last few closed rounds (for workers
// whose update came after its round closed), the mean loss, and the
// checkpoints that fall due. A round closes when every rank submitted,
// when every rank that did not has departed (asked of Membership; ranks
// that never joined are waited for), or round_timeout after its first
// update (read from the injected Clock; replica_wait for the first round
// after a restart while ranks have not rejoined).
//
// A closed round's delta goes to the injected DeltaLog before any worker
// can receive it (Outcome), so a restarted server can replay it.
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
  // Takes a complete update: averaged if its round is open, else checked
  // and not averaged. May close the round.
  absl::Status Accept(int rank, int64_t round, std::string update, float loss);
  // The same for bytes shared with the caller (RoundEngine::Submit);
  // `validated`: already checked against the worker codec.
  absl::Status Accept(int rank, int64_t round,
                      std::shared_ptr<const std::string> update, bool validated,
                      float loss);
  // Closes the open round if it is due (see above).
  void MaybeClose();

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
  void Close();
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
