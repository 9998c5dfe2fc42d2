// ParameterServer without a network: the rules the gRPC service relies on,
// driven directly on a fake clock with fake calls (no sockets, no sleeps
// beyond the 100 ms real-time poll of a waiter).

#include "server/parameter_server.h"

#include <atomic>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "core/codec_spec.h"
#include "gtest/gtest.h"

namespace effadam {
namespace {

class FakeCall final : public ServerCall {
 public:
  bool IsCancelled() const override { return cancelled.load(); }
  void Cancel() override { cancelled = true; }
  absl::Duration TimeLeft() const override { return time_left; }

  std::atomic<bool> cancelled{false};
  absl::Duration time_left = absl::InfiniteDuration();
};

constexpr size_t kElements = 16;
constexpr absl::Duration kTick = absl::Milliseconds(1);

ServerOptions Fp32Options(int workers, const FakeClock& clock) {
  ServerOptions o;
  o.workers = workers;
  o.compression.worker_codec = *ParseCodecSpec("fp32");
  o.compression.server_codec = *ParseCodecSpec("fp32");
  o.compression.worker_error_feedback = false;
  o.compression.server_error_feedback = false;
  o.round_timeout = absl::Seconds(5);
  o.clock = &clock;
  o.threads = 1;
  return o;
}

ParameterServer::JoinArgs JoinAs(int rank) {
  ParameterServer::JoinArgs args;
  args.rank = rank;
  args.layout = *TensorLayout::Create({{"w", {4, 4}}});
  return args;
}

std::vector<float> Filled(float value) {
  return std::vector<float>(kElements, value);
}

// Joins every rank and uploads `x` from rank 0.
void StartWith(ParameterServer& ps, const std::vector<float>& x) {
  for (int rank = 0; rank < ps.options().workers; ++rank) {
    ASSERT_TRUE(ps.Join(JoinAs(rank)).ok());
  }
  FakeCall call;
  absl::StatusOr<ParameterServer::UploadPlan> plan = ps.BeginUpload(0, call);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_TRUE(ps.EndUpload(0, *plan, x).ok());
}

std::shared_ptr<const std::string> Encoded(const ParameterServer& ps,
                                           const std::vector<float>& update) {
  auto out = std::make_shared<std::string>();
  EXPECT_TRUE(ps.worker_codec()
                  ->EncodeWithFeedback(update, {}, /*seed=*/1, out.get())
                  .ok());
  return out;
}

// What the service does on a Train stream, on one thread: the whole update
// of `rank` for `round` at once, then the wait for the round's delta.
absl::StatusOr<ClosedRound> SubmitAndAwait(
    ParameterServer& ps, int rank, int64_t round,
    std::shared_ptr<const std::string> update, float loss,
    const ServerCall& call) {
  const size_t segments = ps.worker_codec()->segments().size();
  if (absl::Status s = ps.SubmitProgress(rank, round, update, segments, loss);
      !s.ok()) {
    return s;
  }
  const std::atomic<bool> stop{false};
  while (true) {
    absl::StatusOr<std::optional<ParameterServer::DeltaProgress>> p =
        ps.AwaitDelta(round, /*attempt=*/-1, std::numeric_limits<size_t>::max(),
                      call, stop);
    if (!p.ok()) return p.status();
    if (p->has_value() && (*p)->closed.has_value()) return *(*p)->closed;
  }
}

TEST(ParameterServer, TwoUpdatesCloseARoundWithTheirAverage) {
  FakeClock clock;
  auto ps = *ParameterServer::Create(Fp32Options(2, clock));
  StartWith(*ps, Filled(10.0f));
  ASSERT_TRUE(ps->BeginTrain(0).ok());
  ASSERT_TRUE(ps->BeginTrain(1).ok());
  FakeCall call0, call1;
  absl::StatusOr<ClosedRound> closed0;
  std::thread worker0([&] {
    closed0 =
        SubmitAndAwait(*ps, 0, 1, Encoded(*ps, Filled(1.0f)), 0.5f, call0);
  });
  absl::StatusOr<ClosedRound> closed1 =
      SubmitAndAwait(*ps, 1, 1, Encoded(*ps, Filled(2.0f)), 1.5f, call1);
  worker0.join();
  ASSERT_TRUE(closed0.ok()) << closed0.status();
  ASSERT_TRUE(closed1.ok()) << closed1.status();
  EXPECT_EQ(closed1->round, 1);
  EXPECT_EQ(closed1->contributors, 2);
  EXPECT_EQ(closed0->delta, closed1->delta);  // one delta, shared

  const ServerSummary s = ps->Summary();
  EXPECT_EQ(s.round, 2);
  EXPECT_EQ(s.rounds_closed, 1);
  EXPECT_EQ(s.short_rounds, 0);
  EXPECT_DOUBLE_EQ(s.train_loss, 1.0);
  EXPECT_FALSE(s.awaiting_replicas);
  // x -= mean of the updates, exactly in fp32.
  EXPECT_EQ(ps->Snapshot()->state.params, Filled(8.5f));
}

TEST(ParameterServer, ARoundClosesOnTheClockWithTheRanksPresent) {
  FakeClock clock;
  auto ps = *ParameterServer::Create(Fp32Options(2, clock));
  StartWith(*ps, Filled(0.0f));
  ASSERT_TRUE(ps->BeginTrain(0).ok());
  FakeCall call;
  std::atomic<bool> done{false};
  absl::StatusOr<ClosedRound> closed;
  std::thread worker([&] {
    closed = SubmitAndAwait(*ps, 0, 1, Encoded(*ps, Filled(1.0f)), 0, call);
    done = true;
  });
  // Just short of the timeout the round stays open.
  while (ps->StatusNow().traffic.up().payload == 0) absl::SleepFor(kTick);
  clock.Advance(absl::Seconds(5) - absl::Milliseconds(1));
  EXPECT_EQ(ps->StatusNow().rounds_closed, 0);
  EXPECT_FALSE(done.load());
  clock.Advance(absl::Milliseconds(1));
  worker.join();
  ASSERT_TRUE(closed.ok()) << closed.status();
  EXPECT_EQ(closed->contributors, 1);
  EXPECT_EQ(ps->Summary().short_rounds, 1);
}

TEST(ParameterServer, AStalledUploadIsCancelledAndTheNextJoinUploads) {
  FakeClock clock;
  auto ps = *ParameterServer::Create(Fp32Options(2, clock));
  absl::StatusOr<ParameterServer::JoinResult> first = ps->Join(JoinAs(0));
  ASSERT_TRUE(first.ok());
  EXPECT_TRUE(first->upload);
  FakeCall upload;
  absl::StatusOr<ParameterServer::UploadPlan> plan = ps->BeginUpload(0, upload);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->num_elements, kElements);
  clock.Advance(absl::Seconds(59));
  ps->UploadProgress();  // a chunk: the stall timer starts again
  clock.Advance(absl::Seconds(59));
  ps->StatusNow();
  EXPECT_FALSE(upload.cancelled.load());
  clock.Advance(absl::Seconds(2));
  ps->StatusNow();  // applies the timing rules
  EXPECT_TRUE(upload.cancelled.load());
  EXPECT_EQ(ps->EndUpload(0, *plan, Filled(1.0f)).code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(ps->Summary().params_checksum, "");  // nothing kept
  absl::StatusOr<ParameterServer::JoinResult> next = ps->Join(JoinAs(1));
  ASSERT_TRUE(next.ok());
  EXPECT_TRUE(next->upload);
}

TEST(ParameterServer, AFailedUploadKeepsNothingAndFreesTheRank) {
  FakeClock clock;
  auto ps = *ParameterServer::Create(Fp32Options(2, clock));
  ASSERT_TRUE(ps->Join(JoinAs(0)).ok());
  FakeCall call;
  absl::StatusOr<ParameterServer::UploadPlan> plan = ps->BeginUpload(0, call);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(
      ps->EndUpload(0, *plan, absl::InvalidArgumentError("torn chunk")).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ps->Summary().live_workers, 0);
  EXPECT_EQ(ps->Summary().num_elements, 0);  // empty: any layout may come
  absl::StatusOr<ParameterServer::JoinResult> again = ps->Join(JoinAs(0));
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->upload);
}

TEST(ParameterServer, WaitForParamsStopsShortOfTheCallsDeadline) {
  FakeClock clock;
  auto ps = *ParameterServer::Create(Fp32Options(2, clock));
  ASSERT_TRUE(ps->Join(JoinAs(0)).ok());  // the uploader, who stays silent
  ASSERT_TRUE(ps->Join(JoinAs(1)).ok());
  FakeCall call;
  call.time_left = absl::Milliseconds(40);  // inside the 50 ms margin
  absl::StatusOr<ParameterServer::ParamsCopy> x = ps->WaitForParams(1, call);
  EXPECT_EQ(x.status().code(), absl::StatusCode::kUnavailable);
}

// Two ranks joined, x uploaded, rank 0's Train stream open.
class StartedServer : public ::testing::Test {
 protected:
  void SetUp() override {
    ps_ = *ParameterServer::Create(Fp32Options(2, clock_));
    StartWith(*ps_, Filled(0.0f));
    ASSERT_TRUE(ps_->BeginTrain(0).ok());
  }
  absl::StatusOr<ClosedRound> Submit(const FakeCall& call) {
    return SubmitAndAwait(*ps_, 0, 1, Encoded(*ps_, Filled(1.0f)), 0, call);
  }

  FakeClock clock_;
  std::unique_ptr<ParameterServer> ps_;
};

TEST_F(StartedServer, ACancelledCallStopsWaitingForItsRound) {
  FakeCall call;
  call.cancelled = true;
  EXPECT_EQ(Submit(call).status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(ps_->Summary().rounds_closed, 0);
}

TEST_F(StartedServer, ShutdownEndsAWaitingSubmit) {
  FakeCall call;
  absl::StatusOr<ClosedRound> closed;
  std::thread worker([&] { closed = Submit(call); });
  while (ps_->StatusNow().traffic.up().payload == 0) absl::SleepFor(kTick);
  ps_->Shutdown();
  worker.join();
  EXPECT_EQ(closed.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(ps_->WaitUntilDone(absl::ZeroDuration()));
  EXPECT_EQ(ps_->Join(JoinAs(1)).status().code(),
            absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace effadam
