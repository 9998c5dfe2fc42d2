#ifndef EFFADAM_COMMON_LOGGER_H_
#define EFFADAM_COMMON_LOGGER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace effadam {

enum class LogLevel { kInfo, kWarning, kError };

// "INFO", "WARN", "ERROR".
const char* LogLevelName(LogLevel level);

// Where a library component's few log lines go. Libraries never write to
// stderr themselves: the daemons give them a logger with the operators'
// line format (StderrLogger), tests give them a RecordingLogger or
// Logger::Discard().
//
// Implementations must be thread-safe and must not call back into the
// component that logs (it may hold its lock).
class Logger {
 public:
  virtual ~Logger() = default;
  virtual void Log(LogLevel level, absl::string_view message) = 0;

  void Info(absl::string_view message) { Log(LogLevel::kInfo, message); }
  void Warning(absl::string_view message) { Log(LogLevel::kWarning, message); }
  void Error(absl::string_view message) { Log(LogLevel::kError, message); }

  // Drops every line; never destroyed.
  static Logger& Discard();
};

// One line per message on stderr, flushed at once:
//   2026-11-30T06:45:01.123456Z INFO effadam-server: rank 0 joined (1/4 live)
// (an RFC 3339 timestamp in UTC, the level, the program, the message).
class StderrLogger final : public Logger {
 public:
  explicit StderrLogger(std::string program) : program_(std::move(program)) {}
  void Log(LogLevel level, absl::string_view message) override;

 private:
  const std::string program_;
  absl::Mutex mu_;  // keeps lines from two threads apart
};

// Lets at most `burst` lines through per `period` and counts the rest, so
// that a flood of bad calls cannot fill a disk with log lines.
// Thread-safe.
class LogRateLimiter {
 public:
  LogRateLimiter(int burst, absl::Duration period)
      : burst_(burst), period_(period) {}
  // Whether a line may be written at `now`. When a new period lets lines
  // through again, *suppressed (if not null) gets how many were held back
  // since, for the line to mention; else 0.
  bool Allow(absl::Time now, int64_t* suppressed);

 private:
  const int burst_;
  const absl::Duration period_;
  absl::Mutex mu_;
  absl::Time period_start_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  int allowed_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t held_back_ ABSL_GUARDED_BY(mu_) = 0;
};

// Keeps every line; for tests.
class RecordingLogger final : public Logger {
 public:
  struct Line {
    LogLevel level;
    std::string message;
  };
  void Log(LogLevel level, absl::string_view message) override;
  std::vector<Line> lines() const;
  // Whether some line contains `fragment`.
  bool Contains(absl::string_view fragment) const;

 private:
  mutable absl::Mutex mu_;
  std::vector<Line> lines_ ABSL_GUARDED_BY(mu_);
};

}  // namespace effadam

#endif  // EFFADAM_COMMON_LOGGER_H_
