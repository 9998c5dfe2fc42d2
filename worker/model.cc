#include "worker/model.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/classifier_model.h"
#include "worker/idx_reader.h"
#include "worker/toy_model.h"

namespace effadam {
namespace {

enum class Split { kTrain, kTest };

absl::StatusOr<std::shared_ptr<const Dataset>> LoadFashionMnist(
    const std::string& data_dir, Split split) {
  const std::string prefix =
      absl::StrCat(data_dir, split == Split::kTrain ? "/train" : "/t10k");
  auto ds = LoadIdxDataset(prefix + "-images-idx3-ubyte.gz",
                           prefix + "-labels-idx1-ubyte.gz");
  if (!ds.ok()) {
    return absl::Status(
        ds.status().code(),
        absl::StrCat("reading the Fashion-MNIST ",
                     split == Split::kTrain ? "training" : "test",
                     " set (Debian package dataset-fashion-mnist): ",
                     ds.status().message()));
  }
  return std::shared_ptr<const Dataset>(
      std::make_shared<Dataset>(*std::move(ds)));
}

}  // namespace

struct DataCache::Rep {
  std::mutex mu;  // held while loading, so each set is read only once
  std::map<std::string, std::shared_ptr<const Dataset>> train;
  std::map<std::string, std::shared_ptr<const Dataset>> test;

  absl::StatusOr<std::shared_ptr<const Dataset>> Get(
      const std::string& data_dir, Split split) {
    std::lock_guard<std::mutex> lock(mu);
    auto& sets = split == Split::kTrain ? train : test;
    auto it = sets.find(data_dir);
    if (it != sets.end()) return it->second;
    auto ds = LoadFashionMnist(data_dir, split);
    if (ds.ok()) sets.emplace(data_dir, *ds);
    return ds;
  }
};

DataCache::DataCache() : rep_(std::make_unique<Rep>()) {}
DataCache::~DataCache() = default;

absl::StatusOr<std::shared_ptr<const Dataset>> DataCache::TrainSet(
    const std::string& data_dir) {
  return rep_->Get(data_dir, Split::kTrain);
}

absl::StatusOr<std::shared_ptr<const Dataset>> DataCache::TestSet(
    const std::string& data_dir) {
  return rep_->Get(data_dir, Split::kTest);
}

absl::Status ValidateModelConfig(const ModelConfig& config) {
  if (config.num_workers <= 0 || config.rank < 0 ||
      config.rank >= config.num_workers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rank ", config.rank,
        " is outside [0, num_workers = ", config.num_workers, ")"));
  }
  if (config.batch_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch_size must be positive, got ", config.batch_size));
  }
  return absl::OkStatus();
}

std::vector<int> LayerWidths(const ModelConfig& config) {
  if (config.name == "toy") return {};
  std::vector<int> widths = {784};
  if (config.name == "mlp") {
    widths.insert(widths.end(), config.mlp_hidden.begin(),
                  config.mlp_hidden.end());
  }
  widths.push_back(10);
  return widths;
}

std::string ModelLabel(const ModelConfig& config) {
  const std::vector<int> widths = LayerWidths(config);
  if (widths.empty()) return config.name;
  return absl::StrCat(config.name, " ", absl::StrJoin(widths, "-"));
}

absl::StatusOr<std::unique_ptr<Model>> MakeModel(const ModelConfig& config,
                                                 DataCache* cache) {
  // Checked before any data is read, so a bad flag fails at once.
  if (config.name != "toy" && config.name != "logreg" && config.name != "mlp") {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown model '", config.name, "'; known models: toy, logreg, mlp"));
  }
  if (absl::Status s = ValidateModelConfig(config); !s.ok()) return s;
  if (config.name == "mlp" &&
      (config.mlp_hidden.empty() ||
       std::any_of(config.mlp_hidden.begin(), config.mlp_hidden.end(),
                   [](int w) { return w <= 0; }))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "mlp hidden widths must be one or more positive numbers, got [",
        absl::StrJoin(config.mlp_hidden, ","), "]"));
  }

  if (config.name == "toy") {
    auto toy = ToyModel::Create(config);
    if (!toy.ok()) return toy.status();
    return std::unique_ptr<Model>(*std::move(toy));
  }

  auto load = [&](Split split) {
    if (cache != nullptr) {
      return split == Split::kTrain ? cache->TrainSet(config.data_dir)
                                    : cache->TestSet(config.data_dir);
    }
    return LoadFashionMnist(config.data_dir, split);
  };
  auto train = load(Split::kTrain);
  if (!train.ok()) return train.status();
  std::shared_ptr<const Dataset> test;
  if (config.load_test_set) {
    auto loaded = load(Split::kTest);
    if (!loaded.ok()) return loaded.status();
    test = *std::move(loaded);
  }
  auto model = ClassifierModel::Create(config, LayerWidths(config),
                                       *std::move(train), std::move(test));
  if (!model.ok()) return model.status();
  return std::unique_ptr<Model>(*std::move(model));
}

}  // namespace effadam
