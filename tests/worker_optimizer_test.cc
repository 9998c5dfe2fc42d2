#include "core/worker_optimizer.h"

#include <cmath>
#include <cstring>
#include <functional>
#include <random>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace effadam {
namespace {

constexpr size_t kN = 2000;

std::shared_ptr<const UpdateCodec> Codec(const std::string& name) {
  auto layout = TensorLayout::Create({{"w", {static_cast<int64_t>(kN)}}});
  CompressionOptions o;
  o.block_size = 64;
  return *UpdateCodec::Create(*layout, *ParseCodecSpec(name), o);
}

std::unique_ptr<WorkerOptimizer> Make(const std::string& wc,
                                      const AdamOptions& adam,
                                      bool error_feedback = true) {
  WorkerOptimizer::Options o;
  o.adam = adam;
  o.error_feedback = error_feedback;
  std::vector<float> x0(kN, 0.5f);
  auto w = WorkerOptimizer::Create(Codec(wc), Codec("fp32"), x0, o);
  EXPECT_TRUE(w.ok()) << w.status();
  return *std::move(w);
}

std::vector<float> Grad(int seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0, 1);
  std::vector<float> g(kN);
  for (float& x : g) x = normal(rng);
  return g;
}

std::vector<float> Decode(const std::string& bytes) {
  std::vector<float> q(kN, 0.0f);
  EXPECT_TRUE(
      Codec("fp32")->DecodeAccumulate(bytes, 1, absl::MakeSpan(q)).ok());
  return q;
}

// Textbook Adam in double, the reference for the float implementation.
struct ReferenceAdam {
  AdamOptions o;
  std::vector<double> m = std::vector<double>(kN), v = std::vector<double>(kN);
  double p1 = 1, p2 = 1;
  int t = 0;
  std::vector<double> Step(const std::vector<float>& g,
                           const std::vector<float>& x) {
    ++t;
    double b2 = o.beta2_schedule == Beta2Schedule::kConstant
                    ? o.beta2
                    : 1.0 - double(o.theta) / t;
    double lr = o.lr;
    if (o.lr_schedule == LrSchedule::kInverseSqrt) lr = o.lr / std::sqrt(t);
    if (o.lr_schedule == LrSchedule::kWarmupCosine) {
      const double w = o.warmup_rounds, total = o.schedule_rounds;
      lr = t <= w ? o.lr * t / w
           : t >= total
               ? 0.0
               : o.lr * 0.5 * (1 + std::cos(M_PI * (t - w) / (total - w)));
    }
    p1 *= o.beta1;
    p2 *= b2;
    std::vector<double> d(kN);
    const bool l2 = o.weight_decay_mode == WeightDecayMode::kL2;
    for (size_t i = 0; i < kN; ++i) {
      const double gi = l2 ? g[i] + double(o.weight_decay) * x[i] : g[i];
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * gi;
      v[i] = b2 * v[i] + (1 - b2) * gi * gi;
      double mh = m[i], vh = v[i];
      if (o.bias_correction) {
        mh /= 1 - p1;
        vh /= 1 - p2;
      }
      d[i] = lr * mh / (std::sqrt(vh) + o.eps) +
             (l2 ? 0.0 : lr * o.weight_decay * x[i]);
    }
    return d;
  }
};

// 20 steps against the reference; with lr_of_step, each step's lr is set
// first (SetLr) in the optimizer and in the reference.
void ExpectMatchesReference(const AdamOptions& adam,
                            const std::function<float(int)>& lr_of_step = {}) {
  auto w = Make("fp32", adam);
  ReferenceAdam ref{adam};
  for (int t = 1; t <= 20; ++t) {
    if (lr_of_step) {
      ASSERT_TRUE(w->SetLr(lr_of_step(t)).ok());
      ref.o.lr = lr_of_step(t);
    }
    std::vector<float> g = Grad(t);
    std::vector<float> x(w->params().begin(), w->params().end());
    std::string update;
    ASSERT_TRUE(w->ComputeUpdate(g, &update).ok());
    std::vector<float> q = Decode(update);
    std::vector<double> d = ref.Step(g, x);
    for (size_t i = 0; i < kN; ++i) {
      ASSERT_NEAR(q[i], d[i], 1e-5 * std::fabs(d[i]) + 1e-9)
          << "t=" << t << " i=" << i;
    }
  }
  EXPECT_EQ(w->step(), 20);
}

TEST(WorkerOptimizer, MatchesTextbookAdam) { ExpectMatchesReference({}); }

TEST(WorkerOptimizer, MatchesWithSchedulesAndWithoutBiasCorrection) {
  AdamOptions a;
  a.lr_schedule = LrSchedule::kInverseSqrt;
  a.beta2_schedule = Beta2Schedule::kOneMinusThetaOverT;
  a.theta = 0.9f;
  ExpectMatchesReference(a);
  a.bias_correction = false;
  a.theta = 1.0f;
  ExpectMatchesReference(a);
}

