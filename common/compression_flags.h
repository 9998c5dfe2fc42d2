#ifndef EFFADAM_COMMON_COMPRESSION_FLAGS_H_
#define EFFADAM_COMMON_COMPRESSION_FLAGS_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/codec_spec.h"
#include "common/update_codec.h"

namespace effadam {

// Both directions' codecs and where error feedback runs; the server, the
// workers and the simulator read the same flags.
struct CompressionConfig {
  CodecSpec worker_codec;  // Qw, worker -> server
  CodecSpec server_codec;  // Qs, server -> worker
  CompressionOptions options;
  bool worker_error_feedback = true;
  bool server_error_feedback = true;
};

// Parses --error_feedback: both | worker | server | none.
absl::Status ParseErrorFeedback(absl::string_view name, CompressionConfig* c);

// From --worker_codec, --server_codec, --block_size, --min_compress_elements,
// --error_feedback; a bad value is InvalidArgument naming the flag.
absl::StatusOr<CompressionConfig> CompressionConfigFromFlags();

}  // namespace effadam

#endif  // EFFADAM_COMMON_COMPRESSION_FLAGS_H_
