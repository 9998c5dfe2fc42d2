#ifndef EFFADAM_COMMON_CLOCK_H_
#define EFFADAM_COMMON_CLOCK_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace effadam {

// Where time comes from. Components that apply timing rules (round
// timeouts, idle joins, upload deadlines, retry backoff) take a Clock so
// that tests decide what time it is instead of sleeping.
//
// A component never blocks on a Clock: it reads Now() to decide, and waits
// on its own condition variable for at most a short real-time poll
// interval, so a FakeClock that jumps forward is noticed within one poll.
//
// Thread-safe: Now() may be called from any thread.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;

  // The system clock (absl::Now()); never destroyed.
  static const Clock& Real();
};

// A clock that stands still until told to move; for tests. Starts at the
// Unix epoch plus one day, so that a time before "now" is still valid.
// Thread-safe.
class FakeClock final : public Clock {
 public:
  FakeClock() = default;
  absl::Time Now() const override;
  void Advance(absl::Duration d);
  void Set(absl::Time t);

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_) = absl::UnixEpoch() + absl::Hours(24);
};

}  // namespace effadam

#endif  // EFFADAM_COMMON_CLOCK_H_
