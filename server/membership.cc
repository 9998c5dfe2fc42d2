#include "server/membership.h"

#include "absl/strings/str_cat.h"
#include "server/server_observer.h"

namespace effadam {

Membership::Membership(const Rules& rules)
    : rules_(rules), ranks_(static_cast<size_t>(rules.workers)) {}

bool Membership::IsLive(int rank) const {
  if (!InRange(rank)) return false;
  const Phase p = ranks_[rank].phase;
  return p == Phase::kJoined || p == Phase::kTraining;
}

int Membership::LiveCount() const {
  int live = 0;
  for (int r = 0; r < workers(); ++r) live += IsLive(r);
  return live;
}

int Membership::TrainingCount() const {
  int training = 0;
  for (const RankState& s : ranks_) training += s.phase == Phase::kTraining;
  return training;
}

bool Membership::HasDeparted(int rank) const {
  return InRange(rank) && ranks_[rank].phase == Phase::kDeparted;
}

bool Membership::EveryRankJoined() const {
  for (const RankState& s : ranks_) {
    if (s.phase == Phase::kFree) return false;
  }
  return true;
}

absl::StatusOr<int> Membership::Join(int requested, bool wanted, absl::Time now,
                                     bool* upload) {
  int rank = requested;
  if (rank == -1) {
    rank = 0;
    while (rank < workers() && IsLive(rank)) ++rank;
    if (rank == workers()) {
      return Rejected(
          Rejection::kNoFreeRank,
          absl::ResourceExhaustedError(absl::StrCat(
              "all ", workers(),
              " ranks are taken by live workers (--workers=", workers(), ")")));
    }
  } else if (!InRange(rank)) {
    return Rejected(
        Rejection::kBadRank,
        absl::InvalidArgumentError(absl::StrCat(
            "rank ", rank, " is outside [0, ", workers(),
            ") (--workers); ask for -1 to get the lowest free rank")));
  } else if (IsLive(rank) && !Idle(rank)) {
    return Rejected(Rejection::kRankTaken,
                    absl::AlreadyExistsError(absl::StrCat(
                        "rank ", rank, " is taken by a live worker")));
  }
  // A live rank that is idle is taken over: its worker died between its
  // Join's answer and its next call (a restarted process asks for its
  // rank), or this is that worker's own Join again.

  *upload = wanted && uploader_ < 0;
  if (*upload) {
    uploader_ = rank;
    upload_progress_at_ = now;
  }
  // active_calls survives a rejoin: calls of the old incarnation may still
  // be finishing and will decrement it.
  RankState& s = ranks_[rank];
  s.phase = Phase::kJoined;
  s.last_seen = now;
  s.expired = false;
  return rank;
}

bool Membership::Idle(int rank) const {
  const RankState& s = ranks_[rank];
  return s.phase == Phase::kJoined && s.active_calls == 0 && rank != uploader_;
}

absl::Status Membership::BeginTrain(int rank) {
  // A rank dropped for idling is welcome back while nobody else has it:
  // it was slow, not gone.
  if (!InRange(rank) || ranks_[rank].phase == Phase::kFree ||
      (ranks_[rank].phase == Phase::kDeparted && !ranks_[rank].expired)) {
    return Rejected(
        Rejection::kUnknownRank,
        absl::FailedPreconditionError(absl::StrCat(
            "rank ", rank, " has not joined (or left); call Join first")));
  }
  if (ranks_[rank].phase == Phase::kTraining) {
    return Rejected(Rejection::kDuplicateStream,
                    absl::FailedPreconditionError(absl::StrCat(
                        "rank ", rank, " already has an open Train stream")));
  }
  ranks_[rank].phase = Phase::kTraining;
  ranks_[rank].expired = false;
  return absl::OkStatus();
}

absl::StatusOr<int64_t> Membership::BeginUpload(int rank, absl::Time now) {
  if (rank != uploader_ || !InRange(rank) ||
      ranks_[rank].phase != Phase::kJoined) {
    return Rejected(
        Rejection::kBadUpload,
        absl::FailedPreconditionError(absl::StrCat(
            "rank ", rank, " was not asked to upload the initial parameters",
            uploader_ >= 0 ? absl::StrCat(" (rank ", uploader_, " was)")
                           : "")));
  }
  if (active_upload_ != 0) {
    return Rejected(
        Rejection::kBadUpload,
        absl::FailedPreconditionError(
            "an upload of the initial parameters is already in progress"));
  }
  active_upload_ = ++last_upload_;
  upload_progress_at_ = now;
  ++ranks_[rank].active_calls;
  return active_upload_;
}

void Membership::UploadProgress(absl::Time now) { upload_progress_at_ = now; }

bool Membership::EndUpload(int64_t id, int rank, absl::Time now) {
  EndCall(rank, now);
  if (id != active_upload_) return false;
  active_upload_ = 0;
  if (uploader_ == rank) uploader_ = -1;
  return true;
}

bool Membership::BeginCall(int rank) {
  if (!IsLive(rank)) return false;
  ++ranks_[rank].active_calls;
  return true;
}

void Membership::EndCall(int rank, absl::Time now) {
  if (!InRange(rank)) return;
  --ranks_[rank].active_calls;
  ranks_[rank].last_seen = now;
}

void Membership::Leave(int rank) {
  if (!InRange(rank)) return;
  ranks_[rank].phase = Phase::kDeparted;
  // An upload in progress ends on its own (and frees the role then).
  if (uploader_ == rank && active_upload_ == 0) uploader_ = -1;
}

bool Membership::ClientWentAway(int rank) {
  if (!InRange(rank)) return false;
  RankState& s = ranks_[rank];
  if (s.phase != Phase::kJoined || s.active_calls != 0 || rank == uploader_) {
    return false;
  }
  s.expired = true;
  return true;
}

std::vector<Membership::Expired> Membership::Expire(absl::Time now) {
  std::vector<Expired> expired;
  if (uploader_ >= 0 &&
      now > upload_progress_at_ + rules_.upload_stall_timeout &&
      IsLive(uploader_)) {
    expired.push_back({uploader_, true});
    // The next Join is asked to upload (and may) even while the stalled
    // call is still being cancelled.
    uploader_ = -1;
    active_upload_ = 0;
  }
  for (int r = 0; r < workers(); ++r) {
    RankState& s = ranks_[r];
    if (s.phase == Phase::kJoined && s.active_calls == 0 &&
        now - s.last_seen > rules_.join_idle_grace &&
        !(expired.size() == 1 && expired[0].rank == r)) {
      expired.push_back({r, false});
      s.expired = true;
    }
  }
  for (const Expired& e : expired) ranks_[e.rank].phase = Phase::kDeparted;
  return expired;
}

bool Membership::Empty() const {
  return active_upload_ == 0 && LiveCount() == 0;
}

}  // namespace effadam
