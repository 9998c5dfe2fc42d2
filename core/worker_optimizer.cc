#include "core/worker_optimizer.h"

#include <Eigen/Core>
#include <cfloat>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"

namespace effadam {
namespace {

using ArrayMap = Eigen::Map<Eigen::ArrayXf>;
using ConstArrayMap = Eigen::Map<const Eigen::ArrayXf>;

// Elements [begin, begin + size) of v as an array.
ArrayMap Arr(std::vector<float>& v, size_t begin, size_t size) {
  return ArrayMap(v.data() + begin, static_cast<Eigen::Index>(size));
}
ConstArrayMap Arr(absl::Span<const float> v, size_t begin, size_t size) {
  return ConstArrayMap(v.data() + begin, static_cast<Eigen::Index>(size));
}

}  // namespace

absl::Status ValidateAdamOptions(const AdamOptions& o) {
  auto bad = [](absl::string_view what, float v) {
    return absl::InvalidArgumentError(
        absl::StrCat("adam option ", what, " out of range: ", v));
  };
  if (!(o.lr > 0 && o.lr < FLT_MAX)) return bad("lr (> 0)", o.lr);
  if (!(o.beta1 >= 0 && o.beta1 < 1)) return bad("beta1 ([0, 1))", o.beta1);
  if (!(o.beta2 >= 0 && o.beta2 < 1)) return bad("beta2 ([0, 1))", o.beta2);
  if (!(o.eps > 0 && o.eps < FLT_MAX)) return bad("eps (> 0)", o.eps);
  if (!(o.theta > 0 && o.theta <= 1)) return bad("theta ((0, 1])", o.theta);
  if (!(o.weight_decay >= 0 && o.weight_decay < FLT_MAX))
    return bad("weight_decay (>= 0)", o.weight_decay);
  if (o.lr_schedule == LrSchedule::kWarmupCosine &&
      !(o.schedule_rounds > 0 && o.warmup_rounds >= 0 &&
        o.warmup_rounds <= o.schedule_rounds)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "adam option warmup_rounds out of range: the warmup_cosine schedule "
        "needs 0 <= warmup_rounds <= rounds and rounds > 0, got "
        "warmup_rounds ",
        o.warmup_rounds, " of ", o.schedule_rounds, " rounds"));
  }
  return absl::OkStatus();
}

float ScheduledLr(const AdamOptions& o, float base_lr, int64_t t) {
  switch (o.lr_schedule) {
    case LrSchedule::kConstant:
      return base_lr;
    case LrSchedule::kInverseSqrt:
      return base_lr / std::sqrt(static_cast<float>(t));
    case LrSchedule::kWarmupCosine: {
      if (t <= o.warmup_rounds) {
        return static_cast<float>(static_cast<double>(base_lr) * t /
                                  o.warmup_rounds);
      }
      if (t >= o.schedule_rounds) return 0.0f;
      const double progress =
          static_cast<double>(t - o.warmup_rounds) /
          static_cast<double>(o.schedule_rounds - o.warmup_rounds);
      return static_cast<float>(0.5 * base_lr *
                                (1.0 + std::cos(M_PI * progress)));
    }
  }
  return base_lr;
}

absl::StatusOr<std::unique_ptr<WorkerOptimizer>> WorkerOptimizer::Create(
    std::shared_ptr<const UpdateCodec> worker_codec,
    std::shared_ptr<const UpdateCodec> server_codec, std::vector<float> x0,
    const Options& options) {
  if (absl::Status s = ValidateAdamOptions(options.adam); !s.ok()) return s;
  if (!worker_codec || !server_codec ||
      worker_codec->num_elements() != x0.size() ||
      server_codec->num_elements() != x0.size()) {
    return absl::InvalidArgumentError(
        "worker optimizer: codecs and initial parameters disagree on the size");
  }
  std::unique_ptr<WorkerOptimizer> w(new WorkerOptimizer);
  w->worker_codec_ = std::move(worker_codec);
  w->server_codec_ = std::move(server_codec);
  w->options_ = options;
  w->lr_ = options.adam.lr;
  const size_t n = x0.size();
  w->x_ = std::move(x0);
  w->m_.assign(n, 0.0f);
  w->v_.assign(n, 0.0f);
  w->e_.assign(n, 0.0f);
  w->d_.assign(n, 0.0f);
  w->pool_ = std::make_unique<ThreadPool>(options.threads);
  // Eigen's packet sqrt (EIGEN_FAST_MATH, its default) may differ in the
  // last bit from its scalar sqrt, so each element must take the path it
  // takes in one expression over all of x (packets of kPacket elements
  // from the 16-byte aligned start, scalars for the last n % kPacket): a
  // task starts at a segment whose first element is a multiple of kPacket
  // and ends where the next such segment starts (or at the end).
  constexpr size_t kPacket = 4;
  const std::vector<Segment>& segments = w->worker_codec_->segments();
  for (size_t i = 0; i < segments.size(); ++i) {
    if (i == 0 || segments[i].begin % kPacket == 0) {
      w->tasks_.push_back(Task{segments[i].begin, 0, i, 0});
    }
    w->tasks_.back().end = segments[i].begin + segments[i].size;
    w->tasks_.back().end_segment = i + 1;
  }
  return w;
}

