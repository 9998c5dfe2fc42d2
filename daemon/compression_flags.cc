#include "daemon/compression_flags.h"

#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "core/compression_config.h"

namespace {
// The flags' defaults are the struct's, so there is one set.
const effadam::CompressionConfig kDefaults;
}  // namespace

ABSL_FLAG(std::string, worker_codec, kDefaults.worker_codec.ToString(),
          "Codec of the worker -> server updates: fp32, bf16, fp16, sign, "
          "q2..q8, q2s..q8s (stochastic rounding), topk:R (0 < R <= 1)");
ABSL_FLAG(std::string, server_codec, kDefaults.server_codec.ToString(),
          "Codec of the server -> worker deltas (same names as "
          "--worker_codec)");
ABSL_FLAG(int64_t, block_size,
          static_cast<int64_t>(kDefaults.options.block_size),
          "Elements per scale block (sign, qN) and per top-k selection "
          "(topk); a multiple of 8, at most 65536");
ABSL_FLAG(int64_t, min_compress_elements,
          static_cast<int64_t>(kDefaults.options.min_compress_elements),
          "Tensors with fewer elements travel as fp32 (biases, norms)");
ABSL_FLAG(std::string, error_feedback, effadam::ErrorFeedbackName(kDefaults),
          "Where error feedback runs: both, worker, server or none");

namespace effadam {

absl::StatusOr<CompressionConfig> CompressionConfigFromFlags() {
  return CompressionConfigFromFlagValues(
      absl::GetFlag(FLAGS_worker_codec), absl::GetFlag(FLAGS_server_codec),
      absl::GetFlag(FLAGS_block_size),
      absl::GetFlag(FLAGS_min_compress_elements),
      absl::GetFlag(FLAGS_error_feedback));
}

}  // namespace effadam
