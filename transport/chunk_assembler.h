#ifndef EFFADAM_TRANSPORT_CHUNK_ASSEMBLER_H_
#define EFFADAM_TRANSPORT_CHUNK_ASSEMBLER_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/update_codec.h"

namespace effadam {

// Why ChunkAssembler refused a chunk (or the end of a stream).
enum class ChunkFault {
  kNone,
  kWrongRank,       // the chunk names another rank than the stream's
  kWrongRound,      // the chunk belongs to another round than the buffer's
  kBadOffset,       // it does not start where the previous chunk ended
  kBadSize,         // empty, not whole elements, over max_chunk_bytes, past the
                    // end, or shorter than min(max_chunk_bytes, remaining)
  kNonFinite,       // a float32 element is NaN or Inf (finite_float32 buffers)
  kInvalidPayload,  // a complete segment does not validate (check_segments)
  kTruncated,       // the stream ended before the buffer was complete
};

// "wrong_rank", "wrong_round", ...; for tests and fuzzers.
const char* ChunkFaultName(ChunkFault fault);

// What a buffer sent in chunks must look like (docs/protocol.md, "Chunks").
struct ChunkRules {
  // Exact size of the complete buffer; a multiple of `unit`, > 0.
  size_t total_bytes = 0;
  // Largest payload of one chunk; at least one unit.
  size_t max_chunk_bytes = 0;
  // Offsets count units of this many bytes and chunks carry whole units:
  // 1 for encoded updates and deltas (byte offsets), 4 for float32
  // parameters (element offsets).
  size_t unit = 1;
  // Every unit is a float32 that must be finite (needs unit == 4).
  bool finite_float32 = false;
  // The rank every chunk must name, or -1 when chunks carry no rank.
  int rank = -1;
  // Allocate the whole buffer at the first chunk (no regrowth) and keep it
  // for the next buffers; false makes memory follow what arrives, for a
  // size a client only declared.
  bool reserve_total = true;
  // When set, every segment of this codec is validated
  // (UpdateCodec::ValidateSegment) as soon as its last byte arrived, while
  // its bytes are still in cache, and a bad one is refused like a bad chunk
  // (kInvalidPayload): a complete buffer is then a valid encoded update.
  // Needs reserve_total and total_bytes == encoded_size(); not owned, must
  // outlive the assembler.
  const UpdateCodec* check_segments = nullptr;
};

// Reassembles one buffer (an encoded update, a delta, the parameters) from
// the chunks a stream carries, checking each chunk before it is kept:
// the rank and round it names, that it starts where the previous one
// ended, and its size. Every chunk must carry exactly
//   min(max_chunk_bytes rounded down to whole units, bytes remaining),
// so a buffer of T bytes arrives in exactly ceil(T / that) chunks. The
// first refusal is final until Start(): a stream that sent a bad chunk is
// ended by its owner. Pure (no I/O, no clock); the server and the worker
// client share it so both ends enforce the same rules.
//
// With reserve_total the buffer lives across Start()s: chunks are copied
// straight into it, and it is allocated (and its pages touched) once, not
// per buffer, as long as whoever it was shared with (SharedBuffer) lets go
// of it before the next buffer's first chunk. Not thread-safe; a shared
// buffer may be read on any thread.
class ChunkAssembler {
 public:
  // InvalidArgument when the rules cannot be met by any stream.
  static absl::StatusOr<ChunkAssembler> Create(const ChunkRules& rules);

  // Drops what was received and starts a new buffer whose chunks must all
  // carry `round`; nullopt takes the first chunk's round.
  void Start(std::optional<int64_t> round);

  // Checks one chunk and appends its payload. InvalidArgument saying what
  // is wrong otherwise (fault() tells why); the buffer is then dropped and
  // every later Add fails the same way.
  absl::Status Add(int rank, int64_t round, int64_t offset,
                   absl::string_view payload);

  // The stream ended: OK when the buffer is complete, else InvalidArgument
  // with fault() kTruncated (unless an earlier fault stands).
  absl::Status Finish();

  bool complete() const {
    return fault_ == ChunkFault::kNone && received_ == rules_.total_bytes;
  }
  ChunkFault fault() const { return fault_; }
  size_t received_bytes() const { return received_; }
  // The buffer's round; nullopt before the first chunk of Start(nullopt).
  std::optional<int64_t> round() const { return round_; }
  const ChunkRules& rules() const { return rules_; }
  // Payload bytes of a chunk that is not the last: max_chunk_bytes rounded
  // down to whole units.
  size_t full_chunk_bytes() const { return full_chunk_; }

  // The complete buffer, moved out; empty unless complete().
  std::string TakeBuffer();
  // The complete buffer, shared (null unless complete()). The next buffer
  // reuses its memory if every other owner has let go of it by the next
  // buffer's first chunk, and takes new memory otherwise, so a holder never
  // sees it change.
  std::shared_ptr<const std::string> SharedBuffer() const;
  // With check_segments: how many segments, from the first, are complete
  // and validated, and the buffer they are in, shared while it still fills
  // (null before the first chunk and after a refusal). It has
  // total_bytes from the first chunk on and never changes size; bytes past
  // the validated segments are being written, so a reader on another
  // thread reads only the segments it was told are in (after the writer
  // told it, under a lock they share).
  size_t segments_validated() const { return next_segment_; }
  std::shared_ptr<const std::string> PartialBuffer() const;

 private:
  explicit ChunkAssembler(const ChunkRules& rules);

  absl::Status Fail(ChunkFault fault, std::string message);
  // "offset 12" or "element 3", as the rules count.
  std::string Position(int64_t units) const;

  ChunkRules rules_;
  size_t full_chunk_ = 0;
  std::optional<int64_t> round_;
  // What arrived (appended), or, when overwrite_, the last buffer's memory
  // of total_bytes being written over (its first received_ bytes are the
  // new buffer's); null before the first chunk and after a refusal.
  std::shared_ptr<std::string> buffer_;
  bool overwrite_ = false;
  size_t received_ = 0;
  size_t next_segment_ = 0;  // of check_segments, the first not validated
  ChunkFault fault_ = ChunkFault::kNone;
  absl::Status status_;
};

}  // namespace effadam

#endif  // EFFADAM_TRANSPORT_CHUNK_ASSEMBLER_H_
