#include "core/compression_config.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "core/codec.h"

namespace effadam {

CodecSpec SignCodecSpec() {
  CodecSpec spec;
  spec.kind = CodecKind::kSign;
  spec.bits = 1;
  return spec;
}

absl::Status ParseErrorFeedback(absl::string_view name, CompressionConfig* c) {
  if (name != "both" && name != "worker" && name != "server" &&
      name != "none") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--error_feedback must be both, worker, server or none, got '", name,
        "'"));
  }
  c->worker_error_feedback = name == "both" || name == "worker";
  c->server_error_feedback = name == "both" || name == "server";
  return absl::OkStatus();
}

absl::StatusOr<CompressionConfig> MakeCompressionConfig(
    absl::string_view worker_codec, absl::string_view server_codec,
    int64_t block_size, int64_t min_compress_elements,
    bool worker_error_feedback, bool server_error_feedback) {
  CompressionConfig c;
  auto named = [](absl::string_view field, const absl::Status& s) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", s.message()));
  };
  auto w = ParseCodecSpec(worker_codec);
  if (!w.ok()) return named("worker_codec", w.status());
  auto s = ParseCodecSpec(server_codec);
  if (!s.ok()) return named("server_codec", s.status());
  c.worker_codec = *w;
  c.server_codec = *s;
  if (absl::Status st = CheckBlockSize(block_size); !st.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("block_size ", st.message()));
  }
  c.options.block_size = static_cast<size_t>(block_size);
  if (min_compress_elements < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "min_compress_elements must be >= 0, got ", min_compress_elements));
  }
  c.options.min_compress_elements = static_cast<size_t>(min_compress_elements);
  c.worker_error_feedback = worker_error_feedback;
  c.server_error_feedback = server_error_feedback;
  return c;
}

const char* ErrorFeedbackName(const CompressionConfig& c) {
  if (c.worker_error_feedback && c.server_error_feedback) return "both";
  if (c.worker_error_feedback) return "worker";
  if (c.server_error_feedback) return "server";
  return "none";
}

absl::StatusOr<CompressionConfig> CompressionConfigFromFlagValues(
    absl::string_view worker_codec, absl::string_view server_codec,
    int64_t block_size, int64_t min_compress_elements,
    absl::string_view error_feedback) {
  CompressionConfig feedback;
  if (absl::Status st = ParseErrorFeedback(error_feedback, &feedback);
      !st.ok()) {
    return st;
  }
  absl::StatusOr<CompressionConfig> c = MakeCompressionConfig(
      worker_codec, server_codec, block_size, min_compress_elements,
      feedback.worker_error_feedback, feedback.server_error_feedback);
  // The messages start with the field's name; here it is a flag.
  if (!c.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--", c.status().message()));
  }
  return c;
}

}  // namespace effadam
