#ifndef EFFADAM_DAEMON_DURATION_FLAG_H_
#define EFFADAM_DAEMON_DURATION_FLAG_H_

#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace effadam {

// The type of every duration flag of the binaries: an absl duration with
// its unit ("500ms", "10s", "5m", "1h30m"), "0", or "inf" for no limit.
// Negative durations and bare numbers ("10": seconds? milliseconds?) are
// rejected with a message that says what is accepted, which absl::Duration
// flags do not do (they print only "Illegal value").
//
//   ABSL_FLAG(effadam::DurationFlag, round_timeout, absl::Seconds(60), "...");
//   absl::Duration t = absl::GetFlag(FLAGS_round_timeout).value;
struct DurationFlag {
  DurationFlag() = default;
  DurationFlag(absl::Duration d) : value(d) {}  // NOLINT: implicit on purpose
  absl::Duration value = absl::ZeroDuration();
};

// For absl::flags.
bool AbslParseFlag(absl::string_view text, DurationFlag* flag,
                   std::string* error);
std::string AbslUnparseFlag(const DurationFlag& flag);

}  // namespace effadam

#endif  // EFFADAM_DAEMON_DURATION_FLAG_H_
