#include "python/arrays.h"

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "python/status_error.h"

namespace py = pybind11;

namespace effadam::python {

FloatsIn ToFloats(py::handle obj, const char* what) {
  auto array =
      py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(
          obj);
  if (!array) {
    PyErr_Clear();
    ThrowStatus(absl::InvalidArgumentError(absl::StrCat(
        what, " must be a vector of numbers that converts to float32")));
  }
  if (array.ndim() != 1) {
    ThrowStatus(absl::InvalidArgumentError(
        absl::StrCat(what, " must be 1-D (flatten it first), got ",
                     array.ndim(), " dimensions")));
  }
  const float* data = array.data();
  const size_t n = static_cast<size_t>(array.size());
  return FloatsIn{std::move(array), absl::Span<const float>(data, n)};
}

absl::Span<float> ToMutableFloats(py::handle obj, const char* what) {
  if (!py::isinstance<py::array>(obj)) {
    ThrowStatus(absl::InvalidArgumentError(
        absl::StrCat(what, " must be a numpy float32 array, got ",
                     std::string(py::str(obj.get_type().attr("__name__"))))));
  }
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<float>()) || a.ndim() != 1 ||
      !(a.flags() & py::array::c_style) || !a.writeable()) {
    ThrowStatus(absl::InvalidArgumentError(absl::StrCat(
        what,
        " must be a writable, contiguous, 1-D float32 array (it is "
        "written in place), got dtype ",
        std::string(py::str(a.dtype())), " with ", a.ndim(), " dimensions",
        a.writeable() ? "" : ", read-only")));
  }
  return absl::Span<float>(static_cast<float*>(a.mutable_data()),
                           static_cast<size_t>(a.size()));
}

py::array ReadOnlyView(absl::Span<const float> s, py::handle owner) {
  if (s.empty()) return py::array_t<float>(0);
  py::array_t<float> view({static_cast<py::ssize_t>(s.size())},
                          {static_cast<py::ssize_t>(sizeof(float))}, s.data(),
                          owner);
  py::detail::array_proxy(view.ptr())->flags &=
      ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return view;
}

py::array_t<float> CopyToArray(absl::Span<const float> s) {
  py::array_t<float> out(static_cast<py::ssize_t>(s.size()));
  if (!s.empty()) {
    std::memcpy(out.mutable_data(), s.data(), s.size() * sizeof(float));
  }
  return out;
}

absl::Span<const uint8_t> ToBytes(py::handle obj, py::buffer_info* keep,
                                  const char* what) {
  if (!PyObject_CheckBuffer(obj.ptr())) {
    ThrowStatus(absl::InvalidArgumentError(absl::StrCat(
        what, " must be bytes-like (bytes, bytearray, memoryview)")));
  }
  *keep = py::reinterpret_borrow<py::buffer>(obj).request();
  if (keep->ndim > 1 ||
      (keep->ndim == 1 && keep->strides[0] != keep->itemsize)) {
    ThrowStatus(absl::InvalidArgumentError(
        absl::StrCat(what, " must be contiguous bytes")));
  }
  return absl::Span<const uint8_t>(
      static_cast<const uint8_t*>(keep->ptr),
      static_cast<size_t>(keep->size * keep->itemsize));
}

}  // namespace effadam::python
