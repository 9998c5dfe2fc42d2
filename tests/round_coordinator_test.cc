#include "server/round_coordinator.h"

#include <cmath>
#include <cstring>
#include <map>
#include <random>

#include "absl/time/time.h"
#include "common/clock.h"
#include "common/logger.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace effadam {
namespace {

using ::testing::HasSubstr;

// Three ranks (0, 1 joined and training; 2 joined unless told otherwise),
// fp32 updates of 256 elements, round timeout 60 s on a fake clock.
class RoundCoordinatorTest : public ::testing::Test {
 protected:
  RoundCoordinatorTest() : membership_(Rules()) {
    bool upload = false;
    for (int r = 0; r < 3; ++r) {
      EXPECT_EQ(*membership_.Join(r, false, clock_.Now(), &upload), r);
    }
    layout_ = *TensorLayout::Create({{"w", {256}}});
    codec_ = *UpdateCodec::Create(layout_, *ParseCodecSpec("fp32"), {});
  }

  static Membership::Rules Rules() {
    Membership::Rules r;
    r.workers = 3;
    return r;
  }

  std::unique_ptr<RoundCoordinator> Start(int64_t rounds,
                                          int64_t checkpoint_every = 0) {
    RoundCoordinator::Rules rules;
    rules.workers = 3;
    rules.rounds = rounds;
    rules.round_timeout = absl::Seconds(60);
    rules.checkpoint_every = checkpoint_every;
    auto c = std::make_unique<RoundCoordinator>(rules, membership_, clock_,
                                                ServerObserver::None(), log_);
    Checkpoint identity;
    identity.layout = layout_;
    c->Start(
        *RoundEngine::Create(codec_, codec_, std::vector<float>(256, 1.0f), {}),
        identity, 0, false);
    return c;
  }

  // A coordinator restarted from a checkpoint at round 41 (40 closed) over
  // `membership`; round timeout 5 s, replica wait 60 s.
  std::unique_ptr<RoundCoordinator> Restarted(const Membership& membership) {
    RoundCoordinator::Rules rules;
    rules.workers = 3;
    rules.round_timeout = absl::Seconds(5);
    rules.replica_wait = absl::Seconds(60);
    auto c = std::make_unique<RoundCoordinator>(rules, membership, clock_,
                                                ServerObserver::None(), log_);
    RoundEngineState state;
    state.round = 41;
    state.params.assign(256, 1.0f);
    Checkpoint identity;
    identity.layout = layout_;
    c->Start(*RoundEngine::Restore(codec_, codec_, state, {}), identity, 40,
             /*resumed=*/true);
    return c;
  }

  std::string Update(int rank, int64_t round) {
    std::mt19937 rng(static_cast<uint32_t>(100 * rank + round));
    std::normal_distribution<float> normal(0, 0.01f);
    std::vector<float> v(256);
    for (float& x : v) x = normal(rng);
    std::string out;
    EXPECT_TRUE(codec_->EncodeWithFeedback(v, {}, 0, &out).ok());
    return out;
  }

