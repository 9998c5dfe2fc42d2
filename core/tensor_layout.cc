#include "core/tensor_layout.h"

#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace effadam {

int64_t TensorSpec::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<TensorLayout> TensorLayout::Create(
    std::vector<TensorSpec> tensors) {
  if (tensors.empty()) {
    return absl::InvalidArgumentError("layout has no tensors");
  }
  absl::flat_hash_set<std::string> names;
  TensorLayout layout;
  size_t total = 0;
  for (const TensorSpec& t : tensors) {
    if (t.name.empty()) {
      return absl::InvalidArgumentError("layout has a tensor without a name");
    }
    if (!names.insert(t.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("layout names tensor '", t.name, "' twice"));
    }
    if (t.shape.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name, "' has no dimensions"));
    }
    int64_t n = 1;
    for (int64_t d : t.shape) {
      // Bound each tensor to 2^40 elements so products cannot overflow.
      if (d <= 0 || d > (int64_t{1} << 40) || n > (int64_t{1} << 40) / d) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor '", t.name, "' has a dimension out of range: ", d));
      }
      n *= d;
    }
    layout.offsets_.push_back(total);
    total += static_cast<size_t>(n);
  }
  layout.tensors_ = std::move(tensors);
  layout.total_ = total;
  return layout;
}

std::string TensorLayout::DebugString() const {
  return absl::StrJoin(
      tensors_, " ", [](std::string* out, const TensorSpec& t) {
        absl::StrAppend(out, t.name, "[", absl::StrJoin(t.shape, ","), "]");
      });
}

}  // namespace effadam
