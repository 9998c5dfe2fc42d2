#include "worker/classifier_model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <utility>

#include "Eigen/Core"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace effadam {
namespace {

using RowMatrix =
    Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

constexpr uint64_t kShuffleSalt = 0x636c732d73687566;  // "cls-shuf"
constexpr int64_t kEvalBatch = 1000;

uint64_t Mix(uint64_t x) {  // SplitMix64's finaliser
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Uniform in [0, bound) without modulo bias, from raw engine output only.
uint64_t UniformBelow(std::mt19937_64& rng, uint64_t bound) {
  const uint64_t threshold = (0 - bound) % bound;
  for (;;) {
    const uint64_t x = rng();
    if (x >= threshold) return x % bound;
  }
}

void Shuffle(std::mt19937_64& rng, std::vector<int64_t>* v) {
  for (size_t i = v->size(); i > 1; --i) {
    std::swap((*v)[i - 1], (*v)[UniformBelow(rng, i)]);
  }
}

// Eigen splits the inner dimension of a matrix product into blocks sized
// from the CPU's detected cache sizes, which changes the float summation
// order. Fixed sizes make a product's bits the same on every machine.
void PinEigenBlocking() {
  static std::once_flag once;
  std::call_once(once, [] {
    Eigen::setCpuCacheSizes(32 * 1024, 512 * 1024, 8 * 1024 * 1024);
  });
}

[[noreturn]] void Die(const std::string& message) {
  // Wrongly sized spans or bad example indices are caller bugs.
  std::fprintf(stderr, "ClassifierModel: %s\n", message.c_str());
  std::abort();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ClassifierModel>> ClassifierModel::Create(
    const ModelConfig& config, std::vector<int> widths,
    std::shared_ptr<const Dataset> train, std::shared_ptr<const Dataset> test) {
  if (absl::Status s = ValidateModelConfig(config); !s.ok()) return s;
  if (widths.size() < 2 ||
      std::any_of(widths.begin(), widths.end(), [](int w) { return w <= 0; })) {
    return absl::InvalidArgumentError(
        absl::StrCat("classifier widths must be >= 2 positive numbers, got [",
                     absl::StrJoin(widths, ","), "]"));
  }
  if (train == nullptr) {
    return absl::InvalidArgumentError("classifier needs a training set");
  }
  for (const Dataset* ds : {train.get(), test.get()}) {
    if (ds == nullptr) continue;
    if (ds->dim != widths.front() || ds->num_classes != widths.back() ||
        ds->images.size() != static_cast<size_t>(ds->num_examples * ds->dim) ||
        ds->labels.size() != static_cast<size_t>(ds->num_examples)) {
      return absl::InvalidArgumentError(
          absl::StrCat("data set of ", ds->num_examples, " examples with ",
                       ds->dim, " pixels and ", ds->num_classes,
                       " classes does not fit a classifier of widths [",
                       absl::StrJoin(widths, ","), "]"));
    }
  }
  if (train->num_examples <= config.rank) {
    return absl::InvalidArgumentError(absl::StrCat(
        "worker ", config.rank, " of ", config.num_workers,
        " gets no examples of a training set of ", train->num_examples));
  }

  std::vector<TensorSpec> tensors;
  const size_t layers = widths.size() - 1;
  for (size_t l = 0; l < layers; ++l) {
    const std::string prefix =
        layers == 1 ? "" : absl::StrCat("fc", l + 1, ".");
    tensors.push_back({prefix + "weight", {widths[l + 1], widths[l]}});
    tensors.push_back({prefix + "bias", {widths[l + 1]}});
  }
  auto layout = TensorLayout::Create(std::move(tensors));
  if (!layout.ok()) return layout.status();
  PinEigenBlocking();
  return std::unique_ptr<ClassifierModel>(
      new ClassifierModel(*std::move(layout), std::move(widths),
                          std::move(train), std::move(test), config));
}

ClassifierModel::ClassifierModel(TensorLayout layout, std::vector<int> widths,
                                 std::shared_ptr<const Dataset> train,
                                 std::shared_ptr<const Dataset> test,
                                 const ModelConfig& config)
    : layout_(std::move(layout)),
      widths_(std::move(widths)),
      train_(std::move(train)),
      test_(std::move(test)),
      batch_size_(config.batch_size),
      shuffle_rng_(Mix(Mix(config.seed ^ kShuffleSalt) ^
                       static_cast<uint64_t>(config.rank))) {
  for (int64_t i = config.rank; i < train_->num_examples;
       i += config.num_workers) {
    shard_.push_back(i);
  }
  order_ = shard_;
  Shuffle(shuffle_rng_, &order_);
}

std::vector<float> ClassifierModel::InitialParams(uint64_t seed) const {
  std::mt19937_64 rng(seed);
  std::vector<float> params(layout_.num_elements());
  for (size_t t = 0; t < layout_.tensors().size(); ++t) {
    // Tensors alternate weight, bias; both use the layer's fan-in.
    const double bound = 1.0 / std::sqrt(static_cast<double>(widths_[t / 2]));
    const size_t begin = layout_.offset(t);
    const size_t end = begin + layout_.tensors()[t].num_elements();
    for (size_t j = begin; j < end; ++j) {
      const double u = static_cast<double>(rng() >> 40) * 0x1.0p-24;
      params[j] = static_cast<float>((2.0 * u - 1.0) * bound);
    }
  }
  return params;
}

void ClassifierModel::NextBatch() {
  batch_.resize(batch_size_);
  for (int k = 0; k < batch_size_; ++k) {
    if (next_ == order_.size()) {
      Shuffle(shuffle_rng_, &order_);
      next_ = 0;
    }
    batch_[k] = order_[next_++];
  }
}

float ClassifierModel::Gradient(absl::Span<const float> params,
                                absl::Span<float> grad) {
  if (grad.size() != layout_.num_elements()) {
    Die(absl::StrCat("grad has ", grad.size(), " elements, the layout ",
                     layout_.num_elements()));
  }
  NextBatch();
  return LossAndGradient(params, batch_, grad);
}

float ClassifierModel::LossAndGradient(absl::Span<const float> params,
                                       absl::Span<const int64_t> examples,
                                       absl::Span<float> grad) const {
  const int64_t n = static_cast<int64_t>(examples.size());
  const int64_t dim = train_->dim;
  if (n == 0) Die("no examples");
  std::vector<float> images(static_cast<size_t>(n * dim));
  std::vector<uint8_t> labels(n);
  for (int64_t k = 0; k < n; ++k) {
    const int64_t e = examples[k];
    if (e < 0 || e >= train_->num_examples) {
      Die(absl::StrCat("example ", e, " is outside the training set"));
    }
    std::memcpy(images.data() + k * dim, train_->images.data() + e * dim,
                dim * sizeof(float));
    labels[k] = train_->labels[e];
  }
  const double sum = Run(params, images.data(), labels.data(), n,
                         1.0 / static_cast<double>(n), grad, nullptr);
  return static_cast<float>(sum / static_cast<double>(n));
}

Evaluation ClassifierModel::Evaluate(absl::Span<const float> params) const {
  Evaluation eval;
  eval.metric_name = "test_accuracy";
  if (test_ == nullptr) {
    eval.loss = std::numeric_limits<double>::quiet_NaN();
    eval.metric = std::numeric_limits<double>::quiet_NaN();
    return eval;
  }
  double loss = 0.0;
  int64_t correct = 0;
  for (int64_t begin = 0; begin < test_->num_examples; begin += kEvalBatch) {
    const int64_t n = std::min(kEvalBatch, test_->num_examples - begin);
    loss += Run(params, test_->images.data() + begin * test_->dim,
                test_->labels.data() + begin, n, 0.0, {}, &correct);
  }
  eval.loss = loss / static_cast<double>(test_->num_examples);
  eval.metric =
      static_cast<double>(correct) / static_cast<double>(test_->num_examples);
  return eval;
}

double ClassifierModel::Run(absl::Span<const float> params, const float* images,
                            const uint8_t* labels, int64_t n, double grad_scale,
                            absl::Span<float> grad, int64_t* correct) const {
  if (params.size() != layout_.num_elements()) {
    Die(absl::StrCat("params has ", params.size(), " elements, the layout ",
                     layout_.num_elements()));
  }
  const size_t layers = widths_.size() - 1;
  // acts[l] is the output of layer l: post-ReLU, except for the logits.
  std::vector<RowMatrix> acts(layers);
  auto input = [&](size_t l) {
    return Eigen::Map<const RowMatrix>(l == 0 ? images : acts[l - 1].data(), n,
                                       widths_[l]);
  };
  auto weight = [&](size_t l) {
    return Eigen::Map<const RowMatrix>(params.data() + layout_.offset(2 * l),
                                       widths_[l + 1], widths_[l]);
  };
  for (size_t l = 0; l < layers; ++l) {
    const Eigen::Map<const Eigen::RowVectorXf> bias(
        params.data() + layout_.offset(2 * l + 1), widths_[l + 1]);
    acts[l].resize(n, widths_[l + 1]);
    acts[l].noalias() = input(l) * weight(l).transpose();
    acts[l].rowwise() += bias;
    if (l + 1 < layers) acts[l] = acts[l].cwiseMax(0.0f);
  }

  // Softmax cross-entropy, shifted by each row's maximum to stay finite.
  const int classes = widths_.back();
  const RowMatrix& logits = acts.back();
  const bool want_grad = !grad.empty();
  RowMatrix delta;
  if (want_grad) delta.resize(n, classes);
  const float scale = static_cast<float>(grad_scale);
  double loss = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const float* z = logits.data() + i * classes;
    int argmax = 0;
    for (int k = 1; k < classes; ++k) {
      if (z[k] > z[argmax]) argmax = k;
    }
    const float max = z[argmax];
    float sum = 0.0f;
    for (int k = 0; k < classes; ++k) sum += std::exp(z[k] - max);
    const float log_sum = std::log(sum);
    const int y = labels[i];
    loss += static_cast<double>(log_sum - (z[y] - max));
    if (correct != nullptr && argmax == y) ++*correct;
    if (want_grad) {
      for (int k = 0; k < classes; ++k) {
        const float p = std::exp(z[k] - max) / sum;
        delta(i, k) = (p - (k == y ? 1.0f : 0.0f)) * scale;
      }
    }
  }
  if (!want_grad) return loss;

  if (grad.size() != layout_.num_elements()) {
    Die(absl::StrCat("grad has ", grad.size(), " elements, the layout ",
                     layout_.num_elements()));
  }
  for (size_t l = layers; l-- > 0;) {
    Eigen::Map<RowMatrix> grad_weight(grad.data() + layout_.offset(2 * l),
                                      widths_[l + 1], widths_[l]);
    Eigen::Map<Eigen::RowVectorXf> grad_bias(
        grad.data() + layout_.offset(2 * l + 1), widths_[l + 1]);
    grad_weight.noalias() = delta.transpose() * input(l);
    grad_bias = delta.colwise().sum();
    if (l > 0) {
      RowMatrix back(n, widths_[l]);
      back.noalias() = delta * weight(l);
      // ReLU passes gradient only where its output was positive.
      delta = (acts[l - 1].array() > 0.0f).select(back, 0.0f);
    }
  }
  return loss;
}

}  // namespace effadam