absl::Status WorkerOptimizer::ComputeUpdate(absl::Span<const float> grad,
                                            std::string* update) {
  if (grad.size() != x_.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gradient has ", grad.size(), " elements, the model has ", x_.size()));
  }
  const std::vector<Segment>& segments = worker_codec_->segments();
  absl::Status finite =
      ForEachSegment(segments.size(), pool_.get(), [&](size_t i) {
        if (Arr(grad, segments[i].begin, segments[i].size).isFinite().all()) {
          return absl::OkStatus();
        }
        return absl::InvalidArgumentError("gradient holds NaN or Inf");
      });
  if (!finite.ok()) return finite;
  if (absl::Status s = BeginUpdate(update); !s.ok()) return s;
  // Segments cover x, so this is the whole step; each element's arithmetic
  // is the same whichever segment or thread computes it.
  absl::Status s = ForEachSegment(tasks_.size(), pool_.get(),
                                  [&](size_t k) { return RunPart(k, grad); });
  if (!s.ok()) {
    pending_.reset();
    return s;
  }
  for (size_t k = 0; k < tasks_.size(); ++k) pending_->done[k] = true;
  pending_->left = 0;
  return FinishUpdate();
}

WorkerOptimizer::UpdatePart WorkerOptimizer::update_part(size_t k) const {
  const Task& task = tasks_[k];
  const std::vector<Segment>& segments = worker_codec_->segments();
  const Segment& last = segments[task.end_segment - 1];
  return UpdatePart{task.begin, task.end,
                    segments[task.first_segment].byte_begin,
                    last.byte_begin + last.byte_size};
}

absl::Status WorkerOptimizer::BeginUpdate(std::string* update) {
  if (pending_.has_value()) {
    return absl::FailedPreconditionError(
        "BeginUpdate: the previous step is not finished");
  }
  const AdamOptions& o = options_.adam;
  Pending p;
  p.t = t_ + 1;
  p.b1 = o.beta1;
  p.b2 = o.beta2_schedule == Beta2Schedule::kConstant
             ? o.beta2
             : 1.0f - o.theta / static_cast<float>(p.t);
  p.lr = ScheduledLr(o, lr_, schedule_step_ > 0 ? schedule_step_ : p.t);
  p.beta1_power = beta1_power_ * p.b1;
  p.beta2_power = beta2_power_ * p.b2;
  // PyTorch's form: d = (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps).
  p.step = p.lr;
  p.inv_sqrt_bc2 = 1.0f;
  if (o.bias_correction) {
    p.step = static_cast<float>(p.lr / (1.0 - p.beta1_power));
    p.inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(1.0 - p.beta2_power));
  }
  p.seed = options_.seed ^
           (0x9e3779b97f4a7c15ULL * static_cast<uint64_t>(p.t)) ^
           (0xc2b2ae3d27d4eb4fULL * static_cast<uint64_t>(options_.rank + 1));
  update->resize(worker_codec_->encoded_size());
  p.out = reinterpret_cast<uint8_t*>(update->data());
  p.done.assign(tasks_.size(), false);
  p.left = tasks_.size();
  pending_ = std::move(p);
  return absl::OkStatus();
}

absl::Status WorkerOptimizer::ComputeUpdateParts(absl::Span<const size_t> parts,
                                                 absl::Span<const float> grad) {
  if (!pending_.has_value()) {
    return absl::FailedPreconditionError(
        "ComputeUpdateParts: call BeginUpdate first");
  }
  if (grad.size() != x_.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gradient has ", grad.size(), " elements, the model has ", x_.size()));
  }
  std::vector<bool> asked(tasks_.size(), false);
  for (size_t k : parts) {
    if (k >= tasks_.size() || pending_->done[k] || asked[k]) {
      return absl::InvalidArgumentError(
          absl::StrCat("update part ", k, " of ", tasks_.size(),
                       " is out of range or computed already in this step"));
    }
    asked[k] = true;
  }
  absl::Status finite =
      ForEachSegment(parts.size(), pool_.get(), [&](size_t i) {
        const Task& task = tasks_[parts[i]];
        if (Arr(grad, task.begin, task.end - task.begin).isFinite().all()) {
          return absl::OkStatus();
        }
        return absl::InvalidArgumentError(
            absl::StrCat("gradient holds NaN or Inf in elements [", task.begin,
                         ", ", task.end, ")"));
      });
  if (!finite.ok()) return finite;
  absl::Status s = ForEachSegment(parts.size(), pool_.get(), [&](size_t i) {
    return RunPart(parts[i], grad);
  });
  // Encoding fails only on an internal inconsistency; the parts ran are
  // marked anyway, as their m, v and e have moved.
  for (size_t k : parts) pending_->done[k] = true;
  pending_->left -= parts.size();
  return s;
}

