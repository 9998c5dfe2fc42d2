#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "worker/classifier_model.h"
#include "worker/idx_reader.h"
#include "worker/model.h"
#include "worker/toy_model.h"

namespace effadam {
namespace {

const char kFashionDir[] = "/usr/share/datasets/fashion-mnist";

bool HaveFashionMnist() {
  for (const char* f :
       {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}) {
    if (!std::ifstream(absl::StrCat(kFashionDir, "/", f)).good()) return false;
  }
  return true;
}

#define SKIP_WITHOUT_FASHION_MNIST()                           \
  if (!HaveFashionMnist())                                     \
  GTEST_SKIP() << "Fashion-MNIST not found in " << kFashionDir \
               << " (install the Debian package dataset-fashion-mnist)"

// One DataCache for the whole test binary, so the files are read once.
DataCache& SharedCache() {
  static DataCache* cache = new DataCache();
  return *cache;
}

bool BitEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::shared_ptr<const Dataset> SyntheticDataset(int64_t n, int64_t dim,
                                                int classes, uint64_t seed) {
  auto ds = std::make_shared<Dataset>();
  ds->num_examples = n;
  ds->dim = dim;
  ds->num_classes = classes;
  std::mt19937_64 rng(seed);
  ds->images.resize(n * dim);
  for (float& p : ds->images) {
    p = static_cast<float>(rng() >> 40) * 0x1.0p-24f;
  }
  ds->labels.resize(n);
  for (uint8_t& l : ds->labels) l = static_cast<uint8_t>(rng() % classes);
  return ds;
}

ModelConfig Config(const std::string& name, int rank = 0, int num_workers = 1,
                   int batch_size = 64, uint64_t seed = 1) {
  ModelConfig c;
  c.name = name;
  c.data_dir = kFashionDir;
  c.rank = rank;
  c.num_workers = num_workers;
  c.batch_size = batch_size;
  c.seed = seed;
  return c;
}

// Plain Adam, so these tests do not depend on the worker optimizer.
class Adam {
 public:
  Adam(size_t n, double lr) : lr_(lr), m_(n), v_(n) {}
  void Step(const std::vector<float>& g, std::vector<float>* x) {
    ++t_;
    const double c1 = 1 - std::pow(0.9, t_), c2 = 1 - std::pow(0.999, t_);
    for (size_t j = 0; j < g.size(); ++j) {
      m_[j] = 0.9 * m_[j] + 0.1 * g[j];
      v_[j] = 0.999 * v_[j] + 0.001 * double{g[j]} * g[j];
      (*x)[j] -= static_cast<float>(lr_ * (m_[j] / c1) /
                                    (std::sqrt(v_[j] / c2) + 1e-8));
    }
  }

