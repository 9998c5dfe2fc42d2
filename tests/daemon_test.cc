// The binaries' shared plumbing (daemon/, common/host_port.h): duration
// flags, host:port parsing and the bind probe, /proc parsing, the flag
// files --help lists, and when a checkpoint completes a run.

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "absl/strings/match.h"
#include "absl/time/time.h"
#include "common/host_port.h"
#include "daemon/command_line.h"
#include "daemon/duration_flag.h"
#include "daemon/process_metrics.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/checkpoint.h"

namespace effadam {
namespace {

using ::testing::HasSubstr;

TEST(DurationFlag, AcceptsDurationsWithUnits) {
  DurationFlag f;
  std::string error;
  for (const auto& [text, want] :
       std::vector<std::pair<std::string, absl::Duration>>{
           {"500ms", absl::Milliseconds(500)},
           {"10s", absl::Seconds(10)},
           {"5m", absl::Minutes(5)},
           {"1h30m", absl::Minutes(90)},
           {"0", absl::ZeroDuration()},
           {" 2s ", absl::Seconds(2)},
           {"inf", absl::InfiniteDuration()}}) {
    ASSERT_TRUE(AbslParseFlag(text, &f, &error)) << text << ": " << error;
    EXPECT_EQ(f.value, want) << text;
  }
  EXPECT_EQ(AbslUnparseFlag(DurationFlag(absl::Seconds(60))), "1m");
}

TEST(DurationFlag, RejectsBareNumbersAndNegativesSayingWhy) {
  DurationFlag f(absl::Seconds(7));
  std::string error;
  EXPECT_FALSE(AbslParseFlag("10", &f, &error));
  EXPECT_THAT(error, HasSubstr("with a unit, e.g. 500ms, 10s, 5m"));
  EXPECT_THAT(error, HasSubstr("write 10s for seconds"));
  error.clear();
  EXPECT_FALSE(AbslParseFlag("soon", &f, &error));
  EXPECT_THAT(error, HasSubstr("with a unit"));
  EXPECT_THAT(error, ::testing::Not(HasSubstr("bare number")));
  EXPECT_FALSE(AbslParseFlag("-1s", &f, &error));
  EXPECT_THAT(error, HasSubstr("must not be negative"));
  EXPECT_EQ(f.value, absl::Seconds(7));  // unchanged by bad input
}

TEST(HostPort, ParsesHostAndPort) {
  absl::StatusOr<HostPort> a = ParseHostPort("127.0.0.1:50051", "--listen", 0);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->host, "127.0.0.1");
  EXPECT_EQ(a->port, 50051);
  EXPECT_EQ(a->ToString(), "127.0.0.1:50051");
  a = ParseHostPort("[::1]:0", "--listen", 0);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->host, "[::1]");
  EXPECT_EQ(a->port, 0);
  EXPECT_TRUE(
      ParseHostPort("effadam-server-0.effadam-server:50051", "--server", 1)
          .ok());
}

TEST(HostPort, RejectsWhatIsNotHostPortNamingTheValue) {
  const auto error = [](absl::string_view address, int min_port) {
    absl::StatusOr<HostPort> a = ParseHostPort(address, "--listen", min_port);
    EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument) << address;
    return std::string(a.status().message());
  };
  EXPECT_THAT(error("127.0.0.1:99999", 0),
              HasSubstr("got \"127.0.0.1:99999\" (port \"99999\" is not in "
                        "[0, 65535])"));
  EXPECT_THAT(error("50051", 0), HasSubstr("write 0.0.0.0:50051"));
  EXPECT_THAT(error(":50051", 0), HasSubstr("no host"));
  EXPECT_THAT(error("::1:50051", 0), HasSubstr("in brackets"));
  EXPECT_THAT(error("host:", 0), HasSubstr("is not in"));
  EXPECT_THAT(error("host:-1", 0), HasSubstr("is not in"));
  EXPECT_THAT(error("host:0", 1), HasSubstr("[1, 65535]"));
  EXPECT_THAT(error("host:80a", 0), HasSubstr("--listen must be host:port"));
}

TEST(HostPort, ProbeNamesAddressAndReason) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), len), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  HostPort taken{"127.0.0.1", ntohs(addr.sin_port)};
  const absl::Status s = ProbeListen(taken);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr(absl::StrCat("cannot listen on ", taken.ToString(),
                                     ": Address already in use")));
  close(fd);
  EXPECT_TRUE(ProbeListen(taken).ok());
  EXPECT_TRUE(ProbeListen(HostPort{"127.0.0.1", 0}).ok());
  EXPECT_THAT(
      std::string(ProbeListen(HostPort{"no-such-host.invalid", 0}).message()),
      HasSubstr("cannot resolve host \"no-such-host.invalid\""));
}

