#ifndef EFFADAM_SERVER_MEMBERSHIP_H_
#define EFFADAM_SERVER_MEMBERSHIP_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace effadam {

// Who the N ranks of a parameter server are (docs/protocol.md,
// "Membership"): each rank's phase, the rank asked to upload the initial
// parameters and how long it may take, and which joined ranks idled too
// long. A rank is live while it has joined and not departed; a round waits
// for live ranks and for ranks that never joined, not for departed ones.
//
// Pure bookkeeping: no threads, no I/O, no clock of its own (every call
// that applies a timing rule takes `now`). Refusals are statuses tagged
// with their Rejection (server_observer.h). Not thread-safe:
// ParameterServer calls it under its lock.
class Membership {
 public:
  struct Rules {
    int workers = 1;
    // A joined rank keeps its place this long without a Train stream or an
    // Upload/Fetch call in flight.
    absl::Duration join_idle_grace = absl::Seconds(60);
    // The uploader must start its upload this long after its Join, and
    // then send a chunk at least this often; else it loses its rank and
    // the next Join is asked to upload.
    absl::Duration upload_stall_timeout = absl::Seconds(60);
  };
  explicit Membership(const Rules& rules);

  int workers() const { return static_cast<int>(ranks_.size()); }
  // Joined and not departed (a Train stream may be open).
  bool IsLive(int rank) const;
  int LiveCount() const;
  // Ranks with an open Train stream.
  int TrainingCount() const;
  // Departed ranks are not waited for by a round.
  bool HasDeparted(int rank) const;
  // Every rank has joined at least once (since this server started).
  bool EveryRankJoined() const;

  // Join: `requested` is -1 for the lowest free rank. The rank, or a
  // rejection: kNoFreeRank, kBadRank (out of range), kRankTaken (live and
  // not idle). A rank joined with no Train stream, no call in flight and
  // no upload due is idle: a Join that asks for it by number takes it over
  // at once (a worker killed between its Join's answer and its FetchParams
  // restarts; Join's own retry) instead of waiting out the idle grace.
  // `wanted`: the server wants parameters from this worker (it has none
  // yet, or the worker's replica is newer than its x); if nobody else is
  // asked to upload, *upload is set and this rank is the uploader.
  absl::StatusOr<int> Join(int requested, bool wanted, absl::Time now,
                           bool* upload);

  // Train: the rank may open its stream (joined, or dropped for idling and
  // not taken since); else kUnknownRank or kDuplicateStream.
  absl::Status BeginTrain(int rank);

  // UploadParams by `rank`: an id for the upload, or kBadUpload unless it
  // is the uploader, joined, and no upload is in progress.
  absl::StatusOr<int64_t> BeginUpload(int rank, absl::Time now);
  // A chunk of the upload arrived.
  void UploadProgress(absl::Time now);
  // The upload `id` of `rank` ended, well or not. True when it was still
  // the upload in progress: then nobody is asked to upload any more (the
  // parameters exist, or the next Join is asked) and after a failure the
  // caller makes the rank leave. False for an upload Expire() already
  // gave up on: whatever it read must be dropped, and its rank (maybe a
  // new incarnation) left alone.
  bool EndUpload(int64_t id, int rank, absl::Time now);
  // The uploader, while the parameters are awaited; -1 for none.
  int uploader() const { return uploader_; }
  bool upload_active() const { return active_upload_ != 0; }

  // Another call of a live rank (FetchParams) is in flight: it does not
  // idle meanwhile. False (and nothing tracked) for a rank that is not live.
  bool BeginCall(int rank);
  void EndCall(int rank, absl::Time now);

  // Takes `rank` out of the live set.
  void Leave(int rank);

  // The client of a call of `rank` went away (its FetchParams was
  // cancelled). If the rank is joined without a Train stream and has no
  // other call in flight, it is marked as expired and true returned: the
  // caller makes it leave, so a restarted worker may take the rank at once
  // instead of waiting out the idle grace, and rounds stop waiting for it.
  // Like an idle expiry, the old incarnation is welcome back with its Train
  // stream while nobody else has taken the rank: it was slow, not gone.
  bool ClientWentAway(int rank);

  // Takes out of the live set, and returns, the ranks whose time ran out:
  // joined ranks idle for longer than the grace (they may come back with
  // their Train stream), and an uploader that stalled (the caller cancels
  // its upload call, if one is in flight).
  struct Expired {
    int rank;
    bool stalled_uploader;  // else: joined but idle
  };
  std::vector<Expired> Expire(absl::Time now);

  // Nobody is live and nothing is being uploaded: with no parameters yet,
  // the server may forget the layout.
  bool Empty() const;
  // Forgets the uploader (the server is empty again).
  void ResetUploader() { uploader_ = -1; }

 private:
  enum class Phase { kFree, kJoined, kTraining, kDeparted };
  struct RankState {
    Phase phase = Phase::kFree;
    absl::Time last_seen;  // Join, and the end of its Upload/Fetch calls
    int active_calls = 0;  // UploadParams/FetchParams in flight
    bool expired = false;  // departed by Expire, not by leaving
  };
  bool InRange(int rank) const { return rank >= 0 && rank < workers(); }
  // Joined, without a Train stream, a call in flight or an upload due.
  bool Idle(int rank) const;

  const Rules rules_;
  std::vector<RankState> ranks_;
  int uploader_ = -1;          // the rank told to upload; -1 for none
  int64_t last_upload_ = 0;    // ids of uploads, from 1
  int64_t active_upload_ = 0;  // the upload in progress; 0 for none
  // Join of the uploader, then its last chunk: it stalls after this plus
  // upload_stall_timeout.
  absl::Time upload_progress_at_;
};

}  // namespace effadam

#endif  // EFFADAM_SERVER_MEMBERSHIP_H_
