// libFuzzer target: what Join checks before it touches the server's state,
// on a serialized effadam.v1.JoinRequest: the layout (LayoutFromProto) and
// the compression settings (CompressionFromProto, CheckCompressionMatches
// against a server's settings), and the update codecs built from an
// accepted layout.
//
// Invariants: an accepted layout has unique non-empty names, positive
// dimensions, offsets that follow one another and at most the element
// limit, and survives LayoutToProto unchanged; its update codecs cut it
// into segments that tile it inside tensors, with bytes that tile the
// encoded size. Settings are refused as malformed (InvalidArgument)
// exactly when CompressionFromProto refuses them, and otherwise match
// (OK) exactly when they equal the server's, else FailedPrecondition.

#include <cstdint>
#include <string>

#include "absl/container/flat_hash_set.h"
#include "core/update_codec.h"
#include "effadam/v1/parameter_server.pb.h"
#include "google/protobuf/stubs/logging.h"
#include "tests/fuzz/fuzz_check.h"
#include "transport/compression_proto.h"

namespace effadam {
namespace {

// Small enough that building codecs for a layout stays fast.
constexpr size_t kMaxElements = size_t{1} << 22;

bool SameConfig(const CompressionConfig& a, const CompressionConfig& b) {
  return a.worker_codec == b.worker_codec && a.server_codec == b.server_codec &&
         a.options.block_size == b.options.block_size &&
         a.options.min_compress_elements == b.options.min_compress_elements &&
         a.worker_error_feedback == b.worker_error_feedback &&
         a.server_error_feedback == b.server_error_feedback;
}

CompressionConfig ServerConfig() {
  CompressionConfig c;
  c.worker_codec = *ParseCodecSpec("sign");
  c.server_codec = *ParseCodecSpec("q4");
  c.options.block_size = 64;
  c.options.min_compress_elements = 64;
  return c;
}

void CheckSegments(const TensorLayout& layout, const UpdateCodec& codec) {
  size_t element = 0, byte = 0, tensor = 0;
  for (const Segment& s : codec.segments()) {
    FUZZ_CHECK(s.begin == element && s.byte_begin == byte && s.size > 0,
               "segments do not tile x");
    while (tensor + 1 < layout.tensors().size() &&
           layout.offset(tensor + 1) <= s.begin) {
      ++tensor;
    }
    const size_t end =
        layout.offset(tensor) +
        static_cast<size_t>(layout.tensors()[tensor].num_elements());
    FUZZ_CHECK(s.begin + s.size <= end, "a segment straddles two tensors");
    FUZZ_CHECK(s.byte_size == s.codec->EncodedSize(s.size), "segment bytes");
    element += s.size;
    byte += s.byte_size;
  }
  FUZZ_CHECK(element == layout.num_elements(), "segments cover %zu of %zu",
             element, layout.num_elements());
  FUZZ_CHECK(byte == codec.encoded_size(), "segment bytes %zu != %zu", byte,
             codec.encoded_size());
}

void CheckLayout(const v1::JoinRequest& request) {
  absl::StatusOr<TensorLayout> layout =
      LayoutFromProto(request.layout(), kMaxElements);
  if (!layout.ok()) {
    FUZZ_CHECK(layout.status().code() == absl::StatusCode::kInvalidArgument,
               "%s", layout.status().ToString().c_str());
    return;
  }
  FUZZ_CHECK(!layout->tensors().empty(), "empty layout accepted");
  absl::flat_hash_set<std::string> names;
  size_t offset = 0;
  for (size_t i = 0; i < layout->tensors().size(); ++i) {
    const TensorSpec& t = layout->tensors()[i];
    FUZZ_CHECK(!t.name.empty() && names.insert(t.name).second,
               "name '%s' empty or repeated", t.name.c_str());
    FUZZ_CHECK(!t.shape.empty(), "tensor without dimensions");
    for (int64_t d : t.shape) FUZZ_CHECK(d > 0, "dimension %lld", (long long)d);
    FUZZ_CHECK(layout->offset(i) == offset, "offset of tensor %zu", i);
    offset += static_cast<size_t>(t.num_elements());
  }
  FUZZ_CHECK(offset == layout->num_elements() && offset <= kMaxElements,
             "%zu elements", offset);
  absl::StatusOr<TensorLayout> again =
      LayoutFromProto(LayoutToProto(*layout), kMaxElements);
  FUZZ_CHECK(again.ok() && *again == *layout, "LayoutToProto round trip");

  const CompressionConfig c = ServerConfig();
  for (const CodecSpec& spec : {c.worker_codec, c.server_codec}) {
    absl::StatusOr<std::unique_ptr<UpdateCodec>> codec =
        UpdateCodec::Create(*layout, spec, c.options);
    FUZZ_CHECK(codec.ok(), "%s", codec.status().ToString().c_str());
    CheckSegments(*layout, **codec);
  }
}

void CheckCompression(const v1::CompressionSettings& theirs) {
  const CompressionConfig ours = ServerConfig();
  absl::StatusOr<CompressionConfig> parsed = CompressionFromProto(theirs);
  const absl::Status match =
      CheckCompressionMatches(theirs, ours, "server", "worker");
  if (!parsed.ok()) {
    FUZZ_CHECK(parsed.status().code() == absl::StatusCode::kInvalidArgument &&
                   match.code() == absl::StatusCode::kInvalidArgument,
               "malformed settings: %s / %s",
               parsed.status().ToString().c_str(), match.ToString().c_str());
    return;
  }
  if (SameConfig(*parsed, ours)) {
    FUZZ_CHECK(match.ok(), "equal settings refused: %s",
               match.ToString().c_str());
  } else {
    FUZZ_CHECK(match.code() == absl::StatusCode::kFailedPrecondition,
               "differing settings: %s", match.ToString().c_str());
  }
  // The canonical form means the same settings.
  absl::StatusOr<CompressionConfig> again =
      CompressionFromProto(CompressionToProto(*parsed));
  FUZZ_CHECK(again.ok() && SameConfig(*again, *parsed),
             "CompressionToProto round trip");
  FUZZ_CHECK(
      CheckCompressionMatches(CompressionToProto(*parsed), *parsed, "a", "b")
          .ok(),
      "settings do not match themselves");
  // Accepted settings build codecs for a small layout.
  const TensorLayout small = *TensorLayout::Create({{"w", {100}}});
  for (const CodecSpec& spec : {parsed->worker_codec, parsed->server_codec}) {
    FUZZ_CHECK(UpdateCodec::Create(small, spec, parsed->options).ok(),
               "accepted settings build no codec");
  }
}

}  // namespace
}  // namespace effadam

// Invalid UTF-8 in a string field makes protobuf log every parse it
// refuses; the refusal is what is tested, the log is noise.
extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  effadam::v1::JoinRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  effadam::CheckLayout(request);
  effadam::CheckCompression(request.compression());
  return 0;
}