 private:
  double lr_;
  int t_ = 0;
  std::vector<double> m_, v_;
};

// ---------------------------------------------------------------- MakeModel

TEST(MakeModelTest, UnknownNameListsTheKnownOnes) {
  auto m = MakeModel(Config("resnet"));
  ASSERT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  for (const char* s : {"resnet", "toy", "logreg", "mlp"}) {
    EXPECT_TRUE(absl::StrContains(m.status().message(), s))
        << m.status().message();
  }
}

TEST(MakeModelTest, RejectsBadRankAndBatch) {
  for (const std::string name : {"toy", "logreg", "mlp"}) {
    for (auto [rank, workers, batch] : std::vector<std::array<int, 3>>{
             {2, 2, 64}, {-1, 2, 64}, {0, 0, 64}, {0, 1, 0}, {0, 1, -3}}) {
      auto m = MakeModel(Config(name, rank, workers, batch), &SharedCache());
      EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument)
          << name << " rank " << rank << " of " << workers << " batch "
          << batch;
      EXPECT_TRUE(absl::StrContains(m.status().message(),
                                    batch > 0 ? "rank" : "batch_size"))
          << m.status().message();
    }
  }
}

TEST(MakeModelTest, MissingDataDirectoryNamesTheFile) {
  ModelConfig c = Config("logreg");
  c.data_dir = "/nonexistent/effadam-data";
  auto m = MakeModel(c);
  ASSERT_EQ(m.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(
      absl::StrContains(m.status().message(),
                        "/nonexistent/effadam-data/train-labels-idx1-ubyte.gz"))
      << m.status().message();
}

TEST(MakeModelTest, ClassifierLayoutsFollowPyTorch) {
  SKIP_WITHOUT_FASHION_MNIST();
  auto mlp = MakeModel(Config("mlp"), &SharedCache());
  ASSERT_TRUE(mlp.ok()) << mlp.status();
  EXPECT_EQ((*mlp)->layout().DebugString(),
            "fc1.weight[256,784] fc1.bias[256] fc2.weight[128,256] "
            "fc2.bias[128] fc3.weight[10,128] fc3.bias[10]");
  EXPECT_EQ((*mlp)->layout().num_elements(), 235146u);
  auto logreg = MakeModel(Config("logreg"), &SharedCache());
  ASSERT_TRUE(logreg.ok()) << logreg.status();
  EXPECT_EQ((*logreg)->layout().DebugString(), "weight[10,784] bias[10]");
}

TEST(MakeModelTest, MlpHiddenWidthsSetTheLayers) {
  SKIP_WITHOUT_FASHION_MNIST();
  ModelConfig c = Config("mlp");
  c.mlp_hidden = {2048, 2048};
  auto wide = MakeModel(c, &SharedCache());
  ASSERT_TRUE(wide.ok()) << wide.status();
  EXPECT_EQ((*wide)->layout().DebugString(),
            "fc1.weight[2048,784] fc1.bias[2048] fc2.weight[2048,2048] "
            "fc2.bias[2048] fc3.weight[10,2048] fc3.bias[10]");
  EXPECT_EQ((*wide)->layout().num_elements(), 5824522u);
  c.mlp_hidden = {32};
  auto one = MakeModel(c, &SharedCache());
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ((*one)->layout().DebugString(),
            "fc1.weight[32,784] fc1.bias[32] fc2.weight[10,32] fc2.bias[10]");
}

TEST(ModelLabelTest, NamesTheLayersSoTwoMlpsDiffer) {
  ModelConfig c = Config("mlp");
  EXPECT_EQ(ModelLabel(c), "mlp 784-256-128-10");
  c.mlp_hidden = {2048, 2048};
  EXPECT_EQ(ModelLabel(c), "mlp 784-2048-2048-10");
  EXPECT_EQ(ModelLabel(Config("logreg")), "logreg 784-10");
  EXPECT_EQ(ModelLabel(Config("toy")), "toy");
}

TEST(MakeModelTest, RejectsBadMlpHiddenWidths) {
  for (const std::vector<int>& hidden :
       std::vector<std::vector<int>>{{}, {0}, {256, -1}}) {
    ModelConfig c = Config("mlp");
    c.mlp_hidden = hidden;
    auto m = MakeModel(c, &SharedCache());
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(m.status().message(), "hidden widths"))
        << m.status().message();
  }
}

TEST(MakeModelTest, CacheReadsEachSetOnce) {
  SKIP_WITHOUT_FASHION_MNIST();
  DataCache& cache = SharedCache();
  auto a = cache.TrainSet(kFashionDir);
  auto b = cache.TrainSet(kFashionDir);
  auto t = cache.TestSet(kFashionDir);
  ASSERT_TRUE(a.ok() && b.ok() && t.ok());
  EXPECT_EQ(a->get(), b->get());
  EXPECT_NE(a->get(), t->get());
  EXPECT_EQ((*a)->num_examples, 60000);
  EXPECT_EQ((*t)->num_examples, 10000);
}

// ---------------------------------------------------------------------- toy

TEST(ToyModelTest, LayoutHasASmallAndAnOddSizedTensor) {
  auto m = MakeModel(Config("toy"));
  ASSERT_TRUE(m.ok()) << m.status();
  bool small = false, odd = false;
  for (const TensorSpec& t : (*m)->layout().tensors()) {
    small |= t.num_elements() < 64;
    odd |= t.num_elements() % 8 != 0;
  }
  EXPECT_TRUE(small);
  EXPECT_TRUE(odd);
}

TEST(ToyModelTest, GradientMatchesFiniteDifferences) {
  auto toy = ToyModel::Create(Config("toy", 1, 3));
  ASSERT_TRUE(toy.ok()) << toy.status();
  const size_t n = (*toy)->layout().num_elements();
  std::mt19937_64 rng(7);
  std::vector<float> x(n);
  for (float& v : x) v = static_cast<float>(rng() >> 40) * 0x1.0p-23f - 1.0f;
  std::vector<float> grad(n), scratch(n);
  (*toy)->ExactGradient(x, absl::MakeSpan(grad));
  // The objective is quadratic, so a central difference is exact for any
  // step; a large one keeps the float rounding of the ~1e4 loss negligible.
  const float h = 1.0f;
  for (size_t j = 0; j < n; j += 97) {
    std::vector<float> xp = x, xm = x;
    xp[j] += h;
    xm[j] -= h;
    const double fp = (*toy)->ExactGradient(xp, absl::MakeSpan(scratch));
    const double fm = (*toy)->ExactGradient(xm, absl::MakeSpan(scratch));
    const double fd = (fp - fm) / (2.0 * h);
    EXPECT_NEAR(grad[j], fd, 2e-3 + 1e-6 * std::abs(fd)) << "coordinate " << j;
  }
}

TEST(ToyModelTest, AverageGradientVanishesExactlyAtTheOptimum) {
  const int kWorkers = 5;
  ToyOptions noiseless;
  noiseless.noise_stddev = 0.0;
  std::vector<std::unique_ptr<ToyModel>> workers;
  for (int r = 0; r < kWorkers; ++r) {
    auto m = ToyModel::Create(Config("toy", r, kWorkers), noiseless);
    ASSERT_TRUE(m.ok()) << m.status();
    workers.push_back(*std::move(m));
  }
  const std::vector<float> opt = workers[0]->optimum();
  const size_t n = opt.size();
  std::vector<double> sum(n, 0.0);
  std::vector<float> grad(n);
  double own_norm = 0.0;
  for (auto& w : workers) {
    EXPECT_EQ(w->optimum(), opt);
    w->Gradient(opt, absl::MakeSpan(grad));
    for (size_t j = 0; j < n; ++j) {
      sum[j] += grad[j];
      own_norm += double{grad[j]} * grad[j];
    }
  }
  // Workers disagree (heterogeneous data), yet their average is zero at c*.
  EXPECT_GT(own_norm, 1.0);
  for (size_t j = 0; j < n; ++j) ASSERT_EQ(sum[j], 0.0) << "coordinate " << j;

  const Evaluation at_opt = workers[2]->Evaluate(opt);
  EXPECT_EQ(at_opt.metric_name, "distance_to_optimum");
  EXPECT_EQ(at_opt.metric, 0.0);
  EXPECT_EQ(at_opt.loss, 0.0);

  const std::vector<float> zero = workers[0]->InitialParams(1);
  const Evaluation at_zero = workers[0]->Evaluate(zero);
  double norm2 = 0.0;
  for (float v : opt) norm2 += double{v} * v;
  EXPECT_DOUBLE_EQ(at_zero.metric, std::sqrt(norm2));
  EXPECT_GT(at_zero.loss, 0.0);
}

TEST(ToyModelTest, OptimumDependsOnSeedOnly) {
  auto one = ToyModel::Create(Config("toy", 0, 1, 64, 9));
  auto many = ToyModel::Create(Config("toy", 6, 7, 8, 9));
  auto other = ToyModel::Create(Config("toy", 0, 1, 64, 10));
  ASSERT_TRUE(one.ok() && many.ok() && other.ok());
  EXPECT_EQ((*one)->optimum(), (*many)->optimum());
  EXPECT_NE((*one)->optimum(), (*other)->optimum());
}

TEST(ToyModelTest, NoiseHasTheStatedScaleAndIsDeterministic) {
  auto a = ToyModel::Create(Config("toy", 0, 2, 16));
  auto b = ToyModel::Create(Config("toy", 0, 2, 16));
  auto c = ToyModel::Create(Config("toy", 1, 2, 16));
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  const size_t n = (*a)->layout().num_elements();
  const std::vector<float> x((*a)->InitialParams(3));
  std::vector<float> exact(n), ga(n), gb(n), gc(n);
  (*a)->ExactGradient(x, absl::MakeSpan(exact));
  for (int step = 0; step < 3; ++step) {
    (*a)->Gradient(x, absl::MakeSpan(ga));
    (*b)->Gradient(x, absl::MakeSpan(gb));
    (*c)->Gradient(x, absl::MakeSpan(gc));
    EXPECT_TRUE(BitEqual(ga, gb)) << "step " << step;
    EXPECT_FALSE(BitEqual(ga, gc)) << "step " << step;
  }
  double mean = 0.0, sq = 0.0;
  for (size_t j = 0; j < n; ++j) {
    const double z = double{ga[j]} - exact[j];
    mean += z;
    sq += z * z;
  }
  mean /= n;
  const double stddev = std::sqrt(sq / n - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.01);
  EXPECT_NEAR(stddev, 1.0 / 4.0, 0.01);  // 1 / sqrt(batch 16)
}

TEST(ToyModelTest, DistributedSgdApproachesTheOptimum) {
  const int kWorkers = 4;
  std::vector<std::unique_ptr<Model>> workers;
  for (int r = 0; r < kWorkers; ++r) {
    auto m = MakeModel(Config("toy", r, kWorkers));
    ASSERT_TRUE(m.ok()) << m.status();
    workers.push_back(*std::move(m));
  }
  std::vector<float> x = workers[0]->InitialParams(1);
  const double start = workers[0]->Evaluate(x).metric;
  std::vector<float> g(x.size());
  std::vector<double> avg(x.size());
  for (int step = 0; step < 100; ++step) {
    std::fill(avg.begin(), avg.end(), 0.0);
    for (auto& w : workers) {
      w->Gradient(x, absl::MakeSpan(g));
      for (size_t j = 0; j < x.size(); ++j) avg[j] += g[j] / kWorkers;
    }
    for (size_t j = 0; j < x.size(); ++j) x[j] -= 0.5f * avg[j];
  }
  const double end = workers[0]->Evaluate(x).metric;
  EXPECT_GT(start, 30.0);
  EXPECT_LT(end, 0.1 * start);
}

// -------------------------------------------------------------- classifiers

// The mean cross-entropy of a ReLU network of the given widths, written
// independently of the model and in double, so central differences of it
// are accurate to ~1e-9 and free of float noise.
double ReferenceLoss(const std::vector<int>& widths,
                     const std::vector<double>& params, const Dataset& data,
                     const std::vector<int64_t>& batch) {
  double total = 0.0;
  for (int64_t e : batch) {
    std::vector<double> a(data.images.begin() + e * data.dim,
                          data.images.begin() + (e + 1) * data.dim);
    size_t offset = 0;
    for (size_t l = 0; l + 1 < widths.size(); ++l) {
      const int in = widths[l], out = widths[l + 1];
      const double* w = params.data() + offset;
      const double* b = w + static_cast<size_t>(out) * in;
      offset += static_cast<size_t>(out) * in + out;
      std::vector<double> z(out);
      for (int o = 0; o < out; ++o) {
        double sum = b[o];
        for (int i = 0; i < in; ++i) sum += w[o * in + i] * a[i];
        z[o] = (l + 2 < widths.size()) ? std::max(sum, 0.0) : sum;
      }
      a = std::move(z);
    }
    const double max = *std::max_element(a.begin(), a.end());
    double sum = 0.0;
    for (double v : a) sum += std::exp(v - max);
    total += std::log(sum) - (a[data.labels[e]] - max);
  }
  return total / static_cast<double>(batch.size());
}

// The model's float gradient against central differences of ReferenceLoss,
// at the largest-gradient coordinate of every tensor, a random sample of
// others, and along the gradient direction.
void CheckGradient(ClassifierModel& model, const std::vector<int>& widths,
                   const Dataset& data, const std::vector<int64_t>& batch,
                   uint64_t seed, int coords) {
  const size_t n = model.layout().num_elements();
  const std::vector<float> x = model.InitialParams(seed);
  std::vector<float> grad(n);
  const float loss = model.LossAndGradient(x, batch, absl::MakeSpan(grad));
  const std::vector<double> xd(x.begin(), x.end());
  const double ref = ReferenceLoss(widths, xd, data, batch);
  EXPECT_NEAR(loss, ref, 1e-5 * ref);

  std::vector<size_t> picks;
  const auto& tensors = model.layout().tensors();
  for (size_t t = 0; t < tensors.size(); ++t) {
    const size_t begin = model.layout().offset(t);
    const size_t end = begin + tensors[t].num_elements();
    size_t best = begin;
    for (size_t j = begin; j < end; ++j) {
      if (std::abs(grad[j]) > std::abs(grad[best])) best = j;
    }
    EXPECT_GT(std::abs(grad[best]), 1e-4) << tensors[t].name;
    picks.push_back(best);
  }
  std::mt19937_64 rng(seed);
  for (int k = 0; k < coords; ++k) picks.push_back(rng() % n);

  const double h = 1e-6;
  double max_grad = 0.0;
  for (float g : grad) max_grad = std::max(max_grad, double{std::abs(g)});
  for (size_t j : picks) {
    std::vector<double> xp = xd, xm = xd;
    xp[j] += h;
    xm[j] -= h;
    const double fd = (ReferenceLoss(widths, xp, data, batch) -
                       ReferenceLoss(widths, xm, data, batch)) /
                      (2 * h);
    // Float accumulation error scales with the largest terms involved.
    EXPECT_NEAR(grad[j], fd, 1e-3 * std::abs(fd) + 1e-5 * max_grad)
        << model.layout().DebugString() << " coordinate " << j;
  }

  double norm = 0.0;
  for (float g : grad) norm += double{g} * g;
  norm = std::sqrt(norm);
  std::vector<double> xp = xd, xm = xd;
  for (size_t j = 0; j < n; ++j) {
    xp[j] += h * grad[j] / norm;
    xm[j] -= h * grad[j] / norm;
  }
  const double directional = (ReferenceLoss(widths, xp, data, batch) -
                              ReferenceLoss(widths, xm, data, batch)) /
                             (2 * h);
  EXPECT_NEAR(directional, norm, 1e-4 * norm);
}

TEST(ClassifierModelTest, SmallModelsMatchFiniteDifferences) {
  auto data = SyntheticDataset(40, 12, 5, 3);
  for (const std::vector<int>& widths :
       {std::vector<int>{12, 5}, std::vector<int>{12, 9, 7, 5}}) {
    auto m =
        ClassifierModel::Create(Config("mlp", 0, 1, 16), widths, data, nullptr);
    ASSERT_TRUE(m.ok()) << m.status();
    std::vector<int64_t> batch = {0, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 39};
    for (uint64_t seed : {1, 2, 3}) {
      CheckGradient(**m, widths, *data, batch, seed, 40);
    }
  }
}

TEST(ClassifierModelTest, FullSizeModelsMatchFiniteDifferences) {
  auto data = SyntheticDataset(64, 784, 10, 4);
  std::vector<int64_t> batch(64);
  for (int i = 0; i < 64; ++i) batch[i] = i;
  for (const std::vector<int>& widths :
       {std::vector<int>{784, 10}, std::vector<int>{784, 256, 128, 10}}) {
    auto m = ClassifierModel::Create(Config("mlp"), widths, data, nullptr);
    ASSERT_TRUE(m.ok()) << m.status();
    // A subset of the batch keeps the double reference cheap.
    const std::vector<int64_t> subset(batch.begin(), batch.begin() + 16);
    CheckGradient(**m, widths, *data, subset, 5, 20);
    // The whole batch through the model's own gradient path too.
    std::vector<float> g(m.value()->layout().num_elements());
    const std::vector<float> x = (*m)->InitialParams(5);
    const float loss = (*m)->LossAndGradient(x, batch, absl::MakeSpan(g));
    const std::vector<double> xd(x.begin(), x.end());
    EXPECT_NEAR(loss, ReferenceLoss(widths, xd, *data, batch), 1e-5 * loss);
  }
}

TEST(ClassifierModelTest, GradientIsOfTheMeanLoss) {
  // The mean over a batch of one example repeated equals that example's.
  auto data = SyntheticDataset(10, 12, 5, 8);
  auto m = ClassifierModel::Create(Config("mlp"), {12, 6, 5}, data, nullptr);
  ASSERT_TRUE(m.ok()) << m.status();
  const std::vector<float> x = (*m)->InitialParams(2);
  const size_t n = x.size();
  std::vector<float> one(n), four(n);
  const std::vector<int64_t> single = {3}, repeated = {3, 3, 3, 3};
  const float l1 = (*m)->LossAndGradient(x, single, absl::MakeSpan(one));
  const float l4 = (*m)->LossAndGradient(x, repeated, absl::MakeSpan(four));
  EXPECT_NEAR(l1, l4, 1e-6);
  for (size_t j = 0; j < n; ++j) ASSERT_NEAR(one[j], four[j], 1e-6) << j;
}

TEST(ClassifierModelTest, InitialParamsAreSeededAndBoundedByFanIn) {
  auto data = SyntheticDataset(10, 784, 10, 1);
  auto m = ClassifierModel::Create(Config("mlp"), {784, 256, 128, 10}, data,
                                   nullptr);
  ASSERT_TRUE(m.ok()) << m.status();
  const std::vector<float> a = (*m)->InitialParams(5);
  EXPECT_TRUE(BitEqual(a, (*m)->InitialParams(5)));
  EXPECT_FALSE(BitEqual(a, (*m)->InitialParams(6)));
  const TensorLayout& layout = (*m)->layout();
  const int fan_in[] = {784, 784, 256, 256, 128, 128};
  for (size_t t = 0; t < layout.tensors().size(); ++t) {
    const float bound = 1.0f / std::sqrt(static_cast<float>(fan_in[t]));
    float lo = 0, hi = 0;
    for (size_t j = layout.offset(t);
         j < layout.offset(t) + layout.tensors()[t].num_elements(); ++j) {
      lo = std::min(lo, a[j]);
      hi = std::max(hi, a[j]);
    }
    EXPECT_GE(lo, -bound) << t;
    EXPECT_LE(hi, bound) << t;
    if (layout.tensors()[t].num_elements() >= 100) {  // spans the range
      EXPECT_LT(lo, -0.9f * bound) << t;
      EXPECT_GT(hi, 0.9f * bound) << t;
    }
  }
}

TEST(ClassifierModelTest, ShardsPartitionTheTrainingSet) {
  auto data = SyntheticDataset(103, 4, 3, 2);
  const int kWorkers = 4;
  std::vector<int> seen(103, 0);
  for (int r = 0; r < kWorkers; ++r) {
    auto m = ClassifierModel::Create(Config("mlp", r, kWorkers, 8), {4, 3},
                                     data, nullptr);
    ASSERT_TRUE(m.ok()) << m.status();
    const auto& shard = (*m)->shard();
    EXPECT_TRUE(shard.size() == 25 || shard.size() == 26) << shard.size();
    for (int64_t e : shard) {
      EXPECT_EQ(e % kWorkers, r);
      ++seen[e];
    }
  }
  for (int e = 0; e < 103; ++e) EXPECT_EQ(seen[e], 1) << "example " << e;
}

TEST(ClassifierModelTest, BatchesShuffleEachPassAndWrapAcrossPasses) {
  // Shard of 30 examples (rank 1 of 2 over 60), batches of 7: the first 30
  // draws are a permutation of the shard, the 5th batch wraps into the next
  // pass, and the second pass is ordered differently.
  auto data = SyntheticDataset(60, 4, 3, 2);
  auto m =
      ClassifierModel::Create(Config("mlp", 1, 2, 7), {4, 3}, data, nullptr);
  ASSERT_TRUE(m.ok()) << m.status();
  const std::vector<float> x = (*m)->InitialParams(1);
  std::vector<float> g(x.size());
  std::vector<int64_t> drawn;
  for (int step = 0; step < 9; ++step) {
    (*m)->Gradient(x, absl::MakeSpan(g));
    ASSERT_EQ((*m)->last_batch().size(), 7u);
    drawn.insert(drawn.end(), (*m)->last_batch().begin(),
                 (*m)->last_batch().end());
  }
  std::vector<int64_t> pass1(drawn.begin(), drawn.begin() + 30);
  std::vector<int64_t> pass2(drawn.begin() + 30, drawn.begin() + 60);
  EXPECT_NE(pass1, (*m)->shard());  // shuffled
  EXPECT_NE(pass1, pass2);
  std::sort(pass1.begin(), pass1.end());
  std::sort(pass2.begin(), pass2.end());
  EXPECT_EQ(pass1, (*m)->shard());
  EXPECT_EQ(pass2, (*m)->shard());
}

TEST(ClassifierModelTest, SameConfigSameBitsOtherRankOtherBatches) {
  auto data = SyntheticDataset(500, 784, 10, 6);
  auto make = [&](int rank) {
    return ClassifierModel::Create(Config("mlp", rank, 3, 32),
                                   {784, 256, 128, 10}, data, data);
  };
  auto a = make(0), b = make(0), c = make(1);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  const std::vector<float> x = (*a)->InitialParams(11);
  std::vector<float> ga(x.size()), gb(x.size()), gc(x.size());
  for (int step = 0; step < 4; ++step) {
    const float la = (*a)->Gradient(x, absl::MakeSpan(ga));
    const float lb = (*b)->Gradient(x, absl::MakeSpan(gb));
    (*c)->Gradient(x, absl::MakeSpan(gc));
    EXPECT_EQ(std::memcmp(&la, &lb, sizeof la), 0);
    EXPECT_TRUE(BitEqual(ga, gb)) << "step " << step;
    EXPECT_EQ((*a)->last_batch(), (*b)->last_batch());
    EXPECT_NE((*a)->last_batch(), (*c)->last_batch());
    EXPECT_FALSE(BitEqual(ga, gc));
  }
  const Evaluation ea = (*a)->Evaluate(x), eb = (*b)->Evaluate(x);
  EXPECT_EQ(ea.loss, eb.loss);
  EXPECT_EQ(ea.metric, eb.metric);
  EXPECT_EQ(ea.metric_name, "test_accuracy");
}

TEST(ClassifierModelTest, WithoutTestSetEvaluateIsNaN) {
  auto data = SyntheticDataset(20, 4, 3, 2);
  auto m = ClassifierModel::Create(Config("mlp"), {4, 3}, data, nullptr);
  ASSERT_TRUE(m.ok()) << m.status();
  const Evaluation e = (*m)->Evaluate((*m)->InitialParams(1));
  EXPECT_TRUE(std::isnan(e.loss));
  EXPECT_TRUE(std::isnan(e.metric));
  EXPECT_EQ(e.metric_name, "test_accuracy");
}

TEST(ClassifierModelTest, RejectsDataThatDoesNotFit) {
  auto data = SyntheticDataset(20, 4, 3, 2);
  auto m = ClassifierModel::Create(Config("mlp"), {5, 3}, data, nullptr);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  m = ClassifierModel::Create(Config("mlp"), {4, 10}, data, nullptr);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  m = ClassifierModel::Create(Config("mlp", 20, 30), {4, 3}, data, nullptr);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(m.status().message(), "no examples"))
      << m.status().message();
}

