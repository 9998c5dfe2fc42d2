#include "daemon/training_flags.h"

#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace {
// The flags' defaults are the structs', so there is one set.
const effadam::TrainingConfig kDefaults;

// A float default as the double a user would type (0.001, not
// 0.0010000000474974513), so --help reads well; it converts back to the
// same float.
double Typed(float value) {
  double d = 0;
  (void)absl::SimpleAtod(absl::StrCat(value), &d);
  return d;
}

std::vector<std::string> Widths(const std::vector<int>& widths) {
  std::vector<std::string> out;
  for (int w : widths) out.push_back(absl::StrCat(w));
  return out;
}
}  // namespace

ABSL_FLAG(std::string, model, kDefaults.model.name,
          "Built-in model: toy (convex, known optimum), logreg or mlp "
          "(784-[--mlp_hidden]-10, ReLU) on Fashion-MNIST");
ABSL_FLAG(std::vector<std::string>, mlp_hidden,
          Widths(kDefaults.model.mlp_hidden),
          "Hidden layer widths of --model=mlp, comma-separated, input side "
          "first: 256,128 (235k parameters); 2048,2048 is a wide MLP (5.8M) "
          "whose rounds are dominated by communication");
ABSL_FLAG(std::string, data_dir, kDefaults.model.data_dir,
          "Directory with the Fashion-MNIST IDX .gz files");
ABSL_FLAG(int32_t, batch_size, kDefaults.model.batch_size,
          "Mini-batch size per worker and round");
ABSL_FLAG(double, lr, Typed(kDefaults.adam.lr), "Adam learning rate");
ABSL_FLAG(double, beta1, Typed(kDefaults.adam.beta1), "Adam beta1");
ABSL_FLAG(double, beta2, Typed(kDefaults.adam.beta2),
          "Adam beta2 (with --beta2_schedule=constant)");
ABSL_FLAG(double, eps, Typed(kDefaults.adam.eps), "Adam epsilon");
ABSL_FLAG(std::string, lr_schedule,
          effadam::LrScheduleName(kDefaults.adam.lr_schedule),
          "constant (lr), inverse_sqrt (lr / sqrt(t)) or warmup_cosine "
          "(linear from 0 to lr over --warmup_rounds, then a half cosine "
          "down to 0 at --rounds)");
ABSL_FLAG(int64_t, warmup_rounds, kDefaults.adam.warmup_rounds,
          "Rounds of linear warm-up of --lr_schedule=warmup_cosine");
ABSL_FLAG(std::string, beta2_schedule,
          effadam::Beta2ScheduleName(kDefaults.adam.beta2_schedule),
          "constant (beta2) or theta (1 - theta / t)");
ABSL_FLAG(double, theta, Typed(kDefaults.adam.theta),
          "theta of --beta2_schedule=theta, in (0, 1]");
ABSL_FLAG(bool, bias_correction, kDefaults.adam.bias_correction,
          "Adam bias correction");
ABSL_FLAG(double, weight_decay, Typed(kDefaults.adam.weight_decay),
          "Decoupled weight decay (AdamW)");
ABSL_FLAG(uint64_t, seed, kDefaults.seed,
          "Seed of initialization, data order and "
          "stochastic rounding; same seed and flags give the same bits");
ABSL_FLAG(int64_t, rounds, kDefaults.rounds, "Training rounds");
ABSL_FLAG(int64_t, eval_every, kDefaults.eval_every,
          "Evaluate and print progress every this many rounds (0: at the "
          "end only)");
ABSL_FLAG(std::string, summary_json, "",
          "Write a JSON summary of the run to this path at the end");

namespace effadam {

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
    return absl::InvalidArgumentError(
        absl::StrCat("--batch_size must be > 0, got ", c.model.batch_size));
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
    return absl::InvalidArgumentError(
        absl::StrCat("--warmup_rounds must be in [0, --rounds=", c.rounds,
                     "], got ", a.warmup_rounds));
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
