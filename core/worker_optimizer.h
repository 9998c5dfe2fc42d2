#ifndef EFFADAM_CORE_WORKER_OPTIMIZER_H_
#define EFFADAM_CORE_WORKER_OPTIMIZER_H_

#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/thread_pool.h"
#include "core/update_codec.h"

namespace effadam {

// lr, lr / sqrt(t), and a linear warm-up over warmup_rounds followed by a
// cosine decay to 0 at schedule_rounds (ScheduledLr).
enum class LrSchedule { kConstant, kInverseSqrt, kWarmupCosine };
enum class Beta2Schedule { kConstant, kOneMinusThetaOverT };  // b2, 1 - theta/t
// Decoupled: d += lr_t * wd * x (torch.optim.AdamW, the flags' default).
// L2: g += wd * x before the moments (torch.optim.Adam's weight_decay).
enum class WeightDecayMode { kDecoupled, kL2 };

struct AdamOptions {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  LrSchedule lr_schedule = LrSchedule::kConstant;
  Beta2Schedule beta2_schedule = Beta2Schedule::kConstant;
  float theta = 1.0f;  // for 1 - theta/t, in (0, 1]
  bool bias_correction = true;
  float weight_decay = 0.0f;
  WeightDecayMode weight_decay_mode = WeightDecayMode::kDecoupled;
  // kWarmupCosine: lr rises linearly to lr over the first warmup_rounds
  // steps, then falls along a half cosine to 0 at step schedule_rounds
  // (the run's length) and stays there.
  int64_t warmup_rounds = 0;
  int64_t schedule_rounds = 0;
};

// Checks ranges (lr > 0, 0 <= b1 < 1, 0 <= b2 < 1, eps > 0, 0 < theta <= 1,
// weight_decay >= 0; for warmup_cosine 0 <= warmup_rounds <= schedule_rounds
// and schedule_rounds > 0); InvalidArgument names the bad option.
absl::Status ValidateAdamOptions(const AdamOptions& options);

// The learning rate of step t (from 1) under options.lr_schedule, with
// `base_lr` in place of options.lr.
float ScheduledLr(const AdamOptions& options, float base_lr, int64_t t);

// One worker's side of Efficient-Adam (docs/design.md, "The algorithm"): the
// replica of x, Adam's m and v, and the worker error memory e. Each step turns
// a gradient into d = lr_t * m_hat / (sqrt(v_hat) + eps), encodes p = d + e
// with the worker codec and keeps e = p - Q(p); the server's delta is then
// applied to the replica as x = x - q. A step runs in tiles of about 8192
// elements (whole blocks of the worker codec): Adam's update of m and v
// and d for one tile, into a per-thread scratch of a tile, then the
// encoding of d + e with feedback (Codec::EncodeRange) and the sum of
// squares of the new e while the tile is in cache, before the next tile.
// So m, v, e, x and the gradient are read from memory once (the gradient
// twice: its finiteness is checked before anything moves) and there is no
// model-sized d. The bits are those of one Eigen expression over all of x
// followed by EncodeSegment per segment (tests/worker_step_tiles_test.cc).
// Not thread-safe.
class WorkerOptimizer {
 public:
  struct Options {
    AdamOptions adam;
    bool error_feedback = true;  // worker-side
    uint64_t seed = 0;           // stochastic rounding (qNs only)
    int rank = 0;                // mixed into the seed
    // Threads a step and ApplyDelta run on, segment by segment; 1 runs
    // them on the calling thread alone. The results are the same bits for
    // every count.
    int threads = AvailableCores();
  };

  // Both codecs must describe x0.size() elements.
  static absl::StatusOr<std::unique_ptr<WorkerOptimizer>> Create(
      std::shared_ptr<const UpdateCodec> worker_codec,
      std::shared_ptr<const UpdateCodec> server_codec, std::vector<float> x0,
      const Options& options);

  // Everything a step depends on besides x, the options and the gradient:
  // what a worker checkpoints to resume with its moments and error memory.
  struct State {
    int64_t step = 0;
    double beta1_power = 1.0;
    double beta2_power = 1.0;
    std::vector<float> m, v, e;
  };

  // The replica of x; gradients are taken here.
  absl::Span<const float> params() const { return x_; }
  absl::Span<const float> error_memory() const { return e_; }
  // ||e||, the L2 norm of error_memory() as of the last finished step (or
  // Create, RestoreState): summed by the step as it writes e (SquareSum
  // over each part's elements in order, the parts' sums in part order, in
  // double), so it costs no pass of its own and is the same for any thread
  // count.
  double error_memory_norm() const { return std::sqrt(error_sum_squares_); }
  // Adam steps taken so far.
  int64_t step() const { return t_; }
  // The base learning rate the schedule scales (options.adam.lr at first).
  float lr() const { return lr_; }

