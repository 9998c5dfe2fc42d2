#include "daemon/process_metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "daemon/command_line.h"

namespace effadam {
namespace {

std::string ReadFile(const char* path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

prometheus::MetricFamily Family(const char* name, const char* help,
                                prometheus::MetricType type, double value) {
  prometheus::MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  prometheus::ClientMetric m;
  if (type == prometheus::MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  f.metric.push_back(m);
  return f;
}

// Entries of /proc/self/fd, less the one the listing itself opens; -1 if
// it cannot be read.
int64_t OpenFds() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int64_t n = 0;
  while (const dirent* e = readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(dir);
  return n - 1;
}

}  // namespace

absl::StatusOr<ProcStat> ParseProcStat(absl::string_view line) {
  const size_t paren = line.rfind(')');
  if (paren == absl::string_view::npos) {
    return absl::InvalidArgumentError("no ')' after the command name");
  }
  // Fields from 3 (state) on.
  const std::vector<absl::string_view> f =
      absl::StrSplit(absl::StripAsciiWhitespace(line.substr(paren + 1)), ' ',
                     absl::SkipEmpty());
  // Field n (1-based, proc(5)) is f[n - 3].
  constexpr size_t kRss = 24;
  if (f.size() < kRss - 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "expected at least ", kRss, " fields, got ", f.size() + 2));
  }
  ProcStat s;
  const auto field = [&](size_t n, int64_t* out) {
    return absl::SimpleAtoi(f[n - 3], out);
  };
  if (!field(14, &s.utime_ticks) || !field(15, &s.stime_ticks) ||
      !field(20, &s.num_threads) || !field(22, &s.start_ticks) ||
      !field(23, &s.vsize_bytes) || !field(24, &s.rss_pages)) {
    return absl::InvalidArgumentError("a numeric field is not a number");
  }
  return s;
}

absl::StatusOr<int64_t> ParseBootTime(absl::string_view proc_stat) {
  for (absl::string_view line : absl::StrSplit(proc_stat, '\n')) {
    int64_t t = 0;
    if (absl::ConsumePrefix(&line, "btime ") && absl::SimpleAtoi(line, &t)) {
      return t;
    }
  }
  return absl::InvalidArgumentError("no btime line");
}

std::vector<prometheus::MetricFamily> ProcessCollector::Collect() const {
  using prometheus::MetricType;
  std::vector<prometheus::MetricFamily> out;
  prometheus::MetricFamily build =
      Family("effadam_build_info",
             "1, labelled with the version and git revision of this binary",
             MetricType::Gauge, 1);
  build.metric[0].label = {{"version", ProjectVersion()},
                           {"revision", GitRevision()}};
  out.push_back(std::move(build));

  const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  absl::StatusOr<ProcStat> s = ParseProcStat(ReadFile("/proc/self/stat"));
  if (s.ok()) {
    out.push_back(Family("process_cpu_seconds_total",
                         "Total user and system CPU time spent in seconds",
                         MetricType::Counter,
                         (s->utime_ticks + s->stime_ticks) / tick));
    out.push_back(Family("process_resident_memory_bytes",
                         "Resident memory size in bytes", MetricType::Gauge,
                         s->rss_pages * page));
    out.push_back(Family("process_virtual_memory_bytes",
                         "Virtual memory size in bytes", MetricType::Gauge,
                         static_cast<double>(s->vsize_bytes)));
    out.push_back(Family("process_threads", "Number of OS threads",
                         MetricType::Gauge,
                         static_cast<double>(s->num_threads)));
    absl::StatusOr<int64_t> boot = ParseBootTime(ReadFile("/proc/stat"));
    if (boot.ok()) {
      out.push_back(
          Family("process_start_time_seconds",
                 "Start time of the process since unix epoch in seconds",
                 MetricType::Gauge, *boot + s->start_ticks / tick));
    }
  }
  if (const int64_t fds = OpenFds(); fds >= 0) {
    out.push_back(Family("process_open_fds", "Number of open file descriptors",
                         MetricType::Gauge, static_cast<double>(fds)));
  }
  rlimit limit = {};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0) {
    out.push_back(
        Family("process_max_fds", "Maximum number of open file descriptors",
               MetricType::Gauge, static_cast<double>(limit.rlim_cur)));
  }
  return out;
}

}  // namespace effadam
