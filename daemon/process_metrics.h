#ifndef EFFADAM_DAEMON_PROCESS_METRICS_H_
#define EFFADAM_DAEMON_PROCESS_METRICS_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"

namespace effadam {

// What /proc/self/stat says about a process (proc(5)), in its units.
struct ProcStat {
  int64_t utime_ticks = 0;
  int64_t stime_ticks = 0;
  int64_t num_threads = 0;
  int64_t start_ticks = 0;  // after boot
  int64_t vsize_bytes = 0;
  int64_t rss_pages = 0;
};

// Parses the one line of /proc/<pid>/stat; InvalidArgument for anything
// else. The command name (field 2) may hold spaces and parentheses: the
// fields are counted after its last ')'.
absl::StatusOr<ProcStat> ParseProcStat(absl::string_view line);

// The boot time from /proc/stat's "btime" line, in seconds since the epoch.
absl::StatusOr<int64_t> ParseBootTime(absl::string_view proc_stat);

// A Prometheus collectable with the standard process metrics, read from
// /proc at each scrape (the names of the Prometheus client libraries'
// process collectors): process_cpu_seconds_total,
// process_resident_memory_bytes, process_virtual_memory_bytes,
// process_start_time_seconds, process_open_fds, process_max_fds,
// process_threads; and effadam_build_info{version,revision} 1. A file
// that cannot be read leaves its metrics out of that scrape.
// Thread-safe (Collect reads files only).
class ProcessCollector final : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override;
};

}  // namespace effadam

#endif  // EFFADAM_DAEMON_PROCESS_METRICS_H_
