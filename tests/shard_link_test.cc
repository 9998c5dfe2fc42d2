// The worker's transport pieces without a server: RetryBackoff's schedule
// and log cadence on a FakeClock (no sleeps), ShardLink::Retry's decisions
// on that clock, LinkThreads, and that the worker's public headers hold no
// protobuf or gRPC type.

#include "worker/shard_link.h"

#include "worker/worker_client.h"

// The public headers above must not pull in protobuf (or gRPC's C++ API):
// a user of the worker library needs neither.
#if defined(GOOGLE_PROTOBUF_VERSION) || defined(GRPCPP_GRPCPP_H)
#error "worker/worker_client.h or worker/shard_link.h includes protobuf or gRPC"
#endif

#include <atomic>
#include <set>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "common/logger.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/link_threads.h"
#include "worker/retry_backoff.h"

namespace effadam {
namespace {

using ::testing::HasSubstr;

TEST(RetryBackoff, DoublesFrom100MsTo2SAndStopsBeforeTheDeadline) {
  FakeClock clock;
  const absl::Time start = clock.Now();
  RetryBackoff backoff(clock, start + absl::Seconds(10));
  std::vector<absl::Duration> waits;
  while (true) {
    const std::optional<absl::Time> next = backoff.NextAttempt();
    if (!next.has_value()) break;
    waits.push_back(*next - clock.Now());
    clock.Set(*next);  // the attempt fails at once
  }
  const std::vector<absl::Duration> want = {
      absl::Milliseconds(100),  absl::Milliseconds(200),
      absl::Milliseconds(400),  absl::Milliseconds(800),
      absl::Milliseconds(1600), absl::Seconds(2),
      absl::Seconds(2),         absl::Seconds(2)};
  EXPECT_EQ(waits, want);
  // The last attempt started at 9.1 s; the next would start at 11.1 s,
  // after the deadline.
  EXPECT_EQ(clock.Now() - start, absl::Milliseconds(9100));
}

TEST(RetryBackoff, NoAttemptAtOrAfterTheDeadline) {
  FakeClock clock;
  RetryBackoff backoff(clock, clock.Now() + absl::Milliseconds(100));
  EXPECT_FALSE(backoff.NextAttempt().has_value());  // would start at 100 ms
  RetryBackoff later(clock, clock.Now() + absl::Milliseconds(101));
  EXPECT_TRUE(later.NextAttempt().has_value());
  // An attempt that took past the deadline is the last.
  clock.Advance(absl::Seconds(5));
  EXPECT_FALSE(later.NextAttempt().has_value());
}

TEST(RetryBackoff, LogsTheFirstFailureThenEveryTenSeconds) {
  FakeClock clock;
  RetryBackoff backoff(clock, absl::InfiniteFuture());
  EXPECT_TRUE(backoff.ShouldLog());
  clock.Advance(absl::Seconds(9));
  EXPECT_FALSE(backoff.ShouldLog());
  clock.Advance(absl::Seconds(1));
  EXPECT_TRUE(backoff.ShouldLog());
  EXPECT_FALSE(backoff.ShouldLog());
}

ShardLinkOptions LinkOptions(const Clock& clock, Logger* log) {
  ShardLinkOptions o;
  o.address = "127.0.0.1:1";  // never called: Retry is given its attempts
  o.log = log;
  o.clock = &clock;
  return o;
}

TEST(ShardLinkRetry, GivesUpWhenTheClockPassedTheDeadlineWithoutWaiting) {
  FakeClock clock;
  RecordingLogger log;
  ShardLink link(LinkOptions(clock, &log));
  const absl::Time deadline = clock.Now() + absl::Minutes(5);
  int attempts = 0;
  const absl::Status s = link.Retry(
      deadline, "no parameters in time",
      [&] {
        ++attempts;
        clock.Advance(absl::Minutes(6));  // an attempt that took that long
        return absl::UnavailableError("not yet");
      },
      [](const absl::Status& s) { return absl::IsUnavailable(s); });
  EXPECT_EQ(attempts, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(s.message(), "no parameters in time: not yet");
  EXPECT_TRUE(log.lines().empty());  // gave up: nothing to wait for
}

TEST(ShardLinkRetry, AStatusRetryRejectsIsFinalAndOkEndsAtOnce) {
  FakeClock clock;
  ShardLink link(LinkOptions(clock, &Logger::Discard()));
  int attempts = 0;
  absl::Status s = link.Retry(
      absl::InfiniteFuture(), "",
      [&] {
        ++attempts;
        return absl::FailedPreconditionError("refused");
      },
      [](const absl::Status& s) { return absl::IsUnavailable(s); });
  EXPECT_EQ(attempts, 1);
  EXPECT_EQ(s, absl::FailedPreconditionError("refused"));
  s = link.Retry(
      absl::InfiniteFuture(), "", [] { return absl::OkStatus(); },
      [](const absl::Status&) { return true; });
  EXPECT_TRUE(s.ok());
}

TEST(ShardLinkRetry, CancelEndsAWaitOnAClockThatStandsStill) {
  FakeClock clock;  // never advanced: the wait would never end by itself
  RecordingLogger log;
  ShardLink link(LinkOptions(clock, &log));
  std::atomic<int> attempts{0};
  std::thread canceller([&] {
    while (attempts.load() == 0) std::this_thread::yield();
    link.Cancel();
  });
  const absl::Status s = link.Retry(
      absl::InfiniteFuture(), "",
      [&] {
        ++attempts;
        return absl::UnavailableError("away");
      },
      [](const absl::Status&) { return true; });
  canceller.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(attempts.load(), 1);
}

TEST(LinkThreads, RunsEachLinkOnceOnItsOwnThreadEveryRound) {
  for (int links : {1, 2, 5}) {
    SCOPED_TRACE(links);
    LinkThreads threads(links);
    EXPECT_EQ(threads.links(), links);
    std::set<std::thread::id> seen_ids;
    for (int round = 0; round < 200; ++round) {
      absl::Mutex mu;
      std::vector<int> calls(links, 0);
      std::set<std::thread::id> ids;
      threads.Run([&](int k) {
        absl::MutexLock lock(&mu);
        ++calls[k];
        ids.insert(std::this_thread::get_id());
      });
      ASSERT_EQ(calls, std::vector<int>(links, 1));
      ASSERT_EQ(ids.size(), static_cast<size_t>(links));
      EXPECT_EQ(ids.count(std::this_thread::get_id()), 1u);  // task 0
      seen_ids.insert(ids.begin(), ids.end());
    }
    // The same threads every round: made once.
    EXPECT_EQ(seen_ids.size(), static_cast<size_t>(links));
  }
}

TEST(LinkThreads, TasksRunInParallel) {
  // Each task waits for all the others to have started: this ends only if
  // they run at the same time.
  constexpr int kLinks = 4;
  LinkThreads threads(kLinks);
  absl::Mutex mu;
  int started = 0;
  threads.Run([&](int) {
    absl::MutexLock lock(&mu);
    ++started;
    mu.Await(absl::Condition(
        +[](int* n) { return *n == kLinks; }, &started));
  });
  EXPECT_EQ(started, kLinks);
}

}  // namespace
}  // namespace effadam
