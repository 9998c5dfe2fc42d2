#include "common/compression_flags.h"

#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"

ABSL_FLAG(std::string, worker_codec, "sign",
          "Codec of the worker -> server updates: fp32, bf16, fp16, sign, "
          "q2..q8, q2s..q8s (stochastic rounding), topk:R (0 < R <= 1)");
ABSL_FLAG(std::string, server_codec, "sign",
          "Codec of the server -> worker deltas (same names as "
          "--worker_codec)");
ABSL_FLAG(int64_t, block_size, 1024,
          "Elements per scale block (sign, qN) and per top-k selection "
          "(topk); a multiple of 8, at most 65536");
ABSL_FLAG(int64_t, min_compress_elements, 1024,
          "Tensors with fewer elements travel as fp32 (biases, norms)");
ABSL_FLAG(std::string, error_feedback, "both",
          "Where error feedback runs: both, worker, server or none");

namespace effadam {

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

absl::StatusOr<CompressionConfig> CompressionConfigFromFlags() {
  CompressionConfig c;
  auto named = [](absl::string_view flag, const absl::Status& s) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": ", s.message()));
  };
  auto w = ParseCodecSpec(absl::GetFlag(FLAGS_worker_codec));
  if (!w.ok()) return named("--worker_codec", w.status());
  auto s = ParseCodecSpec(absl::GetFlag(FLAGS_server_codec));
  if (!s.ok()) return named("--server_codec", s.status());
  c.worker_codec = *w;
  c.server_codec = *s;
  const int64_t block = absl::GetFlag(FLAGS_block_size);
  if (block <= 0 || block % 8 != 0 || block > 65536) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--block_size must be a positive multiple of 8 up to 65536, got ",
        block));
  }
  c.options.block_size = static_cast<size_t>(block);
  const int64_t min_compress = absl::GetFlag(FLAGS_min_compress_elements);
  if (min_compress < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--min_compress_elements must be >= 0, got ", min_compress));
  }
  c.options.min_compress_elements = static_cast<size_t>(min_compress);
  if (absl::Status st =
          ParseErrorFeedback(absl::GetFlag(FLAGS_error_feedback), &c);
      !st.ok()) {
    return st;
  }
  return c;
}

}  // namespace effadam
