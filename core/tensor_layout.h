#ifndef EFFADAM_CORE_TENSOR_LAYOUT_H_
#define EFFADAM_CORE_TENSOR_LAYOUT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace effadam {

// One named tensor of the model; its elements are row-major.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;

  int64_t num_elements() const;
  bool operator==(const TensorSpec& o) const {
    return name == o.name && shape == o.shape;
  }
};

// The model's tensors flattened one after another into a single float vector
// x. Every worker and the server agree on it; blocks of the codecs never
// straddle two tensors.
class TensorLayout {
 public:
  TensorLayout() = default;

  // Fails unless names are non-empty and unique and every dimension is > 0.
  static absl::StatusOr<TensorLayout> Create(std::vector<TensorSpec> tensors);

  const std::vector<TensorSpec>& tensors() const { return tensors_; }
  // Start of tensor i in the flattened vector.
  size_t offset(size_t i) const { return offsets_[i]; }
  size_t num_elements() const { return total_; }

  bool operator==(const TensorLayout& o) const {
    return tensors_ == o.tensors_;
  }
  bool operator!=(const TensorLayout& o) const { return !(*this == o); }

  // "name[d0,d1] name2[d0]" for error messages.
  std::string DebugString() const;

 private:
  std::vector<TensorSpec> tensors_;
  std::vector<size_t> offsets_;
  size_t total_ = 0;
};

}  // namespace effadam

#endif  // EFFADAM_CORE_TENSOR_LAYOUT_H_
