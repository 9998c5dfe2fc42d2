#include "core/worker_optimizer.h"

#include <Eigen/Core>
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/codec.h"
#include "core/square_sum.h"

namespace effadam {
namespace {

// Eigen's packet sqrt (EIGEN_FAST_MATH, its default) may differ in the
// last bit from its scalar sqrt, so each element must take the path it
// takes in one Eigen expression over all of x, as a step always computed
// it: packets of kPacket elements from x's start (16-byte aligned), scalars
// for the last n % kPacket.
using Packet = Eigen::internal::packet_traits<float>::type;
constexpr size_t kPacket = Eigen::internal::packet_traits<float>::size;

// Elements per tile of a step: the tile's m, v, e, x, gradient and d
// (6 x 32 KiB) stay in a core's L2 cache from Adam's update to the
// encoding.
constexpr size_t kTileElements = 8192;

using ConstArrayMap = Eigen::Map<const Eigen::ArrayXf>;

// The constants of one Adam step (WorkerOptimizer::BeginUpdate).
struct AdamStep {
  float b1, b2, step, inv_sqrt_bc2, eps;
  float l2_decay;  // g + l2_decay * x before the moments, or 0 (none)
  // d + decoupled_decay * x (lr * wd) when `decoupled`, even if lr * wd is
  // 0: -0 + 0 * x is +0, so a zero lr must not skip the add.
  float decoupled_decay;
  bool decoupled;
};

// Adam for n elements in one pass: m and v in place and d = step * m /
// (sqrt(v) * inv_sqrt_bc2 + eps) (+ the decay), the first n / kPacket *
// kPacket elements with Eigen's packet operations and the rest with its
// scalar ones, each operation the one Eigen evaluates for the
// expressions
//   g' = g + l2_decay * x
//   m = b1 * m + (1 - b1) * g';  v = b2 * v + (1 - b2) * g'.square()
//   d = step * m / (v.sqrt() * inv_sqrt_bc2 + eps) + decoupled_decay * x
// over an array whose first element is a multiple of kPacket from x's
// start: so the bits of those expressions over all of x (the reference of
// tests/worker_step_tiles_test.cc), with all of m, v, g and x read once.
// `e` (null: none) is the error memory the encoding reads next: its cache
// lines are fetched meanwhile, so that its reads from memory overlap
// these instead of following them.
void AdamPass(const AdamStep& k, const float* g, const float* x, float* m,
              float* v, float* d, const float* e, size_t n) {
  namespace ei = Eigen::internal;
  const float one_minus_b1 = 1.0f - k.b1, one_minus_b2 = 1.0f - k.b2;
  const bool l2 = k.l2_decay > 0, decoupled = k.decoupled;
  const size_t packets = n / kPacket * kPacket;
  const Packet b1 = ei::pset1<Packet>(k.b1), b2 = ei::pset1<Packet>(k.b2);
  const Packet c1 = ei::pset1<Packet>(one_minus_b1),
               c2 = ei::pset1<Packet>(one_minus_b2);
  const Packet step = ei::pset1<Packet>(k.step),
               inv_sqrt_bc2 = ei::pset1<Packet>(k.inv_sqrt_bc2),
               eps = ei::pset1<Packet>(k.eps);
  const Packet l2_decay = ei::pset1<Packet>(k.l2_decay),
               decoupled_decay = ei::pset1<Packet>(k.decoupled_decay);
  constexpr size_t kLine = 64 / sizeof(float);
  for (size_t j = 0; j < packets; j += kPacket) {
    if (e != nullptr && j % kLine == 0) __builtin_prefetch(e + j, 1);
    Packet gj = ei::ploadu<Packet>(g + j);
    if (l2) gj = ei::padd(gj, ei::pmul(l2_decay, ei::ploadu<Packet>(x + j)));
    const Packet mj =
        ei::padd(ei::pmul(b1, ei::ploadu<Packet>(m + j)), ei::pmul(c1, gj));
    const Packet vj = ei::padd(ei::pmul(b2, ei::ploadu<Packet>(v + j)),
                               ei::pmul(c2, ei::pmul(gj, gj)));
    Packet dj = ei::pdiv(ei::pmul(step, mj),
                         ei::padd(ei::pmul(ei::psqrt(vj), inv_sqrt_bc2), eps));
    if (decoupled) {
      dj = ei::padd(dj, ei::pmul(decoupled_decay, ei::ploadu<Packet>(x + j)));
    }
    ei::pstoreu(m + j, mj);
    ei::pstoreu(v + j, vj);
    ei::pstoreu(d + j, dj);
  }
  for (size_t j = packets; j < n; ++j) {
    const float gj = l2 ? g[j] + k.l2_decay * x[j] : g[j];
    m[j] = k.b1 * m[j] + one_minus_b1 * gj;
    v[j] = k.b2 * v[j] + one_minus_b2 * (gj * gj);
    d[j] =
        (k.step * m[j]) / (Eigen::numext::sqrt(v[j]) * k.inv_sqrt_bc2 + k.eps);
    if (decoupled) d[j] = d[j] + k.decoupled_decay * x[j];
  }
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
  w->pool_ = std::make_unique<ThreadPool>(options.threads);
  // So that each element takes Eigen's packet or scalar path as in one
  // expression over all of x (kPacket), a task starts at a segment whose
  // first element is a multiple of kPacket and ends where the next such
  // segment starts (or at the end).
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
  // A pass of its own before the step: a NaN found in the step's own pass
  // would come after m, v and e of the elements before it had moved.
  if (absl::Status s =
          CheckGradient(grad, tasks_.size(), [](size_t k) { return k; });
      !s.ok()) {
    return s;
  }
  if (absl::Status s = BeginUpdate(update); !s.ok()) return s;
  // Tasks cover x, so this is the whole step; each element's arithmetic
  // is the same whichever task or thread computes it.
  absl::Status s = ForEachSegment(tasks_.size(), pool_.get(), [&](size_t k) {
    return RunPart(k, grad, &pending_->error_squares[k]);
  });
  if (!s.ok()) {
    // Some parts' e moved; the norm is summed anew.
    pending_.reset();
    error_sum_squares_ = ErrorSumSquares();
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
  p.error_squares.assign(tasks_.size(), 0.0);
  p.squares_exact = true;
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
  if (absl::Status s =
          CheckGradient(grad, parts.size(), [&](size_t i) { return parts[i]; });
      !s.ok()) {
    return s;
  }
  absl::Status s = ForEachSegment(parts.size(), pool_.get(), [&](size_t i) {
    return RunPart(parts[i], grad, &pending_->error_squares[parts[i]]);
  });
  // Encoding fails only on an internal inconsistency; the parts ran are
  // marked anyway, as their m, v and e have moved (and e's norm is summed
  // anew when the step finishes).
  for (size_t k : parts) pending_->done[k] = true;
  pending_->left -= parts.size();
  if (!s.ok()) pending_->squares_exact = false;
  return s;
}

absl::Status WorkerOptimizer::CheckGradient(
    absl::Span<const float> grad, size_t count,
    const std::function<size_t(size_t)>& part) const {
  return ForEachSegment(count, pool_.get(), [&](size_t i) {
    const Task& task = tasks_[part(i)];
    if (AllFinite(grad.subspan(task.begin, task.end - task.begin))) {
      return absl::OkStatus();
    }
    return absl::InvalidArgumentError(
        absl::StrCat("gradient holds NaN or Inf in elements [", task.begin,
                     ", ", task.end, ")"));
  });
}

double WorkerOptimizer::ErrorSumSquares() const {
  SquareSum squares;
  squares.Add(e_.data(), e_.size());
  return squares.Total();
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
  if (!options_.error_feedback) {
    // e was not touched.
  } else if (pending_->squares_exact) {
    // Parts in order: the same bits for any thread count or part order.
    error_sum_squares_ = 0;
    for (double part : pending_->error_squares) error_sum_squares_ += part;
  } else {
    error_sum_squares_ = ErrorSumSquares();
  }
  pending_.reset();
  return absl::OkStatus();
}

absl::Status WorkerOptimizer::RunPart(size_t k, absl::Span<const float> grad,
                                      double* error_squares) {
  const Pending& p = *pending_;
  const AdamOptions& o = options_.adam;
  AdamStep adam{p.b1, p.b2, p.step, p.inv_sqrt_bc2, o.eps, 0.0f, 0.0f, false};
  if (o.weight_decay > 0) {
    if (o.weight_decay_mode == WeightDecayMode::kL2) {
      adam.l2_decay = o.weight_decay;  // torch.optim.Adam
    } else {
      adam.decoupled_decay = p.lr * o.weight_decay;  // torch.optim.AdamW
      adam.decoupled = true;
    }
  }
  const bool feedback = options_.error_feedback;
  const Task& task = tasks_[k];
  const std::vector<Segment>& segments = worker_codec_->segments();
  const size_t block = segments[task.first_segment].codec->block_size();
  const size_t tile = TileOfWholeBlocks(block, kTileElements);
  // d of the elements [base, computed) that are not encoded yet; per
  // thread, since parts run concurrently: at most a tile and the
  // unfinished block of a segment before it.
  thread_local std::vector<float> scratch;
  if (scratch.size() < tile + block) scratch.resize(tile + block);
  SquareSum squares;
  size_t base = task.begin;     // scratch[0] is d of element base
  size_t encoded = task.begin;  // elements before it are encoded
  size_t segment = task.first_segment;
  for (size_t a = task.begin; a < task.end;) {
    // Adam for [a, b): a is a multiple of the tile (so of kPacket) from the
    // task's start (itself one from x's start) and b is too, or the task's
    // end, so each element takes Eigen's packet or scalar path as in one
    // expression over all of x.
    const size_t b = std::min(a + tile, task.end);
    AdamPass(adam, grad.data() + a, x_.data() + a, m_.data() + a, v_.data() + a,
             scratch.data() + (a - base), feedback ? e_.data() + a : nullptr,
             b - a);
    // Encode, with feedback, the whole blocks of d + e that are in, while
    // they are in cache: a segment's blocks in order from its start (the
    // bytes EncodeSegment writes), up to its end.
    for (; segment < task.end_segment; ++segment) {
      const Segment& s = segments[segment];
      const size_t end = s.begin + s.size <= b
                             ? s.begin + s.size
                             : s.begin + (b - s.begin) / block * block;
      if (end <= encoded) break;  // not one whole block of it is in
      const size_t n = end - encoded;
      absl::Span<float> e;
      if (feedback) e = absl::MakeSpan(e_.data() + encoded, n);
      absl::Status st = worker_codec_->EncodeSegmentRange(
          segment, encoded - s.begin,
          absl::MakeConstSpan(scratch.data() + (encoded - base), n), e, e,
          p.seed, p.out);
      if (!st.ok()) return st;
      // While this range of e is in cache (error_memory_norm).
      if (feedback) squares.Add(e.data(), n);
      encoded = end;
      if (end < s.begin + s.size) break;  // its next block is not in
    }
    a = b;
    // Keep d of what is not encoded (less than a block) at the scratch's
    // start.
    std::copy(scratch.begin() + (encoded - base), scratch.begin() + (a - base),
              scratch.begin());
    base = encoded;
  }
  *error_squares = squares.Total();
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
  error_sum_squares_ = ErrorSumSquares();
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