TEST(WorkerOptimizer, MatchesWithDecoupledWeightDecay) {
  AdamOptions a;
  a.weight_decay = 0.1f;
  a.lr = 0.01f;
  ExpectMatchesReference(a);
}

TEST(WorkerOptimizer, MatchesWithL2WeightDecay) {
  AdamOptions a;
  a.weight_decay = 0.1f;
  a.weight_decay_mode = WeightDecayMode::kL2;
  a.lr = 0.01f;
  ExpectMatchesReference(a);
}

TEST(WorkerOptimizer, MatchesWithWarmupCosine) {
  AdamOptions a;
  a.lr_schedule = LrSchedule::kWarmupCosine;
  a.warmup_rounds = 5;
  a.schedule_rounds = 18;  // the last steps run at lr 0
  ExpectMatchesReference(a);
}

TEST(ScheduledLr, WarmupCosineShape) {
  AdamOptions a;
  a.lr_schedule = LrSchedule::kWarmupCosine;
  a.warmup_rounds = 10;
  a.schedule_rounds = 110;
  EXPECT_FLOAT_EQ(ScheduledLr(a, 2.0f, 1), 0.2f);
  EXPECT_FLOAT_EQ(ScheduledLr(a, 2.0f, 10), 2.0f);
  EXPECT_FLOAT_EQ(ScheduledLr(a, 2.0f, 60), 1.0f);  // half way down
  EXPECT_EQ(ScheduledLr(a, 2.0f, 110), 0.0f);
  EXPECT_EQ(ScheduledLr(a, 2.0f, 500), 0.0f);
  a.warmup_rounds = 0;
  EXPECT_FLOAT_EQ(ScheduledLr(a, 2.0f, 1), float(1.0 + std::cos(M_PI / 110)));
  a.warmup_rounds = 111;
  EXPECT_THAT(std::string(ValidateAdamOptions(a).message()),
              ::testing::HasSubstr("warmup_rounds"));
}

// Two optimizers fed the same gradients; their updates compared bit for bit.
void ExpectSameUpdates(WorkerOptimizer& a, WorkerOptimizer& b, int steps,
                       int seed) {
  for (int t = 0; t < steps; ++t) {
    std::vector<float> g = Grad(seed + t);
    std::string ua, ub;
    ASSERT_TRUE(a.ComputeUpdate(g, &ua).ok());
    ASSERT_TRUE(b.ComputeUpdate(g, &ub).ok());
    ASSERT_EQ(ua, ub) << "step " << t;
  }
}

TEST(WorkerOptimizer, SettingTheSameLrEveryStepChangesNoBit) {
  AdamOptions a;
  a.lr = 3e-3f;
  auto fixed = Make("sign", a);
  auto set = Make("sign", a);
  for (int t = 0; t < 10; ++t) {
    ASSERT_TRUE(set->SetLr(3e-3f).ok());
    ExpectSameUpdates(*fixed, *set, 1, 40 + t);
  }
}

