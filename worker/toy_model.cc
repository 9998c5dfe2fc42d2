#include "worker/toy_model.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace effadam {
namespace {

// Salts keep the streams drawn from one user seed independent.
constexpr uint64_t kProblemSalt = 0x746f792d70726f62;  // "toy-prob"
constexpr uint64_t kOffsetSalt = 0x746f792d6f666673;   // "toy-offs"
constexpr uint64_t kNoiseSalt = 0x746f792d6e6f6973;    // "toy-nois"

// SplitMix64's finaliser: turns (seed, salt, index) into well-spread seeds.
uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t StreamSeed(uint64_t seed, uint64_t salt, uint64_t index) {
  return Mix(Mix(seed ^ salt) ^ index);
}

// Uniform in (0, 1] with 53 random bits; never 0, so log() is finite.
double UniformOpenZero(std::mt19937_64& rng) {
  return static_cast<double>((rng() >> 11) + 1) * 0x1.0p-53;
}

// Offsets u_kj of worker k: multiples of 1/128 in [-1, 1).
std::vector<double> WorkerOffsets(uint64_t seed, int worker, size_t n) {
  std::mt19937_64 rng(StreamSeed(seed, kOffsetSalt, worker));
  std::vector<double> u(n);
  for (double& v : u) {
    v = (static_cast<double>(rng() >> 56) - 128.0) / 128.0;
  }
  return u;
}

void CheckSizes(const TensorLayout& layout, size_t params, size_t grad) {
  if (params != layout.num_elements() || grad != layout.num_elements()) {
    // A caller handing spans of the wrong size is a bug, not bad input.
    std::fprintf(stderr,
                 "ToyModel: params has %zu and grad %zu elements, the "
                 "layout %zu\n",
                 params, grad, layout.num_elements());
    std::abort();
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<ToyModel>> ToyModel::Create(
    const ModelConfig& config, ToyOptions options) {
  if (absl::Status s = ValidateModelConfig(config); !s.ok()) return s;
  if (!(options.noise_stddev >= 0) || !std::isfinite(options.noise_stddev) ||
      !(options.heterogeneity >= 0) || !std::isfinite(options.heterogeneity)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "toy noise_stddev and heterogeneity must be finite and >= 0, got ",
        options.noise_stddev, " and ", options.heterogeneity));
  }
  auto layout = TensorLayout::Create(
      {{"w1", {64, 128}}, {"w2", {4096}}, {"w3", {7, 143}}, {"b", {10}}});
  if (!layout.ok()) return layout.status();
  return std::unique_ptr<ToyModel>(
      new ToyModel(*std::move(layout), config, options));
}

ToyModel::ToyModel(TensorLayout layout, const ModelConfig& config,
                   const ToyOptions& options)
    : layout_(std::move(layout)),
      noise_scale_(options.noise_stddev /
                   std::sqrt(static_cast<double>(config.batch_size))),
      noise_rng_(StreamSeed(config.seed, kNoiseSalt, config.rank)) {
  const size_t n = layout_.num_elements();
  curvature_.resize(n);
  optimum_.resize(n);
  std::mt19937_64 rng(StreamSeed(config.seed, kProblemSalt, 0));
  for (size_t j = 0; j < n; ++j) {
    // a = 0.5 + k/256 for k in [0, 384): in [0.5, 2), 9 significant bits.
    curvature_[j] =
        0.5 + static_cast<double>(((rng() >> 40) * 384) >> 24) / 256.0;
    // c* = k/4096 - 1 for k in [0, 8192): in [-1, 1), exact in float.
    optimum_[j] =
        static_cast<float>(static_cast<double>(rng() >> 51) / 4096.0 - 1.0);
  }
  // Each worker needs only its own and its successor's offsets, so the cost
  // does not grow with the number of workers.
  const std::vector<double> mine = WorkerOffsets(config.seed, config.rank, n);
  const std::vector<double> next =
      WorkerOffsets(config.seed, (config.rank + 1) % config.num_workers, n);
  target_.resize(n);
  for (size_t j = 0; j < n; ++j) {
    target_[j] = optimum_[j] + options.heterogeneity * (mine[j] - next[j]);
  }
}

std::vector<float> ToyModel::InitialParams(uint64_t /*seed*/) const {
  return std::vector<float>(layout_.num_elements(), 0.0f);
}

float ToyModel::ExactGradient(absl::Span<const float> params,
                              absl::Span<float> grad) const {
  CheckSizes(layout_, params.size(), grad.size());
  double loss = 0.0;
  for (size_t j = 0; j < params.size(); ++j) {
    const double diff = static_cast<double>(params[j]) - target_[j];
    grad[j] = static_cast<float>(curvature_[j] * diff);
    loss += 0.5 * curvature_[j] * diff * diff;
  }
  return static_cast<float>(loss);
}

float ToyModel::Gradient(absl::Span<const float> params,
                         absl::Span<float> grad) {
  const float loss = ExactGradient(params, grad);
  if (noise_scale_ == 0.0) return loss;
  for (float& g : grad) {
    double z;
    if (has_spare_normal_) {
      z = spare_normal_;
      has_spare_normal_ = false;
    } else {
      // Box-Muller from raw engine output, so the stream does not depend on
      // the standard library's distribution implementations.
      const double r = std::sqrt(-2.0 * std::log(UniformOpenZero(noise_rng_)));
      const double theta = 6.283185307179586 *
                           static_cast<double>(noise_rng_() >> 11) * 0x1.0p-53;
      z = r * std::cos(theta);
      spare_normal_ = r * std::sin(theta);
      has_spare_normal_ = true;
    }
    g = static_cast<float>(static_cast<double>(g) + noise_scale_ * z);
  }
  return loss;
}

Evaluation ToyModel::Evaluate(absl::Span<const float> params) const {
  CheckSizes(layout_, params.size(), layout_.num_elements());
  double loss = 0.0;
  double dist2 = 0.0;
  for (size_t j = 0; j < params.size(); ++j) {
    const double diff =
        static_cast<double>(params[j]) - static_cast<double>(optimum_[j]);
    loss += 0.5 * curvature_[j] * diff * diff;
    dist2 += diff * diff;
  }
  Evaluation e;
  e.loss = loss;
  e.metric = std::sqrt(dist2);
  e.metric_name = "distance_to_optimum";
  return e;
}

}  // namespace effadam
