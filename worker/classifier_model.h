#ifndef EFFADAM_WORKER_CLASSIFIER_MODEL_H_
#define EFFADAM_WORKER_CLASSIFIER_MODEL_H_

#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/tensor_layout.h"
#include "worker/idx_reader.h"
#include "worker/model.h"

namespace effadam {

// A fully connected softmax classifier: widths {784, 10} is logistic
// regression (tensors "weight" [10,784], "bias" [10]); {784, 256, 128, 10} is
// the MLP with ReLU between layers (tensors "fc1.weight" [256,784],
// "fc1.bias" [256], ... "fc3.bias" [10]). Weights are [out, in], row-major,
// as PyTorch stores them; the loss is the mean softmax cross-entropy.
//
// Worker `rank` of N trains on the examples whose index % N == rank. Each
// pass over that shard is a fresh Fisher-Yates shuffle from a stream seeded
// by (seed, rank); mini-batches are consecutive runs of the shuffled stream,
// and a batch that reaches the end of a pass is completed from the start of
// the next pass (wrap, nothing dropped, every batch is full).
//
// Results are bit-identical for the same binary and inputs on any machine:
// the first Create pins Eigen's assumed cache sizes process-wide, because
// Eigen otherwise splits the summation of a product by the detected cache
// sizes of the CPU.
class ClassifierModel : public Model {
 public:
  // Uses config.rank, num_workers, batch_size and seed. `train` must hold
  // widths.front() pixels and widths.back() classes per example; `test` may
  // be null, and Evaluate then reports NaN loss and metric.
  static absl::StatusOr<std::unique_ptr<ClassifierModel>> Create(
      const ModelConfig& config, std::vector<int> widths,
      std::shared_ptr<const Dataset> train,
      std::shared_ptr<const Dataset> test);

  const TensorLayout& layout() const override { return layout_; }
  // Every weight and bias uniform in +-1/sqrt(fan_in), drawn in layout order
  // from std::mt19937_64(seed).
  std::vector<float> InitialParams(uint64_t seed) const override;
  float Gradient(absl::Span<const float> params,
                 absl::Span<float> grad) override;
  // Mean cross-entropy and accuracy over the whole test set, in batches of
  // 1000; metric_name "test_accuracy".
  Evaluation Evaluate(absl::Span<const float> params) const override;

  // Mean cross-entropy over the given training examples and, when `grad` is
  // not empty, its gradient. Draws nothing.
  float LossAndGradient(absl::Span<const float> params,
                        absl::Span<const int64_t> examples,
                        absl::Span<float> grad) const;

  // The training examples this worker draws from, ascending.
  const std::vector<int64_t>& shard() const { return shard_; }
  // The examples of the latest Gradient call, in drawing order.
  const std::vector<int64_t>& last_batch() const { return batch_; }

 private:
  ClassifierModel(TensorLayout layout, std::vector<int> widths,
                  std::shared_ptr<const Dataset> train,
                  std::shared_ptr<const Dataset> test,
                  const ModelConfig& config);

  void NextBatch();
  // Loss summed over `n` examples whose pixels are rows of `images` and,
  // when `grad` is not empty, the gradient of the sum times `grad_scale`.
  // Counts correct argmax predictions into *correct when it is not null.
  double Run(absl::Span<const float> params, const float* images,
             const uint8_t* labels, int64_t n, double grad_scale,
             absl::Span<float> grad, int64_t* correct) const;

  TensorLayout layout_;
  std::vector<int> widths_;
  std::shared_ptr<const Dataset> train_;
  std::shared_ptr<const Dataset> test_;
  int batch_size_;
  std::vector<int64_t> shard_;
  std::vector<int64_t> order_;  // the current pass over the shard
  size_t next_ = 0;             // position in order_
  std::mt19937_64 shuffle_rng_;
  std::vector<int64_t> batch_;
  std::vector<float> batch_images_;
  std::vector<uint8_t> batch_labels_;
};

}  // namespace effadam

#endif  // EFFADAM_WORKER_CLASSIFIER_MODEL_H_
