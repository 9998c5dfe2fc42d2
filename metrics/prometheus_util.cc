#include "metrics/prometheus_util.h"

#include <exception>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/host_port.h"

namespace effadam {

absl::StatusOr<std::unique_ptr<prometheus::Exposer>> StartMetricsExposer(
    const std::string& address) {
  // civetweb reads "8080" as every interface and "a:b:c" in ways nobody
  // means; insist on host:port, a bracketed IPv6 host allowed. The probe
  // names the reason a bind fails, which civetweb's exception does not.
  absl::StatusOr<HostPort> parsed =
      ParseHostPort(address, "--metrics_listen", /*min_port=*/0);
  if (!parsed.ok()) return parsed.status();
  if (absl::Status s = ProbeListen(*parsed); !s.ok()) {
    return absl::UnavailableError(absl::StrCat("metrics: ", s.message()));
  }
  try {
    auto exposer = std::make_unique<prometheus::Exposer>(address);
    if (BoundPort(*exposer) == 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot serve metrics on ", address));
    }
    return exposer;
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", address, " (", e.what(), ")"));
  }
}

int BoundPort(const prometheus::Exposer& exposer) {
  const std::vector<int> ports = exposer.GetListeningPorts();
  return ports.empty() ? 0 : ports.front();
}

prometheus::Histogram::BucketBoundaries RoundDurationBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
          0.5,   1,      2.5,   5,    10,    20,   30,  60};
}

}  // namespace effadam