TEST(ProcStat, ParsesTheFieldsAfterTheCommandName) {
  // Field 2 with a space and a ')' of its own; then fields 3..52.
  const std::string line =
      "1234 (my (proc) x) S 1 1234 1234 0 -1 4194304 100 0 0 0 "
      "250 50 0 0 20 0 7 0 9000 123456789 2048 18446744073709551615 "
      "1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n";
  absl::StatusOr<ProcStat> s = ParseProcStat(line);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->utime_ticks, 250);
  EXPECT_EQ(s->stime_ticks, 50);
  EXPECT_EQ(s->num_threads, 7);
  EXPECT_EQ(s->start_ticks, 9000);
  EXPECT_EQ(s->vsize_bytes, 123456789);
  EXPECT_EQ(s->rss_pages, 2048);
  EXPECT_FALSE(ParseProcStat("1234 (x) S 1 2 3").ok());
  EXPECT_FALSE(ParseProcStat("no parenthesis").ok());
}

TEST(ProcStat, BootTimeAndTheLiveCollector) {
  absl::StatusOr<int64_t> boot =
      ParseBootTime("cpu  1 2 3\nbtime 1764480000\nprocesses 9\n");
  ASSERT_TRUE(boot.ok());
  EXPECT_EQ(*boot, 1764480000);
  EXPECT_FALSE(ParseBootTime("cpu 1 2 3\n").ok());

  std::map<std::string, double> value;
  std::map<std::string, prometheus::ClientMetric> metric;
  for (const prometheus::MetricFamily& f : ProcessCollector().Collect()) {
    ASSERT_EQ(f.metric.size(), 1u) << f.name;
    metric[f.name] = f.metric[0];
    value[f.name] = f.type == prometheus::MetricType::Counter
                        ? f.metric[0].counter.value
                        : f.metric[0].gauge.value;
  }
  for (const char* name :
       {"process_cpu_seconds_total", "process_resident_memory_bytes",
        "process_virtual_memory_bytes", "process_start_time_seconds",
        "process_open_fds", "process_max_fds", "process_threads"}) {
    EXPECT_EQ(value.count(name), 1u) << name;
  }
  EXPECT_GT(value["process_resident_memory_bytes"], 1 << 20);
  EXPECT_GE(value["process_threads"], 1);
  EXPECT_GT(value["process_start_time_seconds"], 1.5e9);
  EXPECT_EQ(value["effadam_build_info"], 1);
  const auto& labels = metric["effadam_build_info"].label;
  ASSERT_EQ(labels.size(), 2u);
  EXPECT_EQ(labels[0].name, "version");
  EXPECT_EQ(labels[0].value, ProjectVersion());
  EXPECT_EQ(labels[1].name, "revision");
  EXPECT_EQ(labels[1].value, GitRevision());
}

TEST(CommandLine, ProjectFlagFiles) {
  EXPECT_EQ(ProjectFlagFile("/work/wt/server/server_main.cc"),
            "server/server_main.cc");
  EXPECT_EQ(ProjectFlagFile("../daemon/compression_flags.cc"),
            "daemon/compression_flags.cc");
  EXPECT_EQ(ProjectFlagFile("daemon/compression_flags.cc"),
            "daemon/compression_flags.cc");
  EXPECT_EQ(ProjectFlagFile("/build/absl/flags/parse.cc"), "");
  EXPECT_EQ(ProjectFlagFile("absl/log/flags.cc"), "");
  EXPECT_EQ(ProjectFlagFile("parse.cc"), "");
  EXPECT_EQ(VersionLine("effadam-x"),
            absl::StrCat("effadam-x ", ProjectVersion(), " (git ",
                         GitRevision(), ")"));
  EXPECT_FALSE(std::string(GitRevision()).empty());
}

TEST(Checkpoint, CompletesRunAfterTheLastRound) {
  Checkpoint c;
  c.state.round = 101;  // written after round 100
  EXPECT_TRUE(CompletesRun(c, 100));
  EXPECT_FALSE(CompletesRun(c, 101));
  EXPECT_FALSE(CompletesRun(c, 0));  // until SIGTERM: never complete
  c.state.round = 100;
  EXPECT_FALSE(CompletesRun(c, 100));
}

}  // namespace
}  // namespace effadam
