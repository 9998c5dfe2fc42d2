#ifndef EFFADAM_WORKER_WORKER_OPTIMIZER_H_
#define EFFADAM_WORKER_WORKER_OPTIMIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/update_codec.h"

namespace effadam {

enum class LrSchedule { kConstant, kInverseSqrt };          // lr, lr / sqrt(t)
enum class Beta2Schedule { kConstant, kOneMinusThetaOverT };  // b2, 1 - theta/t

struct AdamOptions {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  LrSchedule lr_schedule = LrSchedule::kConstant;
  Beta2Schedule beta2_schedule = Beta2Schedule::kConstant;
  float theta = 1.0f;  // for 1 - theta/t, in (0, 1]
  bool bias_correction = true;
  float weight_decay = 0.0f;  // decoupled (AdamW): adds lr_t * wd * x to d
};

// Checks ranges (lr > 0, 0 <= b1 < 1, 0 <= b2 < 1, eps > 0, 0 < theta <= 1,
// weight_decay >= 0); InvalidArgument names the bad option.
absl::Status ValidateAdamOptions(const AdamOptions& options);

// One worker's side of Efficient-Adam (docs/design.md, "The algorithm"): the replica of
// x, Adam's m and v, and the worker error memory e. Each step turns a
// gradient into d = lr_t * m_hat / (sqrt(v_hat) + eps), encodes p = d + e
// with the worker codec and keeps e = p - Q(p); the server's delta is then
// applied to the replica as x = x - q. Not thread-safe.
class WorkerOptimizer {
 public:
  struct Options {
    AdamOptions adam;
    bool error_feedback = true;  // worker-side
    uint64_t seed = 0;           // stochastic rounding (qNs only)
    int rank = 0;                // mixed into the seed
  };

  // Both codecs must describe x0.size() elements.
  static absl::StatusOr<std::unique_ptr<WorkerOptimizer>> Create(
      std::shared_ptr<const UpdateCodec> worker_codec,
      std::shared_ptr<const UpdateCodec> server_codec, std::vector<float> x0,
      const Options& options);

  // The replica of x; gradients are taken here.
  absl::Span<const float> params() const { return x_; }
  absl::Span<const float> error_memory() const { return e_; }
  // Adam steps taken so far.
  int64_t step() const { return t_; }

  // One Adam step on `grad` (the gradient at params()); writes the encoded
  // update for the server into *update. InvalidArgument for a gradient of
  // the wrong size or with NaN/Inf; the state is then unchanged.
  absl::Status ComputeUpdate(absl::Span<const float> grad, std::string* update);

  // x = x - q for the server's encoded delta. A delta that does not validate
  // is InvalidArgument and leaves the replica unchanged.
  absl::Status ApplyDelta(absl::string_view delta);

  // Replaces the replica, as when a lagging or restarted worker receives the
  // server's x.
  absl::Status ResetParams(absl::Span<const float> x);

 private:
  WorkerOptimizer() = default;

  std::shared_ptr<const UpdateCodec> worker_codec_;
  std::shared_ptr<const UpdateCodec> server_codec_;
  Options options_;
  int64_t t_ = 0;
  double beta1_power_ = 1.0;  // prod of b1 over steps, for bias correction
  double beta2_power_ = 1.0;  // prod of b2_t over steps
  std::vector<float> x_, m_, v_, e_, d_;
};

}  // namespace effadam

#endif  // EFFADAM_WORKER_WORKER_OPTIMIZER_H_
