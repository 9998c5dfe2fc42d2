// libFuzzer target: codec names (ParseCodecSpec) and the compression
// settings built from them (MakeCompressionConfig).
//
// Input: a codec name, NUL, a second codec name, NUL, block size (i64),
// min_compress_elements (i64).
//
// Invariants: a name that parses has a canonical form that parses back to
// the same spec and is its own canonical form, names a codec MakeCodec
// builds, and has a sensible bit width; settings that MakeCompressionConfig
// accepts build codecs for any block they allow; refusals are
// InvalidArgument naming the field.

#include <cstdint>
#include <string>

#include "absl/strings/match.h"
#include "core/codec.h"
#include "core/codec_spec.h"
#include "core/compression_config.h"
#include "tests/fuzz/fuzz_check.h"

namespace effadam {
namespace {

void CheckName(const std::string& name) {
  absl::StatusOr<CodecSpec> spec = ParseCodecSpec(name);
  if (!spec.ok()) {
    FUZZ_CHECK(spec.status().code() == absl::StatusCode::kInvalidArgument, "%s",
               spec.status().ToString().c_str());
    FUZZ_CHECK(absl::StrContains(spec.status().message(), "accepted codecs"),
               "refusal does not list the accepted names");
    return;
  }
  const std::string canonical = spec->ToString();
  absl::StatusOr<CodecSpec> again = ParseCodecSpec(canonical);
  FUZZ_CHECK(again.ok(), "canonical name '%s' of '%s' does not parse",
             canonical.c_str(), name.c_str());
  FUZZ_CHECK(*again == *spec, "'%s' -> '%s' is another spec", name.c_str(),
             canonical.c_str());
  FUZZ_CHECK(again->ToString() == canonical, "'%s' is not canonical",
             canonical.c_str());
  FUZZ_CHECK(spec->bits >= 1 && spec->bits <= 32, "bits %d", spec->bits);
  if (spec->kind == CodecKind::kTopK) {
    FUZZ_CHECK(spec->ratio > 0 && spec->ratio <= 1, "ratio %g", spec->ratio);
  }
  absl::StatusOr<std::unique_ptr<Codec>> codec = MakeCodec(*spec, 8);
  FUZZ_CHECK(codec.ok(), "'%s' parses but MakeCodec refuses it: %s",
             name.c_str(), codec.status().ToString().c_str());
  FUZZ_CHECK((*codec)->EncodedSize(8) > 0, "empty encoding");
}

}  // namespace
}  // namespace effadam

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace effadam;
  fuzz::Input in(data, size);
  const std::string worker = in.CString(64);
  const std::string server = in.CString(64);
  const int64_t block =
      static_cast<int64_t>(in.U32() | (static_cast<uint64_t>(in.U32()) << 32));
  const int64_t min_compress =
      static_cast<int64_t>(in.U32() | (static_cast<uint64_t>(in.U32()) << 32));
  CheckName(worker);
  CheckName(server);

  absl::StatusOr<CompressionConfig> c =
      MakeCompressionConfig(worker, server, block, min_compress, true, false);
  if (!c.ok()) {
    const std::string m(c.status().message());
    FUZZ_CHECK(c.status().code() == absl::StatusCode::kInvalidArgument, "%s",
               m.c_str());
    FUZZ_CHECK(absl::StartsWith(m, "worker_codec") ||
                   absl::StartsWith(m, "server_codec") ||
                   absl::StartsWith(m, "block_size") ||
                   absl::StartsWith(m, "min_compress_elements"),
               "refusal names no field: %s", m.c_str());
    return 0;
  }
  FUZZ_CHECK(ParseCodecSpec(worker).ok() && ParseCodecSpec(server).ok() &&
                 CheckBlockSize(block).ok() && min_compress >= 0,
             "accepted bad settings");
  FUZZ_CHECK(static_cast<int64_t>(c->options.block_size) == block &&
                 static_cast<int64_t>(c->options.min_compress_elements) ==
                     min_compress,
             "numbers changed");
  FUZZ_CHECK(MakeCodec(c->worker_codec, c->options.block_size).ok() &&
                 MakeCodec(c->server_codec, c->options.block_size).ok(),
             "accepted settings build no codec");
  return 0;
}
