#ifndef EFFADAM_WORKER_MODEL_H_
#define EFFADAM_WORKER_MODEL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/tensor_layout.h"

namespace effadam {

// What an evaluation reports. `metric_name` says what `metric` is:
// "test_accuracy" for the classifiers, "distance_to_optimum" for toy.
struct Evaluation {
  double loss = 0.0;
  double metric = 0.0;
  std::string metric_name;
};

// A gradient source for one worker: the model's layout and initial values,
// stochastic mini-batch gradients drawn from this worker's shard of the
// training data, and evaluation on held-out data. Deterministic given the
// seed and rank it was made with.
class Model {
 public:
  virtual ~Model() = default;

  virtual const TensorLayout& layout() const = 0;

  // Initial parameters; the same for every rank given the seed.
  virtual std::vector<float> InitialParams(uint64_t seed) const = 0;

  // Draws the next mini-batch of this worker's shard, writes the gradient of
  // the mean mini-batch loss at `params` into `grad` and returns that loss.
  virtual float Gradient(absl::Span<const float> params,
                         absl::Span<float> grad) = 0;

  // Loss and metric at `params` on the held-out set.
  virtual Evaluation Evaluate(absl::Span<const float> params) const = 0;
};

struct ModelConfig {
  std::string name = "mlp";  // toy | logreg | mlp
  // Hidden layer widths of "mlp", input side first: {256, 128} is the
  // 784-256-128-10 MLP (235,146 parameters), {2048, 2048} a wide one
  // (5,824,522) on which communication dominates a round.
  std::vector<int> mlp_hidden = {256, 128};
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  int rank = 0;         // this worker's shard
  int num_workers = 1;  // number of shards
  int batch_size = 64;  // per worker
  uint64_t seed = 1;
  bool load_test_set = true;  // false on workers that never evaluate
};

struct Dataset;  // worker/idx_reader.h

// InvalidArgument unless 0 <= rank < num_workers and batch_size > 0.
absl::Status ValidateModelConfig(const ModelConfig& config);

// The layer widths of the classifiers, input first: {784, 10} for logreg,
// {784, mlp_hidden..., 10} for mlp; empty for toy.
std::vector<int> LayerWidths(const ModelConfig& config);
// What summaries call the model: "toy", "logreg 784-10",
// "mlp 784-256-128-10", so that two MLPs are told apart.
std::string ModelLabel(const ModelConfig& config);

// Data shared by all models made in one process, so that N logical workers
// in one simulator read the files once. Empty until a model needs it; keeps
// what it loaded until it is destroyed. Safe to use from several threads.
class DataCache {
 public:
  DataCache();
  ~DataCache();
  DataCache(const DataCache&) = delete;
  DataCache& operator=(const DataCache&) = delete;

  // The Fashion-MNIST training (train-*) or test (t10k-*) set in `data_dir`,
  // read on the first call for that directory and shared afterwards.
  absl::StatusOr<std::shared_ptr<const Dataset>> TrainSet(
      const std::string& data_dir);
  absl::StatusOr<std::shared_ptr<const Dataset>> TestSet(
      const std::string& data_dir);

 private:
  struct Rep;
  std::unique_ptr<Rep> rep_;
};

// Makes a built-in model. Unknown names, "mlp" without hidden widths or
// with a width <= 0, missing or malformed data files are clear errors.
// `cache` may be null: the model then reads its own copy of the data, freed
// with it.
absl::StatusOr<std::unique_ptr<Model>> MakeModel(const ModelConfig& config,
                                                 DataCache* cache = nullptr);

}  // namespace effadam

#endif  // EFFADAM_WORKER_MODEL_H_