TEST(WorkerOptimizer, PerStepLrIsTheLrOfThatStep) {
  // Steps with lr 1e-2, then 1e-3, then 0 equal a reference whose
  // options change.
  ExpectMatchesReference({}, [](int t) {
    return t <= 8 ? 1e-2f : t <= 16 ? 1e-3f : 0.0f;
  });
  auto w = Make("fp32", {});
  EXPECT_TRUE(w->SetLr(0.0f).ok());  // a warm-up's first step
  for (float bad : {-1e-3f, NAN, INFINITY}) {
    EXPECT_EQ(w->SetLr(bad).code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(w->lr(), 0.0f);
}

TEST(WorkerOptimizer, TheScheduleFollowsTheRunsRoundWhenGivenOne) {
  AdamOptions a;
  a.lr = 1e-2f;
  a.lr_schedule = LrSchedule::kWarmupCosine;
  a.warmup_rounds = 10;
  a.schedule_rounds = 100;
  // Rounds equal to its own steps: the same bits.
  auto own = Make("fp32", a);
  auto by_round = Make("fp32", a);
  for (int t = 1; t <= 12; ++t) {
    ASSERT_TRUE(by_round->SetScheduleStep(t).ok());
    ExpectSameUpdates(*own, *by_round, 1, 60 + t);
  }
  // A worker that joins at round 50 takes round 50's rate on its first
  // step, as a constant schedule at that rate does (not warm-up's first).
  auto joined = Make("fp32", a);
  ASSERT_TRUE(joined->SetScheduleStep(50).ok());
  AdamOptions at50 = a;
  at50.lr_schedule = LrSchedule::kConstant;
  at50.lr = ScheduledLr(a, a.lr, 50);
  auto reference = Make("fp32", at50);
  ExpectSameUpdates(*joined, *reference, 1, 7);
  auto fresh = Make("fp32", a);
  std::string u, v;
  ASSERT_TRUE(fresh->ComputeUpdate(Grad(7), &u).ok());
  ASSERT_TRUE(Make("fp32", at50)->ComputeUpdate(Grad(7), &v).ok());
  EXPECT_NE(u, v);
  EXPECT_EQ(joined->SetScheduleStep(-1).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(WorkerOptimizer, RestoredStateContinuesBitForBit) {
  auto original = Make("sign", {});
  std::string u;
  for (int t = 0; t < 7; ++t)
    ASSERT_TRUE(original->ComputeUpdate(Grad(t), &u).ok());
  auto restored = Make("sign", {});
  ASSERT_TRUE(restored->RestoreState(original->state()).ok());
  EXPECT_EQ(restored->step(), 7);
  ExpectSameUpdates(*original, *restored, 5, 100);

  WorkerOptimizer::State bad = original->state();
  bad.m.pop_back();
  EXPECT_THAT(std::string(restored->RestoreState(bad).message()),
              ::testing::HasSubstr("m has"));
  bad = original->state();
  bad.e[3] = NAN;
  EXPECT_EQ(restored->RestoreState(bad).code(),
            absl::StatusCode::kInvalidArgument);
  bad = original->state();
  bad.beta1_power = 2;
  EXPECT_EQ(restored->RestoreState(bad).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(restored->step(), 12);  // unchanged by the refusals
}

TEST(WorkerOptimizer, ErrorFeedbackLosesNothingOverTime) {
  // sum_t q_t + e_T == sum_t d_t: what the codec did not send is still owed.
  auto sign = Make("sign", {});
  auto exact = Make("fp32", {});
  std::vector<double> sent(kN, 0.0), wanted(kN, 0.0);
  for (int t = 1; t <= 50; ++t) {
    std::vector<float> g = Grad(100 + t);
    std::string us, ue;
    ASSERT_TRUE(sign->ComputeUpdate(g, &us).ok());
    ASSERT_TRUE(exact->ComputeUpdate(g, &ue).ok());
    std::vector<float> q(kN, 0.0f);
    ASSERT_TRUE(Codec("sign")->DecodeAccumulate(us, 1, absl::MakeSpan(q)).ok());
    std::vector<float> d = Decode(ue);
    for (size_t i = 0; i < kN; ++i) {
      sent[i] += q[i];
      wanted[i] += d[i];
    }
  }
  for (size_t i = 0; i < kN; ++i) {
    ASSERT_NEAR(sent[i] + sign->error_memory()[i], wanted[i], 1e-5) << i;
  }
}

TEST(WorkerOptimizer, WithoutFeedbackTheErrorMemoryStaysZero) {
  auto w = Make("sign", {}, /*error_feedback=*/false);
  std::string u;
  ASSERT_TRUE(w->ComputeUpdate(Grad(1), &u).ok());
  for (float e : w->error_memory()) ASSERT_EQ(e, 0.0f);
}

TEST(WorkerOptimizer, AppliesTheServerDelta) {
  auto w = Make("sign", {});
  std::vector<float> q = Grad(7);
  std::string delta;
  ASSERT_TRUE(Codec("fp32")->EncodeWithFeedback(q, {}, 0, &delta).ok());
  ASSERT_TRUE(w->ApplyDelta(delta).ok());
  for (size_t i = 0; i < kN; ++i) ASSERT_EQ(w->params()[i], 0.5f - q[i]);
}

TEST(WorkerOptimizer, BadInputLeavesStateUnchanged) {
  auto w = Make("sign", {});
  std::vector<float> g = Grad(1);
  g[5] = NAN;
  std::string u;
  EXPECT_EQ(w->ComputeUpdate(g, &u).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w->ComputeUpdate(std::vector<float>(kN - 1), &u).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w->step(), 0);

  std::string delta;
  ASSERT_TRUE(Codec("fp32")->EncodeWithFeedback(Grad(2), {}, 0, &delta).ok());
  delta[8] = delta[9] = delta[10] = delta[11] = '\xff';  // NaN
  EXPECT_THAT(std::string(w->ApplyDelta(delta).message()),
              ::testing::HasSubstr("server delta"));
  EXPECT_EQ(w->ApplyDelta(delta.substr(1)).code(),
            absl::StatusCode::kInvalidArgument);
  for (float x : w->params()) ASSERT_EQ(x, 0.5f);
}

TEST(ValidateAdamOptions, NamesTheBadOption) {
  AdamOptions a;
  EXPECT_TRUE(ValidateAdamOptions(a).ok());
  a.beta1 = 1.0f;
  EXPECT_THAT(std::string(ValidateAdamOptions(a).message()),
              ::testing::HasSubstr("beta1"));
  a = {};
  a.lr = NAN;
  EXPECT_FALSE(ValidateAdamOptions(a).ok());
  a = {};
  a.theta = 0;
  EXPECT_FALSE(ValidateAdamOptions(a).ok());
}

}  // namespace
}  // namespace effadam