  FakeClock clock_;
  RecordingLogger log_;
  Membership membership_;
  TensorLayout layout_;
  std::shared_ptr<const UpdateCodec> codec_;
};

TEST_F(RoundCoordinatorTest, ClosesWhenEveryRankSubmitted) {
  auto c = Start(0);
  ASSERT_TRUE(c->Accept(0, 1, Update(0, 1), 1.0f).ok());
  ASSERT_TRUE(c->Accept(2, 1, Update(2, 1), 3.0f).ok());
  EXPECT_FALSE(c->Outcome(1).has_value());
  ASSERT_TRUE(c->Accept(1, 1, Update(1, 1), NAN).ok());
  std::optional<absl::StatusOr<ClosedRound>> out = c->Outcome(1);
  ASSERT_TRUE(out.has_value());
  ASSERT_TRUE(out->ok());
  EXPECT_EQ((*out)->contributors, 3);
  EXPECT_EQ(c->round(), 2);
  EXPECT_EQ(c->short_rounds(), 0);
  EXPECT_EQ(c->last_loss(), 2.0);  // the NaN report is left out
}

TEST_F(RoundCoordinatorTest, WaitsForAMissingRankExactlyTheTimeout) {
  auto c = Start(0);
  ASSERT_TRUE(c->Accept(0, 1, Update(0, 1), 1.0f).ok());
  ASSERT_TRUE(c->Accept(1, 1, Update(1, 1), 1.0f).ok());
  EXPECT_EQ(c->TimeoutAt(), clock_.Now() + absl::Seconds(60));
  clock_.Advance(absl::Seconds(60) - absl::Nanoseconds(1));
  c->MaybeClose();
  EXPECT_FALSE(c->Outcome(1).has_value());
  clock_.Advance(absl::Nanoseconds(1));
  c->MaybeClose();
  ASSERT_TRUE(c->Outcome(1).has_value());
  EXPECT_EQ((*c->Outcome(1))->contributors, 2);
  EXPECT_EQ(c->short_rounds(), 1);
  EXPECT_FALSE(c->TimeoutAt().has_value());  // no update in round 2 yet
}

// Chaos test finding: a restarted shard closed its first round on the 5 s
// timeout with the update of a lagging worker alone, before the others
// rejoined with their newer replicas, and went back 9 rounds. While newer
// replicas may come, the first round waits replica_wait for ranks that
// have not joined again.
TEST_F(RoundCoordinatorTest, AfterARestartTheFirstRoundWaitsForTheReplicas) {
  Membership restarted(Rules());
  bool upload = false;
  ASSERT_EQ(*restarted.Join(0, false, clock_.Now(), &upload), 0);
  std::unique_ptr<RoundCoordinator> restored = Restarted(restarted);
  RoundCoordinator& c = *restored;
  ASSERT_TRUE(c.Accept(0, 41, Update(0, 41), 1.0f).ok());
  clock_.Advance(absl::Seconds(5));
  c.MaybeClose();
  EXPECT_FALSE(c.Outcome(41).has_value()) << "closed on round_timeout";
  EXPECT_EQ(*c.TimeoutAt(), clock_.Now() + absl::Seconds(55));
  // Rank 1 rejoins; rank 2 still has not: the wait goes on.
  ASSERT_EQ(*restarted.Join(1, false, clock_.Now(), &upload), 1);
  clock_.Advance(absl::Seconds(54));
  c.MaybeClose();
  EXPECT_FALSE(c.Outcome(41).has_value());
  clock_.Advance(absl::Seconds(1));
  c.MaybeClose();
  ASSERT_TRUE(c.Outcome(41).has_value());
  // After that first round the usual timeout holds.
  ASSERT_TRUE(c.Accept(0, 42, Update(0, 42), 1.0f).ok());
  clock_.Advance(absl::Seconds(5));
  c.MaybeClose();
  EXPECT_TRUE(c.Outcome(42).has_value());
}

TEST_F(RoundCoordinatorTest, AfterARestartWithEveryRankBackTheTimeoutIsUsual) {
  std::unique_ptr<RoundCoordinator> restored = Restarted(membership_);
  RoundCoordinator& c = *restored;
  ASSERT_TRUE(c.Accept(0, 41, Update(0, 41), 1.0f).ok());
  clock_.Advance(absl::Seconds(5));
  c.MaybeClose();
  EXPECT_TRUE(c.Outcome(41).has_value());
}

TEST_F(RoundCoordinatorTest, ADepartedRankIsNotWaitedFor) {
  auto c = Start(0);
  ASSERT_TRUE(c->Accept(0, 1, Update(0, 1), 1.0f).ok());
  ASSERT_TRUE(c->Accept(1, 1, Update(1, 1), 1.0f).ok());
  membership_.Leave(2);
  c->MaybeClose();
  ASSERT_TRUE(c->Outcome(1).has_value());
}

TEST_F(RoundCoordinatorTest, ALateUpdateIsCheckedButNotAveraged) {
  auto c = Start(0);
  membership_.Leave(2);
  ASSERT_TRUE(c->Accept(0, 1, Update(0, 1), 1.0f).ok());
  clock_.Advance(absl::Seconds(61));
  c->MaybeClose();
  const std::string delta = *(*c->Outcome(1))->delta;
  // Rank 1's update for closed round 1: taken, its delta is round 1's.
  ASSERT_TRUE(c->Accept(1, 1, Update(1, 1), 1.0f).ok());
  EXPECT_EQ(*(*c->Outcome(1))->delta, delta);
  EXPECT_EQ(c->round(), 2);
  // Bytes that do not validate are refused even then.
  absl::Status bad = c->Accept(1, 1, "xyz", 1.0f);
  EXPECT_EQ(RejectionOf(bad), Rejection::kInvalidPayload);
}

TEST_F(RoundCoordinatorTest, ALateUpdateIsPlacedInTheCurrentRound) {
  auto c = Start(/*rounds=*/3);
  membership_.Leave(2);
  ASSERT_TRUE(c->Accept(0, 1, Update(0, 1), 1.0f).ok());
  clock_.Advance(absl::Seconds(61));
  c->MaybeClose();
  ASSERT_EQ(c->round(), 2);
  // Rank 1 missed round 1 and has sent nothing for round 2.
  EXPECT_EQ(*c->PlaceUpdate(1, 1), 2);
  EXPECT_EQ(*c->PlaceUpdate(1, 2), 2);
  // Rank 0 has: a second update of it would be averaged twice.
  ASSERT_TRUE(c->Accept(0, 2, Update(0, 2), 1.0f).ok());
  EXPECT_EQ(*c->PlaceUpdate(0, 1), 1);
  // Two rounds late: into the current round as well.
  clock_.Advance(absl::Seconds(61));
  c->MaybeClose();
  ASSERT_EQ(c->round(), 3);
  EXPECT_EQ(*c->PlaceUpdate(1, 1), 3);
  EXPECT_EQ(*c->PlaceUpdate(1, 2), 3);
  // After the last round there is no next one to go into.
  ASSERT_TRUE(c->Accept(0, 3, Update(0, 3), 1.0f).ok());
  clock_.Advance(absl::Seconds(61));
  c->MaybeClose();
  ASSERT_TRUE(c->final_closed_at().has_value());
  EXPECT_EQ(*c->PlaceUpdate(1, 3), 3);
  // CheckRound's refusals come first.
  EXPECT_EQ(RejectionOf(c->PlaceUpdate(1, 9).status()),
            Rejection::kTrainingEnded);
}

TEST_F(RoundCoordinatorTest, AWorkerWhoseDeltaIsGoneMustResync) {
  auto c = Start(0);
  membership_.Leave(1);
  membership_.Leave(2);
  for (int64_t round = 1; round <= 6; ++round) {
    ASSERT_TRUE(c->Accept(0, round, Update(0, round), 1.0f).ok());
  }
  absl::Status late = c->CheckRound(1, 1);
  EXPECT_TRUE(absl::IsAborted(late));
  EXPECT_EQ(RejectionOf(late), Rejection::kLagging);
  EXPECT_THAT(late.message(), HasSubstr("join again and fetch x"));
  EXPECT_TRUE(c->CheckRound(1, 6).ok());  // still kept
  EXPECT_EQ(RejectionOf(c->CheckRound(1, 9)), Rejection::kWrongRound);
  EXPECT_EQ(RejectionOf(c->CheckRound(1, 0)), Rejection::kWrongRound);
  std::optional<absl::StatusOr<ClosedRound>> gone = c->Outcome(1);
  ASSERT_TRUE(gone.has_value());
  EXPECT_TRUE(absl::IsAborted(gone->status()));
}

TEST_F(RoundCoordinatorTest, EndsAfterTheLastRoundAndSnapshotsOnSchedule) {
  auto c = Start(/*rounds=*/4, /*checkpoint_every=*/2);
  membership_.Leave(1);
  membership_.Leave(2);
  for (int64_t round = 1; round <= 4; ++round) {
    ASSERT_TRUE(c->Accept(0, round, Update(0, round), 1.0f).ok());
    if (round == 2) {
      std::optional<Checkpoint> due = c->TakeDueCheckpoint();
      ASSERT_TRUE(due.has_value());
      EXPECT_EQ(due->state.round, 3);
      EXPECT_EQ(due->rounds_closed, 2);
      EXPECT_EQ(due->layout, layout_);
      EXPECT_FALSE(c->TakeDueCheckpoint().has_value());  // once
    }
    EXPECT_EQ(c->final_closed_at().has_value(), round == 4);
  }
  EXPECT_EQ(RejectionOf(c->CheckRound(0, 5)), Rejection::kTrainingEnded);
  EXPECT_EQ(c->rounds_closed(), 4);
}

TEST_F(RoundCoordinatorTest, ADroppedRoundIsLoggedAndCounted) {
  auto c = Start(0);
  membership_.Leave(1);
  membership_.Leave(2);
  std::string huge;
  ASSERT_TRUE(
      codec_->EncodeWithFeedback(std::vector<float>(256, 3e38f), {}, 0, &huge)
          .ok());
  ASSERT_TRUE(c->Accept(0, 1, Update(0, 1), 1.0f).ok());
  ASSERT_TRUE(c->Accept(0, 2, huge, 1.0f).ok());
  ASSERT_TRUE(c->Accept(0, 3, huge, 1.0f).ok());  // x near 3e38 -> 6e38
  EXPECT_EQ(c->dropped_rounds(), 1);
  EXPECT_TRUE(log_.Contains("round 3 dropped"));
  EXPECT_TRUE(c->fatal().ok());
}

// Updates of 4 segments (fp32, 64 elements each), as streams fill them.
class PipelinedRoundTest : public RoundCoordinatorTest {
 protected:
  PipelinedRoundTest() {
    CompressionOptions o;
    o.block_size = 64;
    o.max_segment_elements = 64;
    codec_ = *UpdateCodec::Create(layout_, *ParseCodecSpec("fp32"), o);
  }
  // rank's buffer for the round, with its first `segments` segments in.
  std::shared_ptr<std::string> Fill(int rank, int64_t round, size_t segments) {
    auto& buffer = buffers_[rank];
    const std::string whole = Update(rank, round);
    if (!buffer) buffer = std::make_shared<std::string>(whole.size(), '\0');
    const size_t bytes = segments * 64 * sizeof(float);
    std::memcpy(buffer->data(), whole.data(), bytes);
    return buffer;
  }
  std::map<int, std::shared_ptr<std::string>> buffers_;
};

TEST_F(PipelinedRoundTest, SegmentsCloseAsEveryRankHasThem) {
  ASSERT_EQ(codec_->segments().size(), 4u);
  auto c = Start(0);
  auto reference = Start(0);
  for (int r = 0; r < 3; ++r) {
    ASSERT_TRUE(reference->Accept(r, 1, Update(r, 1), 1.0f).ok());
  }
  ASSERT_TRUE(c->Progress(0, 1, Fill(0, 1, 2), 2, NAN).ok());
  ASSERT_TRUE(c->Progress(1, 1, Fill(1, 1, 1), 1, NAN).ok());
  // Rank 2 has not begun: the participants are not fixed yet.
  EXPECT_FALSE(c->Closing(1).has_value());
  ASSERT_TRUE(c->Progress(2, 1, Fill(2, 1, 3), 3, NAN).ok());
  ASSERT_TRUE(c->Closing(1).has_value());
  EXPECT_EQ(c->Closing(1)->segments_closed, 1u);
  ASSERT_TRUE(c->Progress(1, 1, Fill(1, 1, 4), 4, 1.0f).ok());
  EXPECT_EQ(c->Closing(1)->segments_closed, 2u);
  // x is untouched until the round is complete.
  EXPECT_EQ(c->engine()->params()[0], 1.0f);
  ASSERT_TRUE(c->Progress(0, 1, Fill(0, 1, 4), 4, 1.0f).ok());
  EXPECT_EQ(c->Closing(1)->segments_closed, 3u);
  EXPECT_FALSE(c->Outcome(1).has_value());
  ASSERT_TRUE(c->Progress(2, 1, Fill(2, 1, 4), 4, 1.0f).ok());
  EXPECT_FALSE(c->Closing(1).has_value());
  ASSERT_TRUE(c->Outcome(1).has_value());
  const ClosedRound got = **c->Outcome(1), want = **reference->Outcome(1);
  EXPECT_EQ(*got.delta, *want.delta);
  EXPECT_EQ(got.contributors, 3);
  EXPECT_EQ(got.attempt, 0);
  EXPECT_FALSE(got.dropped);
  EXPECT_EQ(c->Snapshot()->state.params, reference->Snapshot()->state.params);
}

TEST_F(PipelinedRoundTest, AParticipantLeavingMidRoundRestartsTheRound) {
  auto c = Start(0);
  auto reference = Start(0);
  membership_.Leave(2);
  for (int r : {0, 1}) {
    ASSERT_TRUE(reference->Accept(r, 1, Update(r, 1), 1.0f).ok());
  }
  ASSERT_TRUE(c->Progress(0, 1, Fill(0, 1, 4), 4, 1.0f).ok());
  ASSERT_TRUE(c->Progress(1, 1, Fill(1, 1, 4), 4, 1.0f).ok());
  ASSERT_TRUE(c->Outcome(1).has_value());
  // Round 2: rank 2 is back and stalls after two segments.
  bool upload = false;
  ASSERT_EQ(*membership_.Join(2, false, clock_.Now(), &upload), 2);
  ASSERT_TRUE(c->Progress(2, 2, Fill(2, 2, 2), 2, NAN).ok());
  ASSERT_TRUE(c->Progress(0, 2, Fill(0, 2, 4), 4, 1.0f).ok());
  ASSERT_TRUE(c->Progress(1, 2, Fill(1, 2, 4), 4, 1.0f).ok());
  ASSERT_TRUE(c->Closing(2).has_value());
  EXPECT_EQ(c->Closing(2)->segments_closed, 2u);
  EXPECT_EQ(c->Closing(2)->attempt, 0);
  membership_.Leave(2);
  c->Abandon(2, 2);
  ASSERT_TRUE(c->Outcome(2).has_value());
  const ClosedRound got = **c->Outcome(2);
  EXPECT_EQ(got.attempt, 1);
  EXPECT_EQ(got.contributors, 2);
  for (int r : {0, 1}) {
    ASSERT_TRUE(reference->Accept(r, 2, Update(r, 2), 1.0f).ok());
  }
  EXPECT_EQ(*got.delta, *(*reference->Outcome(2))->delta);
  EXPECT_EQ(c->Snapshot()->state.params, reference->Snapshot()->state.params);
}

TEST_F(PipelinedRoundTest, AtTheTimeoutTheRoundClosesOverTheCompleteUpdates) {
  auto c = Start(0);
  ASSERT_TRUE(c->Progress(0, 1, Fill(0, 1, 4), 4, 1.0f).ok());
  ASSERT_TRUE(c->Progress(1, 1, Fill(1, 1, 1), 1, NAN).ok());
  ASSERT_TRUE(c->Progress(2, 1, Fill(2, 1, 3), 3, NAN).ok());
  EXPECT_EQ(c->Closing(1)->segments_closed, 1u);
  clock_.Advance(absl::Seconds(60));
  c->MaybeClose();
  ASSERT_TRUE(c->Outcome(1).has_value());
  EXPECT_EQ((*c->Outcome(1))->contributors, 1);
  EXPECT_EQ((*c->Outcome(1))->attempt, 1);
  // The late ranks' updates are taken, not averaged.
  ASSERT_TRUE(c->Progress(1, 1, Fill(1, 1, 4), 4, 1.0f).ok());
  EXPECT_EQ((*c->Outcome(1))->contributors, 1);
}

}  // namespace
}  // namespace effadam
