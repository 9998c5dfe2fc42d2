// Daemon (daemon/daemon.h), the plumbing both daemons' mains share: the
// /metrics endpoint with the process metrics and the caller's own, nothing
// without an address, a signal that runs the named action and ends the
// linger, the summary file. Each test makes its Daemon first, as a main
// does, so that no thread of the test process takes SIGTERM itself.

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "absl/time/clock.h"
#include "daemon/daemon.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/counter.h"
#include "prometheus/registry.h"
#include "tests/scrape_util.h"

namespace effadam {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

TEST(Daemon, ServesTheProcessMetricsAndTheCallersOwn) {
  Daemon daemon("effadam-test");
  ASSERT_TRUE(daemon.ServeMetrics("127.0.0.1:0").ok());
  ASSERT_TRUE(daemon.serving_metrics());
  const std::string url = daemon.metrics_url();
  ASSERT_THAT(url, StartsWith("http://127.0.0.1:"));
  const int port = std::stoi(url.substr(url.rfind(':') + 1));
  EXPECT_EQ(url, "http://127.0.0.1:" + std::to_string(port) + "/metrics");
  auto registry = std::make_shared<prometheus::Registry>();
  prometheus::BuildCounter()
      .Name("effadam_test_total")
      .Help("a test's own counter")
      .Register(*registry)
      .Add({})
      .Increment(3);
  daemon.AddMetrics(registry);
  const std::string text = Scrape(port);
  EXPECT_THAT(text, HasSubstr("200 OK"));
  EXPECT_THAT(text, HasSubstr("\neffadam_test_total 3\n"));
  // The process metrics live as long as the daemon, not the call.
  EXPECT_THAT(text, HasSubstr("\neffadam_build_info{"));
  EXPECT_THAT(text, HasSubstr("\nprocess_cpu_seconds_total "));
}

TEST(Daemon, WithoutAnAddressThereIsNoEndpointAndNothingToCheck) {
  Daemon daemon("effadam-test");
  EXPECT_TRUE(daemon.ServeMetrics("").ok());
  EXPECT_FALSE(daemon.serving_metrics());
  EXPECT_EQ(daemon.metrics_url(), "");
  daemon.AddMetrics(std::make_shared<prometheus::Registry>());  // no-op
  EXPECT_EQ(daemon.ServeMetrics("9464").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(daemon.serving_metrics());
  const absl::Time start = absl::Now();
  daemon.Linger(absl::ZeroDuration());
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
}

TEST(Daemon, ASignalRunsTheActionOnceAndEndsTheLinger) {
  Daemon daemon("effadam-test");
  std::atomic<int> actions{0};
  daemon.OnSignal([&actions] { ++actions; });
  EXPECT_EQ(daemon.signal(), 0);
  // To the process: the watcher, the one thread that takes it, runs the
  // action; the linger, an hour long, ends at once.
  ASSERT_EQ(kill(getpid(), SIGTERM), 0);
  const absl::Time start = absl::Now();
  daemon.Linger(absl::Hours(1));
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  EXPECT_EQ(daemon.signal(), SIGTERM);
  EXPECT_EQ(actions.load(), 1);
  // An action named after the signal does not run: it came already.
  daemon.OnSignal([&actions] { ++actions; });
  EXPECT_EQ(actions.load(), 1);
}

TEST(Daemon, WritesTheSummaryOnlyWhereAsked) {
  JsonObject json;
  json.Add("rounds", 3);
  EXPECT_TRUE(Daemon::WriteSummary("", json).ok());
  const std::string path =
      ::testing::TempDir() + "/daemon_runtime_test_summary.json";
  ASSERT_TRUE(Daemon::WriteSummary(path, json).ok());
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_EQ(text.str(), json.ToString());
  std::remove(path.c_str());
}

}  // namespace
}  // namespace effadam
