#ifndef EFFADAM_WORKER_RETRY_BACKOFF_H_
#define EFFADAM_WORKER_RETRY_BACKOFF_H_

#include <optional>

#include "absl/time/time.h"
#include "common/clock.h"

namespace effadam {

// When a worker tries a failed call again, and when it says so: the next
// attempt 100 ms after a failure, then twice as long after each further
// one, up to 2 s; none that would start at or after the deadline. The first
// failure and then one every 10 s are worth a log line, so that an
// operator sees what a waiting worker waits for (at most 6 lines a minute).
//
// Pure: it reads the Clock it is given and never waits (ShardLink::Retry
// does the waiting). Not thread-safe; one per retried call.
class RetryBackoff {
 public:
  static constexpr absl::Duration kFirst = absl::Milliseconds(100);
  static constexpr absl::Duration kMax = absl::Seconds(2);
  static constexpr absl::Duration kLogEvery = absl::Seconds(10);

  // `clock` outlives the backoff.
  RetryBackoff(const Clock& clock, absl::Time deadline)
      : clock_(clock), deadline_(deadline) {}

  // After a failed attempt: when the next one starts, or nullopt when that
  // would be at or after the deadline (give up). Each call doubles the wait
  // of the next.
  std::optional<absl::Time> NextAttempt();

  // Whether the failure just seen deserves a log line: the first, then the
  // first one at least kLogEvery after the last logged.
  bool ShouldLog();

  absl::Time deadline() const { return deadline_; }

 private:
  const Clock& clock_;
  const absl::Time deadline_;
  absl::Duration wait_ = kFirst;
  absl::Time last_logged_ = absl::InfinitePast();
};

}  // namespace effadam

#endif  // EFFADAM_WORKER_RETRY_BACKOFF_H_
