#include "worker/retry_backoff.h"

#include <algorithm>

namespace effadam {

std::optional<absl::Time> RetryBackoff::NextAttempt() {
  const absl::Time next = clock_.Now() + wait_;
  if (next >= deadline_) return std::nullopt;
  wait_ = std::min(2 * wait_, kMax);
  return next;
}

bool RetryBackoff::ShouldLog() {
  const absl::Time now = clock_.Now();
  if (now - last_logged_ < kLogEvery) return false;
  last_logged_ = now;
  return true;
}

}  // namespace effadam
