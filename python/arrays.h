#ifndef EFFADAM_PYTHON_ARRAYS_H_
#define EFFADAM_PYTHON_ARRAYS_H_

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "absl/types/span.h"

namespace effadam::python {

// float32 vectors between numpy and the library. Every check failure raises
// InvalidArgumentError naming `what`.

// A 1-D float32 view of anything numpy can turn into one (a numpy array,
// a CPU torch tensor, a list): no copy when `obj` is already a C-contiguous
// float32 vector. `array` keeps the memory alive while `span` is used.
struct FloatsIn {
  pybind11::array_t<float> array;
  absl::Span<const float> span;
};
FloatsIn ToFloats(pybind11::handle obj, const char* what);

// A writable, C-contiguous, 1-D float32 numpy array that the library fills
// in place (an error memory, an accumulator); never a copy.
absl::Span<float> ToMutableFloats(pybind11::handle obj, const char* what);

// A read-only numpy view of `s` (no copy) that keeps `owner` alive.
pybind11::array ReadOnlyView(absl::Span<const float> s, pybind11::handle owner);

// A new numpy array with a copy of `s`.
pybind11::array_t<float> CopyToArray(absl::Span<const float> s);

// The bytes of a bytes-like object (bytes, bytearray, memoryview).
absl::Span<const uint8_t> ToBytes(pybind11::handle obj,
                                  pybind11::buffer_info* keep,
                                  const char* what);

}  // namespace effadam::python

#endif  // EFFADAM_PYTHON_ARRAYS_H_
