#ifndef EFFADAM_DAEMON_COMPRESSION_FLAGS_H_
#define EFFADAM_DAEMON_COMPRESSION_FLAGS_H_

// The compression flags (--worker_codec, --server_codec, --block_size,
// --min_compress_elements, --error_feedback) of the binaries that link
// effadam_flags; their defaults are CompressionConfig's.

#include "absl/status/statusor.h"
#include "core/compression_config.h"

namespace effadam {

// CompressionConfigFromFlagValues of the flags' values.
absl::StatusOr<CompressionConfig> CompressionConfigFromFlags();

}  // namespace effadam

#endif  // EFFADAM_DAEMON_COMPRESSION_FLAGS_H_
