#include "python/codec_bindings.h"

#include <pybind11/numpy.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/codec.h"
#include "core/update_codec.h"
#include "python/arrays.h"
#include "python/status_error.h"

namespace py = pybind11;

namespace effadam::python {
namespace {

// A bytes object of `size` bytes that `fill` writes; the GIL is released
// while it runs.
py::bytes MakeBytes(size_t size,
                    const std::function<absl::Status(uint8_t*)>& fill) {
  PyObject* o =
      PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(size));
  if (o == nullptr) throw py::error_already_set();
  py::bytes out = py::reinterpret_steal<py::bytes>(o);
  absl::Status s;
  {
    py::gil_scoped_release nogil;
    s = fill(reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(o)));
  }
  ThrowIfError(s);
  return out;
}

// The error-memory argument of encode: None means no error feedback.
absl::Span<float> OptionalError(py::handle error) {
  if (error.is_none()) return {};
  return ToMutableFloats(error, "error");
}

}  // namespace

void BindCodecs(py::module_& m) {
  py::class_<Codec, std::unique_ptr<Codec>>(m, "Codec", R"doc(
The quantizer Q of one direction over a span of n floats, blocks of
block_size elements starting at the span's first element.

    sign = effadam.Codec("sign", block_size=1024)
    e = np.zeros(n, np.float32)
    data = sign.encode(p, error=e)   # bytes; e = p + e_old - Q(p + e_old)
    q = sign.decode(data, n))doc")
      .def(py::init([](const std::string& name, size_t block_size) {
             return ValueOrThrow(
                 MakeCodec(ValueOrThrow(ParseCodecSpec(name)), block_size));
           }),
           py::arg("name"),
           py::arg("block_size") = CompressionOptions().block_size,
           "name: fp32, bf16, fp16, sign, q2..q8, q2s..q8s, topk:R; "
           "block_size: a positive multiple of 8, at most 65536.")
      .def_property_readonly("name",
                             [](const Codec& c) { return c.spec().ToString(); })
      .def_property_readonly("block_size", &Codec::block_size)
      .def("encoded_size", &Codec::EncodedSize, py::arg("n"),
           "Bytes of an encoding of n elements.")
      .def("delta", &Codec::Delta, py::arg("n"),
           "The compressor constant: ||Q(p) - p||^2 <= (1 - delta) ||p||^2.")
      .def(
          "encode",
          [](const Codec& c, py::handle update, py::handle error,
             uint64_t seed) {
            FloatsIn p = ToFloats(update, "update");
            absl::Span<float> e = OptionalError(error);
            return MakeBytes(c.EncodedSize(p.span.size()), [&](uint8_t* out) {
              return c.EncodeWithFeedback(p.span, e, seed, out);
            });
          },
          py::arg("update"), py::arg("error") = py::none(), py::arg("seed") = 0,
          "Q(update + error) as bytes; with an error array (float32, "
          "written in place) error becomes update + error - Q(...). seed "
          "drives stochastic rounding only.")
      .def(
          "decode",
          [](const Codec& c, py::handle data, size_t n) {
            py::buffer_info keep;
            absl::Span<const uint8_t> bytes = ToBytes(data, &keep, "data");
            ThrowIfError(c.Validate(bytes, n));
            py::array_t<float> out(static_cast<py::ssize_t>(n));
            absl::Span<float> o(out.mutable_data(), n);
            ThrowIfError(c.Decode(bytes, o));
            return out;
          },
          py::arg("data"), py::arg("n"),
          "Q as a new float32 array of n elements; bytes that are not a "
          "canonical encoding raise INVALID_ARGUMENT.")
      .def(
          "decode_accumulate",
          [](const Codec& c, py::handle data, float weight, py::handle acc) {
            py::buffer_info keep;
            absl::Span<const uint8_t> bytes = ToBytes(data, &keep, "data");
            absl::Span<float> a = ToMutableFloats(acc, "acc");
            ThrowIfError(c.Validate(bytes, a.size()));
            ThrowIfError(c.DecodeAccumulate(bytes, weight, a));
          },
          py::arg("data"), py::arg("weight"), py::arg("acc"),
          "acc += weight * Q (acc: float32 array, in place); bad bytes raise "
          "and leave acc unchanged.")
      .def(
          "validate",
          [](const Codec& c, py::handle data, size_t n) {
            py::buffer_info keep;
            ThrowIfError(c.Validate(ToBytes(data, &keep, "data"), n));
          },
          py::arg("data"), py::arg("n"),
          "Raises INVALID_ARGUMENT unless data is the canonical encoding of "
          "n elements.");

  const CompressionOptions defaults;
  py::class_<UpdateCodec, std::shared_ptr<UpdateCodec>>(m, "UpdateCodec", R"doc(
One direction's encoding of a whole model: each tensor cut into segments,
each encoded by the codec, or fp32 for tensors smaller than
min_compress_elements. What the workers send (worker codec) and the server
broadcasts (server codec) each round.)doc")
      .def(py::init([](const TensorLayout& layout, const std::string& name,
                       size_t block_size, size_t min_compress_elements,
                       size_t max_segment_elements) {
             CompressionOptions o;
             o.block_size = block_size;
             o.min_compress_elements = min_compress_elements;
             o.max_segment_elements = max_segment_elements;
             return std::shared_ptr<UpdateCodec>(
                 ValueOrThrow(UpdateCodec::Create(
                     layout, ValueOrThrow(ParseCodecSpec(name)), o)));
           }),
           py::arg("layout"), py::arg("name"), py::kw_only(),
           py::arg("block_size") = defaults.block_size,
           py::arg("min_compress_elements") = defaults.min_compress_elements,
           py::arg("max_segment_elements") = defaults.max_segment_elements)
      .def_property_readonly(
          "name", [](const UpdateCodec& c) { return c.spec().ToString(); })
      .def_property_readonly("num_elements", &UpdateCodec::num_elements)
      .def_property_readonly("encoded_size", &UpdateCodec::encoded_size)
      .def_property_readonly(
          "segments",
          [](const UpdateCodec& c) {
            py::list out;
            for (const Segment& s : c.segments()) {
              py::dict d;
              d["begin"] = s.begin;
              d["size"] = s.size;
              d["byte_begin"] = s.byte_begin;
              d["byte_size"] = s.byte_size;
              d["codec"] = s.codec->spec().ToString();
              out.append(d);
            }
            return out;
          },
          "Dicts of begin, size (elements), byte_begin, byte_size and codec.")
      .def(
          "encode",
          [](const UpdateCodec& c, py::handle update, py::handle error,
             uint64_t seed) {
            FloatsIn p = ToFloats(update, "update");
            absl::Span<float> e = OptionalError(error);
            std::string out;
            absl::Status s;
            {
              py::gil_scoped_release nogil;
              s = c.EncodeWithFeedback(p.span, e, seed, &out);
            }
            ThrowIfError(s);
            return py::bytes(out);
          },
          py::arg("update"), py::arg("error") = py::none(), py::arg("seed") = 0,
          "The encoded update, as Codec.encode over every segment.")
      .def(
          "decode",
          [](const UpdateCodec& c, py::handle data) {
            py::buffer_info keep;
            absl::Span<const uint8_t> b = ToBytes(data, &keep, "data");
            absl::string_view bytes(reinterpret_cast<const char*>(b.data()),
                                    b.size());
            ThrowIfError(c.Validate(bytes));
            py::array_t<float> out(static_cast<py::ssize_t>(c.num_elements()));
            absl::Span<float> o(out.mutable_data(), c.num_elements());
            // As Codec::Decode: -0 + q == q bit for bit, -0 included.
            std::fill(o.begin(), o.end(), -0.0f);
            ThrowIfError(c.DecodeAccumulate(bytes, 1.0f, o));
            return out;
          },
          py::arg("data"), "The decoded update as a new float32 array.")
      .def(
          "decode_accumulate",
          [](const UpdateCodec& c, py::handle data, float weight,
             py::handle acc) {
            py::buffer_info keep;
            absl::Span<const uint8_t> b = ToBytes(data, &keep, "data");
            absl::string_view bytes(reinterpret_cast<const char*>(b.data()),
                                    b.size());
            absl::Span<float> a = ToMutableFloats(acc, "acc");
            ThrowIfError(c.Validate(bytes));
            ThrowIfError(c.DecodeAccumulate(bytes, weight, a));
          },
          py::arg("data"), py::arg("weight"), py::arg("acc"),
          "acc += weight * Q(data), in place; bad bytes raise and leave acc "
          "unchanged.")
      .def(
          "validate",
          [](const UpdateCodec& c, py::handle data) {
            py::buffer_info keep;
            absl::Span<const uint8_t> b = ToBytes(data, &keep, "data");
            ThrowIfError(c.Validate(absl::string_view(
                reinterpret_cast<const char*>(b.data()), b.size())));
          },
          py::arg("data"));
}

}  // namespace effadam::python