TEST(ClassifierModelTest, LogregLearnsFashionMnist) {
  SKIP_WITHOUT_FASHION_MNIST();
  auto m = MakeModel(Config("logreg", 0, 1, 64, 1), &SharedCache());
  ASSERT_TRUE(m.ok()) << m.status();
  std::vector<float> x = (*m)->InitialParams(1);
  const Evaluation before = (*m)->Evaluate(x);
  EXPECT_LT(before.metric, 0.3);
  std::vector<float> g(x.size());
  Adam adam(x.size(), 1e-2);
  for (int step = 0; step < 300; ++step) {
    (*m)->Gradient(x, absl::MakeSpan(g));
    adam.Step(g, &x);
  }
  const Evaluation after = (*m)->Evaluate(x);
  EXPECT_GT(after.metric, 0.75);
  EXPECT_LT(after.loss, before.loss);
}

TEST(ClassifierModelTest, MlpLearnsFashionMnistOnItsShard) {
  SKIP_WITHOUT_FASHION_MNIST();
  ModelConfig c = Config("mlp", 2, 4, 64, 3);
  auto m = MakeModel(c, &SharedCache());
  ASSERT_TRUE(m.ok()) << m.status();
  std::vector<float> x = (*m)->InitialParams(3);
  const Evaluation before = (*m)->Evaluate(x);
  EXPECT_NEAR(before.loss, std::log(10.0), 0.2);
  std::vector<float> g(x.size());
  Adam adam(x.size(), 1e-3);
  for (int step = 0; step < 300; ++step) {
    (*m)->Gradient(x, absl::MakeSpan(g));
    adam.Step(g, &x);
  }
  const Evaluation after = (*m)->Evaluate(x);
  EXPECT_GT(after.metric, 0.75);
}

TEST(ClassifierModelTest, WorkerWithoutTestSetStillTrains) {
  SKIP_WITHOUT_FASHION_MNIST();
  ModelConfig c = Config("logreg", 1, 2);
  c.load_test_set = false;
  auto m = MakeModel(c, &SharedCache());
  ASSERT_TRUE(m.ok()) << m.status();
  std::vector<float> x = (*m)->InitialParams(1);
  std::vector<float> g(x.size());
  const float loss = (*m)->Gradient(x, absl::MakeSpan(g));
  EXPECT_NEAR(loss, std::log(10.0), 0.5);
  EXPECT_TRUE(std::isnan((*m)->Evaluate(x).metric));
}

}  // namespace
}  // namespace effadam
