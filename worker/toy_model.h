#ifndef EFFADAM_WORKER_TOY_MODEL_H_
#define EFFADAM_WORKER_TOY_MODEL_H_

#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/tensor_layout.h"
#include "worker/model.h"

namespace effadam {

struct ToyOptions {
  // Standard deviation of the noise of one example's gradient; a mini-batch
  // gradient carries noise_stddev / sqrt(batch_size) per coordinate.
  double noise_stddev = 1.0;
  // Scale of how far each worker's own optimum lies from the common one.
  double heterogeneity = 1.0;
};

// A stochastic convex quadratic with a known optimum. Worker i minimises
//   f_i(x) = 0.5 * sum_j a_j (x_j - c_ij)^2,  c_ij = c*_j + h_ij,
// with curvatures a_j in [0.5, 2) and the optimum c* in [-1, 1) drawn from
// the seed alone, and offsets h_ij = heterogeneity * (u_ij - u_(i+1 mod N)j)
// that telescope to zero over the N workers. The average objective
// therefore has its minimum exactly at c*, whatever N is. a, c* and u are
// dyadic rationals with few bits, so with heterogeneity a power of two the
// noise-free gradients at c* sum to exactly zero in float.
//
// Layout: w1[64,128] w2[4096] w3[7,143] b[10] -- a small tensor and one whose
// size is not a multiple of 8, as the codecs' block logic needs exercising.
// Initial parameters are zero.
class ToyModel : public Model {
 public:
  // Uses config.rank, num_workers, batch_size and seed.
  static absl::StatusOr<std::unique_ptr<ToyModel>> Create(
      const ModelConfig& config, ToyOptions options = ToyOptions());

  const TensorLayout& layout() const override { return layout_; }
  std::vector<float> InitialParams(uint64_t seed) const override;
  // Noise-free gradient of f_i plus Gaussian noise from this worker's
  // stream; returns f_i(params) without noise.
  float Gradient(absl::Span<const float> params,
                 absl::Span<float> grad) override;
  // loss = F(x) - F(c*) = 0.5 * sum_j a_j (x_j - c*_j)^2 for the average
  // objective F; metric = ||x - c*||, "distance_to_optimum".
  Evaluation Evaluate(absl::Span<const float> params) const override;

  // The gradient of f_i without noise; returns f_i(params). Draws nothing.
  float ExactGradient(absl::Span<const float> params,
                      absl::Span<float> grad) const;
  const std::vector<float>& optimum() const { return optimum_; }

 private:
  ToyModel(TensorLayout layout, const ModelConfig& config,
           const ToyOptions& options);

  TensorLayout layout_;
  std::vector<double> curvature_;  // a
  std::vector<float> optimum_;     // c*, exactly representable
  std::vector<double> target_;     // c_i of this worker
  double noise_scale_;             // per coordinate, per mini-batch
  std::mt19937_64 noise_rng_;
  bool has_spare_normal_ = false;  // Box-Muller yields normals in pairs
  double spare_normal_ = 0.0;
};

}  // namespace effadam

#endif  // EFFADAM_WORKER_TOY_MODEL_H_
