#ifndef EFFADAM_METRICS_PROMETHEUS_UTIL_H_
#define EFFADAM_METRICS_PROMETHEUS_UTIL_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "prometheus/exposer.h"
#include "prometheus/histogram.h"

namespace effadam {

// Serves /metrics over HTTP on `address` ("host:port"; port 0 picks a free
// port, see BoundPort). InvalidArgument for an address that is not
// host:port, Unavailable naming the address and the reason when it
// cannot be bound. prometheus-cpp reports a
// failed bind by throwing from its constructor; this turns that into a
// status, so the daemons can exit with a message instead of a crash.
// Threads the exposer starts inherit the caller's signal mask.
absl::StatusOr<std::unique_ptr<prometheus::Exposer>> StartMetricsExposer(
    const std::string& address);

// The port `exposer` listens on (the first, if several); 0 if none.
int BoundPort(const prometheus::Exposer& exposer);

// Buckets of the round-duration histograms, in seconds: 1 ms (a tiny model
// on loopback) to 60 s (a round that waited for --round_timeout's default).
prometheus::Histogram::BucketBoundaries RoundDurationBuckets();

}  // namespace effadam

#endif  // EFFADAM_METRICS_PROMETHEUS_UTIL_H_
