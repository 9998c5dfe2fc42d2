// libFuzzer target: ParseCheckpoint, the reader of the server's checkpoint
// files (docs/faults.md), which a restarting server feeds whatever is on
// its disk.
//
// Input: one flag byte, then the file. With bit 0 set the target rewrites
// the last 4 bytes as the CRC-32 of the rest, so mutations get past the
// checksum and reach the header and the sizes behind it.
//
// Invariants: an accepted file describes a possible state (a valid layout,
// round >= 1, x and E of equal size, at most the layout's elements and all
// of them unsharded, every value finite, a shard within its count); written
// again and parsed, it is the same state.

#include <zlib.h>

#include <cmath>
#include <string>

#include "core/checksum.h"
#include "google/protobuf/stubs/logging.h"
#include "server/checkpoint.h"
#include "tests/fuzz/fuzz_check.h"

// Header strings with invalid UTF-8 are refused; protobuf need not say so
// ten thousand times a second.
extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using effadam::Checkpoint;
  effadam::fuzz::Input in(data, size);
  const uint8_t flags = in.Byte();
  std::string bytes = in.Rest();
  if ((flags & 1) && bytes.size() >= 4) {
    const uLong crc = crc32(0L, reinterpret_cast<const Bytef*>(bytes.data()),
                            static_cast<uInt>(bytes.size() - 4));
    for (int i = 0; i < 4; ++i) {
      bytes[bytes.size() - 4 + i] = static_cast<char>((crc >> (8 * i)) & 0xff);
    }
  }
  absl::StatusOr<Checkpoint> c = effadam::ParseCheckpoint(bytes);
  if (!c.ok()) return 0;
  const size_t n = c->state.params.size();
  FUZZ_CHECK(c->state.round >= 1, "round %lld",
             static_cast<long long>(c->state.round));
  FUZZ_CHECK(c->rounds_closed >= 0, "rounds_closed %lld",
             static_cast<long long>(c->rounds_closed));
  FUZZ_CHECK(n > 0 && n == c->state.error_memory.size() &&
                 n <= c->layout.num_elements(),
             "x %zu, E %zu, layout %zu", n, c->state.error_memory.size(),
             c->layout.num_elements());
  FUZZ_CHECK(c->num_shards >= 1 && c->shard >= 0 && c->shard < c->num_shards,
             "shard %d of %d", c->shard, c->num_shards);
  FUZZ_CHECK(c->num_shards > 1 || n == c->layout.num_elements(),
             "unsharded with %zu of %zu elements", n, c->layout.num_elements());
  for (size_t i = 0; i < n; ++i) {
    FUZZ_CHECK(std::isfinite(c->state.params[i]) &&
                   std::isfinite(c->state.error_memory[i]),
               "element %zu", i);
  }
  absl::StatusOr<Checkpoint> again =
      effadam::ParseCheckpoint(effadam::SerializeCheckpoint(*c));
  FUZZ_CHECK(again.ok(), "written again: %s",
             std::string(again.status().message()).c_str());
  FUZZ_CHECK(
      again->layout == c->layout && again->state.round == c->state.round &&
          again->rounds_closed == c->rounds_closed &&
          again->shard == c->shard && again->num_shards == c->num_shards &&
          again->compression.SerializeAsString() ==
              c->compression.SerializeAsString() &&
          effadam::ParamsChecksum(again->state.params) ==
              effadam::ParamsChecksum(c->state.params) &&
          effadam::ParamsChecksum(again->state.error_memory) ==
              effadam::ParamsChecksum(c->state.error_memory),
      "%s", "a different state after writing it again");
  return 0;
}
