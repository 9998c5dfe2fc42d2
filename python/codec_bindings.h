#ifndef EFFADAM_PYTHON_CODEC_BINDINGS_H_
#define EFFADAM_PYTHON_CODEC_BINDINGS_H_

#include <pybind11/pybind11.h>

namespace effadam::python {

// Adds Codec (one direction's quantizer over a span, core/codec.h) and
// UpdateCodec (a whole model's encoding, core/update_codec.h) to `m`, for
// experiments and for tests that check the library from Python. Encoded
// updates are bytes in the layout of docs/wire_format.md.
void BindCodecs(pybind11::module_& m);

}  // namespace effadam::python

#endif  // EFFADAM_PYTHON_CODEC_BINDINGS_H_
