#include "python/status_error.h"

#include <string>

#include "absl/strings/string_view.h"

namespace py = pybind11;

namespace effadam::python {
namespace {

// Owned by the module, which lives until the interpreter ends.
PyObject* g_status_error = nullptr;
PyObject* g_invalid_argument_error = nullptr;

// Messages may quote what a server sent; invalid UTF-8 must not turn an
// error into another one.
py::str Utf8(absl::string_view s) {
  PyObject* o = PyUnicode_DecodeUTF8(
      s.data(), static_cast<Py_ssize_t>(s.size()), "replace");
  if (o == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(o);
}

}  // namespace

void RegisterStatusErrors(py::module_& m) {
  py::enum_<absl::StatusCode>(m, "StatusCode",
                              "The code of an absl::Status (gRPC's codes).")
      .value("OK", absl::StatusCode::kOk)
      .value("CANCELLED", absl::StatusCode::kCancelled)
      .value("UNKNOWN", absl::StatusCode::kUnknown)
      .value("INVALID_ARGUMENT", absl::StatusCode::kInvalidArgument)
      .value("DEADLINE_EXCEEDED", absl::StatusCode::kDeadlineExceeded)
      .value("NOT_FOUND", absl::StatusCode::kNotFound)
      .value("ALREADY_EXISTS", absl::StatusCode::kAlreadyExists)
      .value("PERMISSION_DENIED", absl::StatusCode::kPermissionDenied)
      .value("RESOURCE_EXHAUSTED", absl::StatusCode::kResourceExhausted)
      .value("FAILED_PRECONDITION", absl::StatusCode::kFailedPrecondition)
      .value("ABORTED", absl::StatusCode::kAborted)
      .value("OUT_OF_RANGE", absl::StatusCode::kOutOfRange)
      .value("UNIMPLEMENTED", absl::StatusCode::kUnimplemented)
      .value("INTERNAL", absl::StatusCode::kInternal)
      .value("UNAVAILABLE", absl::StatusCode::kUnavailable)
      .value("DATA_LOSS", absl::StatusCode::kDataLoss)
      .value("UNAUTHENTICATED", absl::StatusCode::kUnauthenticated);

  g_status_error = PyErr_NewExceptionWithDoc(
      "effadam.StatusError",
      "An error of the effadam library: `code` (an effadam.StatusCode) and "
      "`message`, as the C++ absl::Status had them.",
      PyExc_RuntimeError, nullptr);
  if (g_status_error == nullptr) throw py::error_already_set();
  m.add_object("StatusError", py::handle(g_status_error));
  py::tuple bases =
      py::make_tuple(py::handle(g_status_error), py::handle(PyExc_ValueError));
  g_invalid_argument_error = PyErr_NewExceptionWithDoc(
      "effadam.InvalidArgumentError",
      "A StatusError with code INVALID_ARGUMENT; also a ValueError.",
      bases.ptr(), nullptr);
  if (g_invalid_argument_error == nullptr) throw py::error_already_set();
  m.add_object("InvalidArgumentError", py::handle(g_invalid_argument_error));
}

void ThrowStatus(const absl::Status& status) {
  PyObject* type = status.code() == absl::StatusCode::kInvalidArgument
                       ? g_invalid_argument_error
                       : g_status_error;
  py::object error =
      py::reinterpret_borrow<py::object>(type)(Utf8(status.ToString()));
  error.attr("code") = py::cast(status.code());
  error.attr("message") = Utf8(status.message());
  PyErr_SetObject(type, error.ptr());
  throw py::error_already_set();
}

}  // namespace effadam::python
