#ifndef EFFADAM_CORE_COMPRESSION_CONFIG_H_
#define EFFADAM_CORE_COMPRESSION_CONFIG_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/codec_spec.h"
#include "core/update_codec.h"

// Where a codec or a compression setting is chosen and checked: the
// CompressionConfig struct with the one set of defaults, its validation, and
// the parsing of the names that flags, JoinRequests and Python arguments
// carry. Pure; no flags (daemon/compression_flags.h defines those).

namespace effadam {

// The sign codec's spec (ParseCodecSpec("sign")).
CodecSpec SignCodecSpec();

// Both directions' codecs and where error feedback runs. The server, the
// workers, the simulator and the Python module must agree on them; these
// defaults are the project's one set (the flags and the Python arguments
// take theirs from here): sign both ways with error feedback on both sides,
// the setting of the paper. A plain value; not synchronized.
struct CompressionConfig {
  CodecSpec worker_codec = SignCodecSpec();  // Qw, worker -> server
  CodecSpec server_codec = SignCodecSpec();  // Qs, server -> worker
  CompressionOptions options;
  bool worker_error_feedback = true;
  bool server_error_feedback = true;
};

// Checks raw compression settings, as flags or a peer's JoinRequest carry
// them, and assembles the config: codec names must parse
// (ParseCodecSpec), block_size must suit every codec (CheckBlockSize),
// min_compress_elements must be >= 0. A bad value is InvalidArgument whose
// message starts with the field's name ("block_size must be ...").
absl::StatusOr<CompressionConfig> MakeCompressionConfig(
    absl::string_view worker_codec, absl::string_view server_codec,
    int64_t block_size, int64_t min_compress_elements,
    bool worker_error_feedback, bool server_error_feedback);

// Parses --error_feedback: both | worker | server | none.
absl::Status ParseErrorFeedback(absl::string_view name, CompressionConfig* c);
// The --error_feedback value that gives c's settings.
const char* ErrorFeedbackName(const CompressionConfig& c);

// The settings from the values of --worker_codec, --server_codec,
// --block_size, --min_compress_elements and --error_feedback, however they
// were given (the flags, the Python module's arguments); a bad value is
// InvalidArgument naming the flag.
absl::StatusOr<CompressionConfig> CompressionConfigFromFlagValues(
    absl::string_view worker_codec, absl::string_view server_codec,
    int64_t block_size, int64_t min_compress_elements,
    absl::string_view error_feedback);

}  // namespace effadam

#endif  // EFFADAM_CORE_COMPRESSION_CONFIG_H_