absl::Status WorkerOptimizer::FinishUpdate() {
  if (!pending_.has_value() || pending_->left != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "FinishUpdate: ", pending_.has_value() ? pending_->left : tasks_.size(),
        " update parts not computed"));
  }
  t_ = pending_->t;
  beta1_power_ = pending_->beta1_power;
  beta2_power_ = pending_->beta2_power;
  pending_.reset();
  return absl::OkStatus();
}

absl::Status WorkerOptimizer::RunPart(size_t k, absl::Span<const float> grad) {
  const Pending& p = *pending_;
  const AdamOptions& o = options_.adam;
  const float b1 = p.b1, b2 = p.b2, step = p.step,
              inv_sqrt_bc2 = p.inv_sqrt_bc2, lr = p.lr;
  absl::Span<float> e =
      options_.error_feedback ? absl::MakeSpan(e_) : absl::Span<float>();
  const Task& task = tasks_[k];
  const size_t begin = task.begin, size = task.end - task.begin;
  const ConstArrayMap g = Arr(grad, begin, size);
  auto m = Arr(m_, begin, size), v = Arr(v_, begin, size),
       d = Arr(d_, begin, size), x = Arr(x_, begin, size);
  if (o.weight_decay > 0 && o.weight_decay_mode == WeightDecayMode::kL2) {
    // torch.optim.Adam: g + wd * x, in d_ (overwritten below) so that the
    // caller's gradient stays as it is.
    d = g + o.weight_decay * x;
    m = b1 * m + (1.0f - b1) * d;
    v = b2 * v + (1.0f - b2) * d.square();
  } else {
    m = b1 * m + (1.0f - b1) * g;
    v = b2 * v + (1.0f - b2) * g.square();
  }
  d = step * m / (v.sqrt() * inv_sqrt_bc2 + o.eps);
  if (o.weight_decay > 0 &&
      o.weight_decay_mode == WeightDecayMode::kDecoupled) {
    d += (lr * o.weight_decay) * x;
  }
  for (size_t i = task.first_segment; i < task.end_segment; ++i) {
    if (absl::Status st = worker_codec_->EncodeSegment(i, d_, e, p.seed, p.out);
        !st.ok()) {
      return st;
    }
  }
  return absl::OkStatus();
}

absl::Status WorkerOptimizer::SetScheduleStep(int64_t step) {
  if (step < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("schedule step ", step, " is negative"));
  }
  schedule_step_ = step;
  return absl::OkStatus();
}

absl::Status WorkerOptimizer::SetLr(float lr) {
  if (!(lr >= 0 && lr < FLT_MAX)) {
    return absl::InvalidArgumentError(
        absl::StrCat("learning rate must be finite and >= 0, got ", lr));
  }
  lr_ = lr;
  return absl::OkStatus();
}

WorkerOptimizer::State WorkerOptimizer::state() const {
  State s;
  s.step = t_;
  s.beta1_power = beta1_power_;
  s.beta2_power = beta2_power_;
  s.m = m_;
  s.v = v_;
  s.e = e_;
  return s;
}

absl::Status WorkerOptimizer::RestoreState(State s) {
  const size_t n = x_.size();
  for (const auto& [name, vec] :
       {std::pair<const char*, const std::vector<float>*>{"m", &s.m},
        {"v", &s.v},
        {"e", &s.e}}) {
    if (vec->size() != n) {
      return absl::InvalidArgumentError(
          absl::StrCat("optimizer state: ", name, " has ", vec->size(),
                       " elements, the model has ", n));
    }
    const ConstArrayMap a(vec->data(), static_cast<Eigen::Index>(n));
    if (!a.isFinite().all()) {
      return absl::InvalidArgumentError(
          absl::StrCat("optimizer state: ", name, " holds NaN or Inf"));
    }
  }
  if (!(ConstArrayMap(s.v.data(), static_cast<Eigen::Index>(n)) >= 0).all()) {
    return absl::InvalidArgumentError(
        "optimizer state: v (the second moment) holds a negative value");
  }
  if (s.step < 0 || !(s.beta1_power >= 0 && s.beta1_power <= 1) ||
      !(s.beta2_power >= 0 && s.beta2_power <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "optimizer state: step ", s.step, " and bias-correction products ",
        s.beta1_power, ", ", s.beta2_power, " must be >= 0 and in [0, 1]"));
  }
  t_ = s.step;
  beta1_power_ = s.beta1_power;
  beta2_power_ = s.beta2_power;
  m_ = std::move(s.m);
  v_ = std::move(s.v);
  e_ = std::move(s.e);
  return absl::OkStatus();
}

absl::Status WorkerOptimizer::ApplyDelta(absl::string_view delta) {
  if (absl::Status s = server_codec_->Validate(delta, pool_.get()); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("server delta: ", s.message()));
  }
  return server_codec_->DecodeAccumulate(delta, -1.0f, absl::MakeSpan(x_),
                                         pool_.get());
}

absl::Status WorkerOptimizer::ResetParams(absl::Span<const float> x) {
  if (x.size() != x_.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parameters have ", x.size(), " elements, the model has ", x_.size()));
  }
  x_.assign(x.begin(), x.end());
  return absl::OkStatus();
}

}  // namespace effadam
