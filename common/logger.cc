#include "common/logger.h"

#include <cstdio>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace effadam {
namespace {

class DiscardLogger final : public Logger {
 public:
  void Log(LogLevel, absl::string_view) override {}
};

}  // namespace

const char* LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kInfo:
      return "INFO";
    case LogLevel::kWarning:
      return "WARN";
    case LogLevel::kError:
      return "ERROR";
  }
  return "INFO";
}

Logger& Logger::Discard() {
  static DiscardLogger* const logger = new DiscardLogger;
  return *logger;
}

void StderrLogger::Log(LogLevel level, absl::string_view message) {
  const std::string stamp = absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ",
                                             absl::Now(), absl::UTCTimeZone());
  absl::MutexLock lock(&mu_);
  std::fprintf(stderr, "%s %s %s: %.*s\n", stamp.c_str(), LogLevelName(level),
               program_.c_str(), static_cast<int>(message.size()),
               message.data());
  std::fflush(stderr);
}

bool LogRateLimiter::Allow(absl::Time now, int64_t* suppressed) {
  absl::MutexLock lock(&mu_);
  if (suppressed != nullptr) *suppressed = 0;
  if (now >= period_start_ + period_) {
    period_start_ = now;
    allowed_ = 0;
    if (suppressed != nullptr) *suppressed = held_back_;
    held_back_ = 0;
  }
  if (allowed_ < burst_) {
    ++allowed_;
    return true;
  }
  ++held_back_;
  return false;
}

void RecordingLogger::Log(LogLevel level, absl::string_view message) {
  absl::MutexLock lock(&mu_);
  lines_.push_back(Line{level, std::string(message)});
}

std::vector<RecordingLogger::Line> RecordingLogger::lines() const {
  absl::MutexLock lock(&mu_);
  return lines_;
}

bool RecordingLogger::Contains(absl::string_view fragment) const {
  absl::MutexLock lock(&mu_);
  for (const Line& line : lines_) {
    if (absl::StrContains(line.message, fragment)) return true;
  }
  return false;
}

}  // namespace effadam
