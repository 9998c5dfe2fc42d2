#include "server/membership.h"

#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/server_observer.h"

namespace effadam {
namespace {

using ::testing::HasSubstr;

const absl::Time kT0 = absl::UnixEpoch() + absl::Hours(1);

Membership Make(int workers) {
  Membership::Rules rules;
  rules.workers = workers;
  rules.join_idle_grace = absl::Seconds(60);
  rules.upload_stall_timeout = absl::Seconds(30);
  return Membership(rules);
}

TEST(Membership, JoinGivesTheLowestFreeRankAndRefusesWithAReason) {
  Membership m = Make(2);
  bool upload = false;
  EXPECT_EQ(*m.Join(-1, true, kT0, &upload), 0);
  EXPECT_TRUE(upload);  // the first Join uploads
  EXPECT_EQ(*m.Join(-1, true, kT0, &upload), 1);
  EXPECT_FALSE(upload);
  absl::StatusOr<int> full = m.Join(-1, true, kT0, &upload);
  EXPECT_TRUE(absl::IsResourceExhausted(full.status()));
  EXPECT_EQ(RejectionOf(full.status()), Rejection::kNoFreeRank);
  ASSERT_TRUE(m.BeginTrain(1).ok());
  absl::StatusOr<int> taken = m.Join(1, true, kT0, &upload);
  EXPECT_TRUE(absl::IsAlreadyExists(taken.status()));
  EXPECT_EQ(RejectionOf(taken.status()), Rejection::kRankTaken);
  absl::StatusOr<int> out = m.Join(2, true, kT0, &upload);
  EXPECT_TRUE(absl::IsInvalidArgument(out.status()));
  EXPECT_EQ(RejectionOf(out.status()), Rejection::kBadRank);
  EXPECT_EQ(m.LiveCount(), 2);
}

TEST(Membership, AnIdleRankIsTakenOverByAJoinThatAsksForIt) {
  Membership m = Make(3);
  bool upload = false;
  ASSERT_EQ(*m.Join(-1, true, kT0, &upload), 0);  // the uploader
  ASSERT_EQ(*m.Join(-1, false, kT0, &upload), 1);
  ASSERT_EQ(*m.Join(-1, false, kT0, &upload), 2);
  // Joined, no stream, no call: its worker died after the Join's answer.
  EXPECT_EQ(*m.Join(1, false, kT0, &upload), 1);
  EXPECT_FALSE(upload);
  EXPECT_EQ(m.LiveCount(), 3);
  // Not idle: a call in flight, a Train stream, the upload due.
  ASSERT_TRUE(m.BeginCall(1));
  EXPECT_EQ(RejectionOf(m.Join(1, false, kT0, &upload).status()),
            Rejection::kRankTaken);
  m.EndCall(1, kT0);
  ASSERT_TRUE(m.BeginTrain(2).ok());
  EXPECT_EQ(RejectionOf(m.Join(2, false, kT0, &upload).status()),
            Rejection::kRankTaken);
  EXPECT_EQ(RejectionOf(m.Join(0, true, kT0, &upload).status()),
            Rejection::kRankTaken);
  // -1 never takes a live rank, idle or not.
  EXPECT_EQ(RejectionOf(m.Join(-1, false, kT0, &upload).status()),
            Rejection::kNoFreeRank);
}

TEST(Membership, OnceTheParametersExistNobodyUploads) {
  Membership m = Make(2);
  bool upload = true;
  EXPECT_EQ(*m.Join(-1, /*wanted=*/false, kT0, &upload), 0);
  EXPECT_FALSE(upload);
  EXPECT_EQ(m.uploader(), -1);
}

TEST(Membership, AFailedUploadLetsTheNextJoinUpload) {
  Membership m = Make(3);
  bool upload = false;
  ASSERT_EQ(*m.Join(-1, true, kT0, &upload), 0);
  absl::StatusOr<int64_t> id = m.BeginUpload(0, kT0);
  ASSERT_TRUE(id.ok());
  // Only one upload at a time, and only by the uploader.
  ASSERT_EQ(*m.Join(-1, true, kT0, &upload), 1);
  EXPECT_FALSE(upload);
  absl::Status other = m.BeginUpload(1, kT0).status();
  EXPECT_EQ(RejectionOf(other), Rejection::kBadUpload);
  EXPECT_THAT(other.message(), HasSubstr("rank 0 was"));
  EXPECT_TRUE(m.EndUpload(*id, 0, kT0));
  m.Leave(0);
  EXPECT_EQ(*m.Join(-1, true, kT0, &upload), 0);
  EXPECT_TRUE(upload);
}

TEST(Membership, AnUploaderThatStallsLosesItsRank) {
  Membership m = Make(2);
  bool upload = false;
  ASSERT_EQ(*m.Join(-1, true, kT0, &upload), 0);
  ASSERT_TRUE(upload);
  // It must start within the stall timeout...
  EXPECT_TRUE(m.Expire(kT0 + absl::Seconds(30)).empty());
  absl::StatusOr<int64_t> id = m.BeginUpload(0, kT0 + absl::Seconds(20));
  ASSERT_TRUE(id.ok());
  // ...and then send a chunk at least that often.
  m.UploadProgress(kT0 + absl::Seconds(45));
  EXPECT_TRUE(m.Expire(kT0 + absl::Seconds(75)).empty());
  std::vector<Membership::Expired> gone = m.Expire(kT0 + absl::Seconds(76));
  ASSERT_EQ(gone.size(), 1u);
  EXPECT_EQ(gone[0].rank, 0);
  EXPECT_TRUE(gone[0].stalled_uploader);
  EXPECT_FALSE(m.IsLive(0));
  EXPECT_EQ(m.uploader(), -1);
  // The next Join uploads while the stalled call is still being cancelled;
  // when that call ends, it changes nothing of the new incarnation's.
  EXPECT_EQ(*m.Join(-1, true, kT0 + absl::Seconds(77), &upload), 0);
  EXPECT_TRUE(upload);
  absl::StatusOr<int64_t> again = m.BeginUpload(0, kT0 + absl::Seconds(77));
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(m.EndUpload(*id, 0, kT0 + absl::Seconds(78)));
  EXPECT_TRUE(m.upload_active());
  EXPECT_EQ(m.uploader(), 0);
  EXPECT_TRUE(m.IsLive(0));
}

TEST(Membership, AnUploaderThatNeverStartsLosesItsRank) {
  Membership m = Make(1);
  bool upload = false;
  ASSERT_EQ(*m.Join(-1, true, kT0, &upload), 0);
  std::vector<Membership::Expired> gone = m.Expire(kT0 + absl::Seconds(31));
  ASSERT_EQ(gone.size(), 1u);
  EXPECT_TRUE(gone[0].stalled_uploader);
  EXPECT_EQ(*m.Join(-1, true, kT0 + absl::Seconds(31), &upload), 0);
  EXPECT_TRUE(upload);
}

TEST(Membership, IdleJoinsExpireAndMayComeBackWithTheirStream) {
  Membership m = Make(2);
  bool upload = false;
  ASSERT_EQ(*m.Join(-1, false, kT0, &upload), 0);
  ASSERT_EQ(*m.Join(-1, false, kT0, &upload), 1);
  ASSERT_TRUE(m.BeginTrain(1).ok());
  // A call in flight keeps rank 0 from idling.
  ASSERT_TRUE(m.BeginCall(0));
  EXPECT_TRUE(m.Expire(kT0 + absl::Minutes(5)).empty());
  m.EndCall(0, kT0 + absl::Minutes(5));
  EXPECT_TRUE(m.Expire(kT0 + absl::Minutes(6)).empty());
  std::vector<Membership::Expired> gone =
      m.Expire(kT0 + absl::Minutes(6) + absl::Seconds(1));
  ASSERT_EQ(gone.size(), 1u);
  EXPECT_EQ(gone[0].rank, 0);
  EXPECT_FALSE(gone[0].stalled_uploader);
  EXPECT_TRUE(m.HasDeparted(0));
  EXPECT_TRUE(m.IsLive(1));  // training ranks never idle
  // Slow, not gone: its Train stream is welcome.
  EXPECT_TRUE(m.BeginTrain(0).ok());
  EXPECT_EQ(m.TrainingCount(), 2);
}

TEST(Membership, AJoinedRankWhoseClientWentAwayIsFreeAtOnce) {
  Membership m = Make(3);
  bool upload = false;
  ASSERT_EQ(*m.Join(-1, true, kT0, &upload), 0);
  ASSERT_TRUE(upload);
  ASSERT_EQ(*m.Join(-1, false, kT0, &upload), 1);
  ASSERT_EQ(*m.Join(-1, false, kT0, &upload), 2);
  ASSERT_TRUE(m.BeginTrain(2).ok());
  // The uploader keeps its role until its upload ends or stalls; a rank
  // with a Train stream leaves when the stream ends; another call in
  // flight means the client is still there.
  EXPECT_FALSE(m.ClientWentAway(0));
  EXPECT_FALSE(m.ClientWentAway(2));
  ASSERT_TRUE(m.BeginCall(1));
  EXPECT_FALSE(m.ClientWentAway(1));
  m.EndCall(1, kT0);
  EXPECT_FALSE(m.ClientWentAway(7));
  // Rank 1, joined and idle: free for a restarted worker now, not after
  // the idle grace; its old incarnation may still open its stream.
  ASSERT_TRUE(m.ClientWentAway(1));
  m.Leave(1);
  EXPECT_FALSE(m.IsLive(1));
  EXPECT_TRUE(m.BeginTrain(1).ok());
}

TEST(Membership, TrainNeedsAJoinAndOneStream) {
  Membership m = Make(2);
  bool upload = false;
  EXPECT_EQ(RejectionOf(m.BeginTrain(0)), Rejection::kUnknownRank);
  EXPECT_EQ(RejectionOf(m.BeginTrain(-3)), Rejection::kUnknownRank);
  ASSERT_EQ(*m.Join(0, false, kT0, &upload), 0);
  ASSERT_TRUE(m.BeginTrain(0).ok());
  EXPECT_EQ(RejectionOf(m.BeginTrain(0)), Rejection::kDuplicateStream);
  m.Leave(0);
  // Left on its own: it must join again.
  EXPECT_EQ(RejectionOf(m.BeginTrain(0)), Rejection::kUnknownRank);
}

TEST(Membership, EmptyOnlyWithNobodyLiveAndNoUpload) {
  Membership m = Make(2);
  EXPECT_TRUE(m.Empty());
  bool upload = false;
  ASSERT_EQ(*m.Join(-1, true, kT0, &upload), 0);
  EXPECT_FALSE(m.Empty());
  absl::StatusOr<int64_t> id = m.BeginUpload(0, kT0);
  ASSERT_TRUE(id.ok());
  m.Leave(0);
  EXPECT_FALSE(m.Empty());  // the upload is still in flight
  EXPECT_TRUE(m.EndUpload(*id, 0, kT0));
  EXPECT_TRUE(m.Empty());
}

}  // namespace
}  // namespace effadam
