#include "daemon/duration_flag.h"

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace effadam {

bool AbslParseFlag(absl::string_view text, DurationFlag* flag,
                   std::string* error) {
  const absl::string_view t = absl::StripAsciiWhitespace(text);
  absl::Duration d;
  if (!absl::ParseDuration(t, &d)) {
    double number = 0;
    *error = absl::StrCat(
        "expected a duration with a unit, e.g. 500ms, 10s, 5m or 1h30m "
        "(units ns, us, ms, s, m, h; \"inf\" for no limit)",
        absl::SimpleAtod(t, &number)
            ? absl::StrCat("; a bare number has no unit: write ", t,
                           "s for seconds")
            : "");
    return false;
  }
  if (d < absl::ZeroDuration()) {
    *error = "a duration must not be negative";
    return false;
  }
  flag->value = d;
  return true;
}

std::string AbslUnparseFlag(const DurationFlag& flag) {
  return absl::FormatDuration(flag.value);
}

}  // namespace effadam