  // The step the learning-rate schedule (options.adam.lr_schedule) reads
  // for the following steps, counted from 1: the round of the run, which a
  // worker that joined or restarted mid-run (its own step count starts
  // over with fresh m, v and e) must follow, not its own count. 0 (the
  // default): the optimizer's own step count. Bias correction and the
  // beta2 schedule always read the own count: they belong to m and v.
  // Equal counts give the same bits. InvalidArgument for a negative step.
  absl::Status SetScheduleStep(int64_t step);

  // Sets the base learning rate of the following steps: what a per-round
  // learning-rate schedule outside the library (a torch LR scheduler) does.
  // 0 is allowed (a warm-up's first step); NaN, Inf or a negative value is
  // InvalidArgument and changes nothing. With the same lr every step the
  // results are bit for bit those of a constant options.adam.lr.
  absl::Status SetLr(float lr);

  State state() const;
  // Replaces m, v, e, the step count and the bias-correction products; x is
  // the server's. InvalidArgument (nothing changed) for vectors of another
  // size, non-finite values, a negative step or products outside (0, 1].
  absl::Status RestoreState(State state);

  // One Adam step on `grad` (the gradient at params()); writes the encoded
  // update for the server into *update. InvalidArgument for a gradient of
  // the wrong size or with NaN/Inf; the state is then unchanged.
  absl::Status ComputeUpdate(absl::Span<const float> grad, std::string* update);

  // ComputeUpdate in parts, for a gradient that arrives range by range (a
  // PyTorch backward pass, WorkerClient::AddGradient): BeginUpdate, then
  // ComputeUpdateParts for parts whose gradient is in, each part once, in
  // any order, then FinishUpdate. m, v, e and the update's bytes are
  // ComputeUpdate's for the same gradient, bit for bit: the parts are the
  // units ComputeUpdate runs. Part k is elements [begin, end) of x and bytes
  // [byte_begin, byte_end) of the update, in order and covering both.
  struct UpdatePart {
    size_t begin, end;
    size_t byte_begin, byte_end;
  };
  size_t num_update_parts() const { return tasks_.size(); }
  UpdatePart update_part(size_t k) const;
  // Sizes *update (which must outlive the step) and fixes the step's
  // constants; a step already begun is FailedPrecondition.
  absl::Status BeginUpdate(std::string* update);
  // Runs `parts` (on the pool) with `grad`, the whole gradient vector of
  // which only these parts' elements are read. InvalidArgument (a part
  // done already or out of range, NaN/Inf in a part's gradient) changes
  // nothing.
  absl::Status ComputeUpdateParts(absl::Span<const size_t> parts,
                                  absl::Span<const float> grad);
  // After every part: the step counts (step() + 1). FailedPrecondition
  // while a part is missing.
  absl::Status FinishUpdate();

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
  int64_t schedule_step_ = 0;  // 0: t_ + 1
  float lr_ = 0.0f;
  double beta1_power_ = 1.0;  // prod of b1 over steps, for bias correction
  double beta2_power_ = 1.0;  // prod of b2_t over steps
  std::vector<float> x_, m_, v_, e_;
  double error_sum_squares_ = 0;  // of e_ (error_memory_norm)
  std::unique_ptr<ThreadPool> pool_;
  // The units of a step's parallel loop: elements [begin, end) of x, which
  // are segments [first_segment, end_segment) of the worker codec.
  struct Task {
    size_t begin, end;
    size_t first_segment, end_segment;
  };
  std::vector<Task> tasks_;

  // What a step fixes before its first part (BeginUpdate) and what it has
  // done; engaged between BeginUpdate and FinishUpdate.
  struct Pending {
    int64_t t;
    float b1, b2, lr, step, inv_sqrt_bc2;
    double beta1_power, beta2_power;
    uint64_t seed;
    uint8_t* out;
    std::vector<bool> done;
    size_t left;
    // Sum of squares of e over each part, as the parts ran; not exact once
    // a part failed half-way.
    std::vector<double> error_squares;
    bool squares_exact;
  };
  std::optional<Pending> pending_;
  // Task k of the pending step on `grad` (not checked), tile by tile;
  // *error_squares gets the sum of squares of the part's new e.
  absl::Status RunPart(size_t k, absl::Span<const float> grad,
                       double* error_squares);
  // InvalidArgument naming the elements unless the gradient of tasks
  // part(0), ..., part(count - 1) is finite (on the pool).
  absl::Status CheckGradient(absl::Span<const float> grad, size_t count,
                             const std::function<size_t(size_t)>& part) const;
  // Of e_, in one pass.
  double ErrorSumSquares() const;
};

}  // namespace effadam

#endif  // EFFADAM_CORE_WORKER_OPTIMIZER_H_
