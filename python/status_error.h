#ifndef EFFADAM_PYTHON_STATUS_ERROR_H_
#define EFFADAM_PYTHON_STATUS_ERROR_H_

#include <pybind11/pybind11.h>

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace effadam::python {

// absl::Status in Python: effadam.StatusCode (absl's codes, named as gRPC
// names them), effadam.StatusError with `code` and `message`, and
// effadam.InvalidArgumentError, which is also a ValueError. Registers them
// in `m`; call once, before any Throw.
void RegisterStatusErrors(pybind11::module_& m);

// Raises the Python exception for a non-OK `status`: InvalidArgumentError
// for INVALID_ARGUMENT, StatusError for every other code; str(e) is
// "CODE: message".
[[noreturn]] void ThrowStatus(const absl::Status& status);

inline void ThrowIfError(const absl::Status& status) {
  if (!status.ok()) ThrowStatus(status);
}

template <typename T>
T ValueOrThrow(absl::StatusOr<T> value) {
  if (!value.ok()) ThrowStatus(value.status());
  return *std::move(value);
}

}  // namespace effadam::python

#endif  // EFFADAM_PYTHON_STATUS_ERROR_H_
