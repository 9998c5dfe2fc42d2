// libFuzzer target: ChunkAssembler against a reference model of the chunk
// rules (docs/protocol.md, "Chunks"), on sequences of chunks.
//
// Input: total units (u16, mod 2048), unit/flags (u8: bit 0 float32 units,
// bit 1 finite_float32, bit 2 chunks name a rank), max_chunk_bytes (u8),
// rank (u8), then operations until the input ends: Start, Finish,
// TakeBuffer, or Add of a chunk whose rank, round, offset and size are
// either the expected ones or taken from the input.
//
// Invariants: the assembler accepts exactly the chunks the model accepts,
// with the model's fault when it refuses; a refusal is final until Start;
// a complete buffer is the accepted payloads in order and arrived in
// exactly ceil(total / full chunk) chunks.

#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <string>

#include "tests/fuzz/fuzz_check.h"
#include "transport/chunk_assembler.h"

namespace effadam {
namespace {

// The rules written out once more, as plainly as possible.
struct Model {
  ChunkRules rules;
  std::optional<int64_t> round;
  std::string received;
  ChunkFault fault = ChunkFault::kNone;
  size_t chunks = 0;

  size_t full() const {
    return rules.max_chunk_bytes - rules.max_chunk_bytes % rules.unit;
  }

  ChunkFault Judge(int rank, int64_t r, int64_t offset,
                   const std::string& payload) {
    if (rules.rank >= 0 && rank != rules.rank) return ChunkFault::kWrongRank;
    if (!round.has_value()) round = r;
    if (r != *round) return ChunkFault::kWrongRound;
    if (offset < 0 ||
        static_cast<uint64_t>(offset) * rules.unit != received.size()) {
      return ChunkFault::kBadOffset;
    }
    const size_t remaining = rules.total_bytes - received.size();
    const size_t want = remaining < full() ? remaining : full();
    if (payload.empty() || payload.size() != want) return ChunkFault::kBadSize;
    if (rules.finite_float32) {
      for (size_t i = 0; i < payload.size(); i += 4) {
        float v;
        std::memcpy(&v, payload.data() + i, 4);
        if (std::isnan(v) || std::isinf(v)) return ChunkFault::kNonFinite;
      }
    }
    return ChunkFault::kNone;
  }
};

}  // namespace
}  // namespace effadam

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace effadam;
  fuzz::Input in(data, size);
  ChunkRules rules;
  const size_t units = in.U16() % 2048;
  const uint8_t flags = in.Byte();
  rules.unit = (flags & 1) ? 4 : 1;
  rules.total_bytes = units * rules.unit;
  rules.finite_float32 = (flags & 2) != 0;
  rules.max_chunk_bytes = in.Byte();
  const uint8_t rank = in.Byte();
  rules.rank = (flags & 4) ? rank % 4 : -1;

  absl::StatusOr<ChunkAssembler> made = ChunkAssembler::Create(rules);
  const bool sane = rules.total_bytes > 0 &&
                    rules.max_chunk_bytes >= rules.unit &&
                    (!rules.finite_float32 || rules.unit == 4);
  FUZZ_CHECK(made.ok() == sane, "Create: %s", made.status().ToString().c_str());
  if (!made.ok()) return 0;
  ChunkAssembler& a = *made;
  Model m;
  m.rules = rules;
  m.round = std::nullopt;
  a.Start(std::nullopt);
  const size_t limit =
      (rules.total_bytes + m.full() - 1) / m.full();  // chunks per buffer

  while (in.remaining() > 0) {
    const uint8_t op = in.Byte();
    switch (op % 8) {
      case 0: {  // Start
        std::optional<int64_t> r;
        if (op & 8) r = in.Byte();
        a.Start(r);
        m.round = r;
        m.received.clear();
        m.fault = ChunkFault::kNone;
        m.chunks = 0;
        break;
      }
      case 1: {  // Finish
        const absl::Status s = a.Finish();
        const bool complete = m.fault == ChunkFault::kNone &&
                              m.received.size() == rules.total_bytes;
        FUZZ_CHECK(s.ok() == complete, "Finish: %s", s.ToString().c_str());
        if (!complete && m.fault == ChunkFault::kNone) {
          m.fault = ChunkFault::kTruncated;
          m.received.clear();
        }
        break;
      }
      case 2: {  // TakeBuffer
        const bool complete = m.fault == ChunkFault::kNone &&
                              m.received.size() == rules.total_bytes;
        const std::string got = a.TakeBuffer();
        FUZZ_CHECK(got == (complete ? m.received : std::string()),
                   "TakeBuffer gave %zu bytes, the model %zu", got.size(),
                   m.received.size());
        if (complete) {
          FUZZ_CHECK(m.chunks == limit, "%zu chunks, want %zu", m.chunks,
                     limit);
          m.received.clear();
          m.chunks = 0;
        }
        break;
      }
      default: {  // Add
        const uint8_t how = in.Byte();
        const int chunk_rank = (how & 1) ? rules.rank : in.Byte() % 5 - 1;
        const int64_t round =
            (how & 2) && m.round.has_value() ? *m.round : in.Byte() % 4;
        const int64_t offset =
            (how & 4) ? static_cast<int64_t>(m.received.size() / rules.unit)
                      : static_cast<int64_t>(static_cast<int32_t>(in.U32()));
        const size_t remaining = rules.total_bytes - m.received.size();
        const size_t want = remaining < m.full() ? remaining : m.full();
        const size_t n = (how & 8) ? want : in.U16() % 600;
        std::string payload = in.Bytes(n);
        payload.resize(n, '\0');  // zeros: finite floats
        if ((how & 16) && payload.size() >= 4) {
          const float nan = std::numeric_limits<float>::quiet_NaN();
          std::memcpy(&payload[(in.Byte() % (payload.size() / 4)) * 4], &nan,
                      4);
        }
        const absl::Status s = a.Add(chunk_rank, round, offset, payload);
        ChunkFault want_fault = m.fault;
        if (want_fault == ChunkFault::kNone) {
          want_fault = m.Judge(chunk_rank, round, offset, payload);
          if (want_fault == ChunkFault::kNone) {
            m.received += payload;
            ++m.chunks;
          } else {
            m.fault = want_fault;
            m.received.clear();
          }
        }
        FUZZ_CHECK(s.ok() == (want_fault == ChunkFault::kNone),
                   "Add: %s, model fault %s", s.ToString().c_str(),
                   ChunkFaultName(want_fault));
        if (!s.ok()) {
          FUZZ_CHECK(s.code() == absl::StatusCode::kInvalidArgument, "code");
        }
        break;
      }
    }
    FUZZ_CHECK(a.fault() == m.fault, "fault %s, model %s",
               ChunkFaultName(a.fault()), ChunkFaultName(m.fault));
    FUZZ_CHECK(a.received_bytes() == m.received.size(),
               "received %zu, model %zu", a.received_bytes(),
               m.received.size());
    FUZZ_CHECK(a.complete() == (m.fault == ChunkFault::kNone &&
                                m.received.size() == rules.total_bytes),
               "complete()");
    FUZZ_CHECK(m.chunks <= limit, "%zu chunks, bound %zu", m.chunks, limit);
  }
  return 0;
}
