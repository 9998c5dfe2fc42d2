#ifndef EFFADAM_CORE_CHECKSUM_H_
#define EFFADAM_CORE_CHECKSUM_H_

// Checksums that name a vector's exact bits in a short string, so that two
// replicas of x (server, simulator, workers, checkpoints, the Python
// package) can be compared without moving them. XXH3-64 (xxHash, the
// Debian package libxxhash-dev, header only here): stable across processes,
// machines and xxHash releases (its output is frozen since 0.8.0), and
// about as fast as reading the bytes, so a 40 MB x costs a few ms and not
// the ~50 ms of a byte-at-a-time hash. Pure functions, thread-safe.

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace effadam {

// XXH3-64 of raw bytes, seed 0 (xxhsum -H3's value).
uint64_t Xxh3_64(absl::string_view bytes);

// Xxh3_64 of the float bytes of x (little-endian float32, as in memory), as
// 16 lowercase hex digits: the params_checksum of every summary, log line,
// checkpoint header and Join.
std::string ParamsChecksum(absl::Span<const float> x);

}  // namespace effadam

#endif  // EFFADAM_CORE_CHECKSUM_H_
