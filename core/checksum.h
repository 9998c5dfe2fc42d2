#ifndef EFFADAM_CORE_CHECKSUM_H_
#define EFFADAM_CORE_CHECKSUM_H_

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace effadam {

// 64-bit FNV-1a of raw bytes: stable across processes and machines, so two
// replicas of x can be compared by a short string.
uint64_t Fnv1a64(absl::string_view bytes);

// Fnv1a64 of the float bytes of x, as 16 lowercase hex digits.
std::string ParamsChecksum(absl::Span<const float> x);

}  // namespace effadam

#endif  // EFFADAM_CORE_CHECKSUM_H_
