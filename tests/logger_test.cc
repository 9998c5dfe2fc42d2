#include "common/logger.h"

#include "absl/time/time.h"
#include "common/clock.h"
#include "gtest/gtest.h"

namespace effadam {
namespace {

TEST(LogRateLimiter, LetsABurstThroughPerPeriodAndCountsTheRest) {
  FakeClock clock;
  LogRateLimiter limiter(3, absl::Seconds(10));
  int64_t suppressed = -1;
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(limiter.Allow(clock.Now(), &suppressed));
    EXPECT_EQ(suppressed, 0);
  }
  for (int i = 0; i < 5; ++i) EXPECT_FALSE(limiter.Allow(clock.Now(), nullptr));
  clock.Advance(absl::Seconds(9));
  EXPECT_FALSE(limiter.Allow(clock.Now(), &suppressed));
  clock.Advance(absl::Seconds(1));
  // A new period: the first line says how many were held back.
  EXPECT_TRUE(limiter.Allow(clock.Now(), &suppressed));
  EXPECT_EQ(suppressed, 6);
  EXPECT_TRUE(limiter.Allow(clock.Now(), &suppressed));
  EXPECT_EQ(suppressed, 0);
}

TEST(FakeClock, MovesOnlyWhenTold) {
  FakeClock clock;
  const absl::Time t0 = clock.Now();
  EXPECT_EQ(clock.Now(), t0);
  clock.Advance(absl::Minutes(2));
  EXPECT_EQ(clock.Now(), t0 + absl::Minutes(2));
  clock.Set(t0);
  EXPECT_EQ(clock.Now(), t0);
}

TEST(RecordingLogger, KeepsLevelsAndLines) {
  RecordingLogger log;
  log.Info("rank 0 joined");
  log.Warning("rejected Join");
  ASSERT_EQ(log.lines().size(), 2u);
  EXPECT_EQ(log.lines()[1].level, LogLevel::kWarning);
  EXPECT_TRUE(log.Contains("joined"));
  EXPECT_FALSE(log.Contains("left"));
  EXPECT_STREQ(LogLevelName(LogLevel::kError), "ERROR");
}

}  // namespace
}  // namespace effadam
