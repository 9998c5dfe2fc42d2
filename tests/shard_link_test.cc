// The worker's transport pieces without a parameter server: RetryBackoff's
// schedule and log cadence on a FakeClock (no sleeps), ShardLink::Retry's
// decisions on that clock (and, against a bare gRPC server on loopback,
// its wait for the channel to connect), LinkThreads, and that the worker's
// public headers hold no protobuf or gRPC type.

#include "worker/shard_link.h"

#include "worker/worker_client.h"

// The public headers above must not pull in protobuf (or gRPC's C++ API):
// a user of the worker library needs neither.
#if defined(GOOGLE_PROTOBUF_VERSION) || defined(GRPCPP_GRPCPP_H)
#error "worker/worker_client.h or worker/shard_link.h includes protobuf or gRPC"
#endif

#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/clock.h"
#include "common/logger.h"
#include "effadam/v1/parameter_server.grpc.pb.h"
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

// A loopback port nothing listens on (yet): bound to port 0, then closed.
int UnusedPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ADD_FAILURE() << "no free loopback port";
  }
  close(fd);
  return ntohs(addr.sin_port);
}

// After an attempt that failed on an unconnected channel (the server was
// away), the next one goes as soon as the channel connects, however long
// the backoff: the clock here never moves, so only the connection can end
// the wait. The wait must also drive the connection: between calls a
// synchronous client reads its sockets only every 5 s (gRPC's backup
// poller), and a link cut's reconnect took 4-7 s that way
// (docs/faults.md, "Reconnecting after a link cut"). A failure on a
// connected channel is the server's answer and waits its backoff.
TEST(ShardLinkRetry, AfterAFailureWhileUnconnectedTheNextAttemptGoesOnConnect) {
  FakeClock clock;  // never advanced
  const std::string address = absl::StrCat("127.0.0.1:", UnusedPort());
  ShardLinkOptions options = LinkOptions(clock, &Logger::Discard());
  options.address = address;
  ShardLink link(options);
  std::atomic<int> attempts{0};
  // Every method unimplemented: the channel only needs a server to connect.
  v1::ParameterServer::Service service;
  std::unique_ptr<grpc::Server> server;
  std::thread starter([&] {
    while (attempts.load() == 0) std::this_thread::yield();
    // The server comes back after the failed attempt.
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    grpc::ServerBuilder builder;
    builder.AddListeningPort(address, grpc::InsecureServerCredentials());
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
  });
  // Ends a wait that never would (the test then fails, not hangs).
  absl::Mutex mu;
  bool done = false;
  std::thread watchdog([&] {
    absl::MutexLock lock(&mu);
    if (!mu.AwaitWithTimeout(absl::Condition(&done), absl::Seconds(20))) {
      link.Cancel();
    }
  });
  const absl::Time started = absl::Now();
  absl::Status s = link.Retry(
      absl::InfiniteFuture(), "",
      [&] {
        return ++attempts == 1 ? absl::UnavailableError("away")
                               : absl::OkStatus();
      },
      [](const absl::Status& s) { return absl::IsUnavailable(s); });
  starter.join();
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(attempts.load(), 2);
  // The connection, not the backup poller's 5 s, ended the wait.
  EXPECT_LT(absl::Now() - started, absl::Seconds(4));
  ASSERT_NE(server, nullptr);

  // Connected now: a failure waits for the (standing) clock until Cancel.
  attempts = 0;
  std::thread canceller([&] {
    while (attempts.load() == 0) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    link.Cancel();
  });
  s = link.Retry(
      absl::InfiniteFuture(), "",
      [&] {
        ++attempts;
        return absl::UnavailableError("shutting down");
      },
      [](const absl::Status& s) { return absl::IsUnavailable(s); });
  canceller.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(attempts.load(), 1);
  {
    absl::MutexLock lock(&mu);
    done = true;
  }
  watchdog.join();
  server->Shutdown();
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
