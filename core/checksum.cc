#include "core/checksum.h"

#include "absl/strings/str_format.h"

namespace effadam {

uint64_t Fnv1a64(absl::string_view bytes) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

std::string ParamsChecksum(absl::Span<const float> x) {
  return absl::StrFormat(
      "%016x", Fnv1a64(absl::string_view(
                   reinterpret_cast<const char*>(x.data()), x.size() * 4)));
}

}  // namespace effadam
