#include "worker/training_flags.h"

#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

ABSL_FLAG(std::string, model, "mlp",
          "Built-in model: toy (convex, known optimum), logreg or mlp "
          "(784-[--mlp_hidden]-10, ReLU) on Fashion-MNIST");
ABSL_FLAG(std::vector<std::string>, mlp_hidden,
          std::vector<std::string>({"256", "128"}),
          "Hidden layer widths of --model=mlp, comma-separated, input side "
          "first: 256,128 (235k parameters); 2048,2048 is a wide MLP (5.8M) "
          "whose rounds are dominated by communication");
ABSL_FLAG(std::string, data_dir, "/usr/share/datasets/fashion-mnist",
          "Directory with the Fashion-MNIST IDX .gz files");
ABSL_FLAG(int32_t, batch_size, 64, "Mini-batch size per worker and round");
ABSL_FLAG(double, lr, 1e-3, "Adam learning rate");
ABSL_FLAG(double, beta1, 0.9, "Adam beta1");
ABSL_FLAG(double, beta2, 0.999, "Adam beta2 (with --beta2_schedule=constant)");
ABSL_FLAG(double, eps, 1e-8, "Adam epsilon");
ABSL_FLAG(std::string, lr_schedule, "constant",
          "constant (lr), inverse_sqrt (lr / sqrt(t)) or warmup_cosine "
          "(linear from 0 to lr over --warmup_rounds, then a half cosine "
          "down to 0 at --rounds)");
ABSL_FLAG(int64_t, warmup_rounds, 0,
          "Rounds of linear warm-up of --lr_schedule=warmup_cosine");
ABSL_FLAG(std::string, beta2_schedule, "constant",
          "constant (beta2) or theta (1 - theta / t)");
ABSL_FLAG(double, theta, 1.0, "theta of --beta2_schedule=theta, in (0, 1]");
ABSL_FLAG(bool, bias_correction, true, "Adam bias correction");
ABSL_FLAG(double, weight_decay, 0.0, "Decoupled weight decay (AdamW)");
ABSL_FLAG(uint64_t, seed, 1, "Seed of initialization, data order and "
          "stochastic rounding; same seed and flags give the same bits");
ABSL_FLAG(int64_t, rounds, 1000, "Training rounds");
ABSL_FLAG(int64_t, eval_every, 100,
          "Evaluate and print progress every this many rounds (0: at the "
          "end only)");
ABSL_FLAG(std::string, summary_json, "",
          "Write a JSON summary of the run to this path at the end");

namespace effadam {

absl::StatusOr<LrSchedule> ParseLrSchedule(absl::string_view name) {
  if (name == "constant") return LrSchedule::kConstant;
  if (name == "inverse_sqrt") return LrSchedule::kInverseSqrt;
  if (name == "warmup_cosine") return LrSchedule::kWarmupCosine;
  return absl::InvalidArgumentError(absl::StrCat(
      "--lr_schedule must be constant, inverse_sqrt or warmup_cosine, got '",
      name, "'"));
}

absl::StatusOr<Beta2Schedule> ParseBeta2Schedule(absl::string_view name) {
  if (name == "constant") return Beta2Schedule::kConstant;
  if (name == "theta") return Beta2Schedule::kOneMinusThetaOverT;
  return absl::InvalidArgumentError(absl::StrCat(
      "--beta2_schedule must be constant or theta, got '", name, "'"));
}

absl::StatusOr<TrainingConfig> TrainingConfigFromFlags() {
  TrainingConfig c;
  c.model.name = absl::GetFlag(FLAGS_model);
  c.model.data_dir = absl::GetFlag(FLAGS_data_dir);
  c.model.mlp_hidden.clear();
  const std::vector<std::string> hidden = absl::GetFlag(FLAGS_mlp_hidden);
  for (const std::string& w : hidden) {
    int width = 0;
    if (!absl::SimpleAtoi(w, &width) || width <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--mlp_hidden must be comma-separated positive widths, got '",
          absl::StrJoin(hidden, ","), "'"));
    }
    c.model.mlp_hidden.push_back(width);
  }
  if (c.model.mlp_hidden.empty()) {
    return absl::InvalidArgumentError(
        "--mlp_hidden needs at least one width (--model=logreg has none)");
  }
  c.model.batch_size = absl::GetFlag(FLAGS_batch_size);
  if (c.model.batch_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--batch_size must be > 0, got ", c.model.batch_size));
  }
  c.seed = absl::GetFlag(FLAGS_seed);
  c.model.seed = c.seed;

  AdamOptions& a = c.adam;
  a.lr = static_cast<float>(absl::GetFlag(FLAGS_lr));
  a.beta1 = static_cast<float>(absl::GetFlag(FLAGS_beta1));
  a.beta2 = static_cast<float>(absl::GetFlag(FLAGS_beta2));
  a.eps = static_cast<float>(absl::GetFlag(FLAGS_eps));
  a.theta = static_cast<float>(absl::GetFlag(FLAGS_theta));
  a.bias_correction = absl::GetFlag(FLAGS_bias_correction);
  a.weight_decay = static_cast<float>(absl::GetFlag(FLAGS_weight_decay));
  absl::StatusOr<LrSchedule> lr_schedule =
      ParseLrSchedule(absl::GetFlag(FLAGS_lr_schedule));
  if (!lr_schedule.ok()) return lr_schedule.status();
  a.lr_schedule = *lr_schedule;
  absl::StatusOr<Beta2Schedule> b2_schedule =
      ParseBeta2Schedule(absl::GetFlag(FLAGS_beta2_schedule));
  if (!b2_schedule.ok()) return b2_schedule.status();
  a.beta2_schedule = *b2_schedule;
  c.rounds = absl::GetFlag(FLAGS_rounds);
  if (c.rounds <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--rounds must be > 0, got ", c.rounds));
  }
  a.warmup_rounds = absl::GetFlag(FLAGS_warmup_rounds);
  a.schedule_rounds = c.rounds;
  if (a.lr_schedule == LrSchedule::kWarmupCosine &&
      !(a.warmup_rounds >= 0 && a.warmup_rounds <= c.rounds)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--warmup_rounds must be in [0, --rounds=", c.rounds, "], got ",
        a.warmup_rounds));
  }
  if (absl::Status s = ValidateAdamOptions(a); !s.ok()) return s;
  c.eval_every = absl::GetFlag(FLAGS_eval_every);
  if (c.eval_every < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--eval_every must be >= 0, got ", c.eval_every));
  }
  c.summary_json = absl::GetFlag(FLAGS_summary_json);
  return c;
}

}  // namespace effadam
