#include "common/prometheus_util.h"

#include <algorithm>
#include <cstdio>
#include <exception>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/time/clock.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace effadam {

absl::StatusOr<std::unique_ptr<prometheus::Exposer>> StartMetricsExposer(
    const std::string& address) {
  // civetweb reads "8080" as every interface and "a:b:c" in ways nobody
  // means; insist on host:port, a bracketed IPv6 host allowed.
  const size_t colon = address.rfind(':');
  uint32_t port = 0;
  const absl::string_view port_text =
      colon == std::string::npos ? absl::string_view()
                                 : absl::string_view(address).substr(colon + 1);
  const absl::string_view host =
      colon == std::string::npos ? absl::string_view()
                                 : absl::string_view(address).substr(0, colon);
  const bool bracketed =
      host.size() >= 2 && host.front() == '[' && host.back() == ']';
  if (host.empty() ||
      (!bracketed && host.find(':') != absl::string_view::npos) ||
      port_text.empty() ||
      !std::all_of(port_text.begin(), port_text.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(port_text, &port) || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--metrics_listen must be host:port (e.g. 127.0.0.1:9464), got \"",
        address, "\""));
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

void LingerForScrape(const char* program, absl::Duration linger,
                     const std::function<bool()>& stopped) {
  if (linger <= absl::ZeroDuration() || stopped()) return;
  std::fprintf(stderr,
               "%s: serving the final metrics for %s (--metrics_linger; "
               "SIGTERM ends it)\n",
               program, absl::FormatDuration(linger).c_str());
  const absl::Time until = absl::Now() + linger;
  while (!stopped() && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(50));
  }
}

}  // namespace effadam
