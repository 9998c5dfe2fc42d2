#include "core/checksum.h"

#include "absl/strings/str_format.h"

// Header-only: the functions are inlined here, so the binaries need no
// libxxhash at run time.
#define XXH_INLINE_ALL
#include <xxhash.h>

namespace effadam {

uint64_t Xxh3_64(absl::string_view bytes) {
  return XXH3_64bits(bytes.data(), bytes.size());
}

std::string ParamsChecksum(absl::Span<const float> x) {
  return absl::StrFormat(
      "%016x", Xxh3_64(absl::string_view(
                   reinterpret_cast<const char*>(x.data()), x.size() * 4)));
}

}  // namespace effadam
