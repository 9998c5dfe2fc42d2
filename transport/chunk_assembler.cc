#include "transport/chunk_assembler.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace effadam {

const char* ChunkFaultName(ChunkFault fault) {
  switch (fault) {
    case ChunkFault::kNone:
      return "none";
    case ChunkFault::kWrongRank:
      return "wrong_rank";
    case ChunkFault::kWrongRound:
      return "wrong_round";
    case ChunkFault::kBadOffset:
      return "bad_offset";
    case ChunkFault::kBadSize:
      return "bad_size";
    case ChunkFault::kNonFinite:
      return "non_finite";
    case ChunkFault::kInvalidPayload:
      return "invalid_payload";
    case ChunkFault::kTruncated:
      return "truncated";
  }
  return "unknown";
}

absl::StatusOr<ChunkAssembler> ChunkAssembler::Create(const ChunkRules& rules) {
  if (rules.unit == 0 || rules.total_bytes == 0 ||
      rules.total_bytes % rules.unit != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunked buffer of ", rules.total_bytes,
                     " bytes is not a positive whole number of ", rules.unit,
                     "-byte units"));
  }
  if (rules.max_chunk_bytes < rules.unit) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_chunk_bytes ", rules.max_chunk_bytes,
                     " is smaller than one ", rules.unit, "-byte unit"));
  }
  if (rules.finite_float32 && rules.unit != sizeof(float)) {
    return absl::InvalidArgumentError(
        "finite_float32 needs 4-byte units (float32 elements)");
  }
  if (rules.check_segments != nullptr &&
      (!rules.reserve_total ||
       rules.check_segments->encoded_size() != rules.total_bytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat("check_segments needs reserve_total and a codec of ",
                     rules.total_bytes, " bytes"));
  }
  return ChunkAssembler(rules);
}

ChunkAssembler::ChunkAssembler(const ChunkRules& rules)
    : rules_(rules),
      full_chunk_(rules.max_chunk_bytes / rules.unit * rules.unit) {}

void ChunkAssembler::Start(std::optional<int64_t> round) {
  round_ = round;
  received_ = 0;
  next_segment_ = 0;
  fault_ = ChunkFault::kNone;
  status_ = absl::OkStatus();
}

std::string ChunkAssembler::Position(int64_t units) const {
  return absl::StrCat(rules_.unit == 1 ? "offset " : "element ", units);
}

absl::Status ChunkAssembler::Fail(ChunkFault fault, std::string message) {
  fault_ = fault;
  status_ = absl::InvalidArgumentError(std::move(message));
  // A refused buffer is never handed out, and its memory goes at once.
  buffer_.reset();
  received_ = 0;
  return status_;
}

absl::Status ChunkAssembler::Add(int rank, int64_t round, int64_t offset,
                                 absl::string_view payload) {
  if (fault_ != ChunkFault::kNone) return status_;
  const size_t received = received_;
  if (rules_.rank >= 0 && rank != rules_.rank) {
    return Fail(ChunkFault::kWrongRank,
                absl::StrCat("a chunk names rank ", rank, " on rank ",
                             rules_.rank, "'s stream"));
  }
  if (!round_.has_value()) round_ = round;
  if (round != *round_) {
    return Fail(
        ChunkFault::kWrongRound,
        absl::StrCat("a chunk of round ", round, " arrived where round ",
                     *round_, " was expected (after ", received,
                     " bytes of it)"));
  }
  const int64_t expected = static_cast<int64_t>(received / rules_.unit);
  if (offset != expected) {
    return Fail(ChunkFault::kBadOffset,
                absl::StrCat("chunk at ", Position(offset), "; expected ",
                             Position(expected),
                             " (chunks arrive in order, without gaps)"));
  }
  const size_t size = payload.size();
  const size_t remaining = rules_.total_bytes - received;
  auto where = [&] {
    return absl::StrCat("chunk at ", Position(offset), " has ", size, " bytes");
  };
  if (size == 0) {
    return Fail(ChunkFault::kBadSize,
                absl::StrCat("empty chunk at ", Position(offset)));
  }
  if (size > rules_.max_chunk_bytes) {
    return Fail(ChunkFault::kBadSize,
                absl::StrCat(where(), ", over max_chunk_bytes (",
                             rules_.max_chunk_bytes, ")"));
  }
  if (size % rules_.unit != 0) {
    return Fail(ChunkFault::kBadSize,
                absl::StrCat(where(), ", not a whole number of ", rules_.unit,
                             "-byte elements"));
  }
  if (size > remaining) {
    return Fail(ChunkFault::kBadSize,
                absl::StrCat(where(), " but only ", remaining, " of the ",
                             rules_.total_bytes,
                             " bytes remain: the buffer would be too long"));
  }
  // Equal-sized chunks bound a buffer's chunk count, so a stream cannot
  // make the receiver do per-message work for every byte.
  const size_t want = std::min(full_chunk_, remaining);
  if (size != want) {
    return Fail(
        ChunkFault::kBadSize,
        absl::StrCat(where(), "; every chunk must carry min(", full_chunk_,
                     ", bytes remaining) = ", want, " bytes"));
  }
  if (rules_.finite_float32) {
    for (size_t i = 0; i < size; i += sizeof(float)) {
      float v;
      std::memcpy(&v, payload.data() + i, sizeof v);
      if (!std::isfinite(v)) {
        return Fail(ChunkFault::kNonFinite,
                    absl::StrCat("element ", (received + i) / sizeof(float),
                                 " is not finite (", v, ")"));
      }
    }
  }
  if (received == 0) {
    // The memory of the last buffer, unless someone still holds it: written
    // over in place. Fresh memory is only reserved (not zeroed, pages not
    // touched twice) and filled by appending. The fence pairs with the
    // release of the last other owner's reference, so its reads are over
    // before the bytes are overwritten.
    const bool reusable = buffer_ != nullptr && buffer_.use_count() == 1;
    std::atomic_thread_fence(std::memory_order_acquire);
    overwrite_ = reusable && rules_.reserve_total &&
                 buffer_->size() == rules_.total_bytes;
    if (!reusable) buffer_ = std::make_shared<std::string>();
    if (!overwrite_ && rules_.check_segments != nullptr) {
      // Shared while it fills (PartialBuffer), so its size never changes
      // under a reader: the whole buffer now, written in place.
      buffer_->assign(rules_.total_bytes, '\0');
      overwrite_ = true;
    }
    if (!overwrite_) {
      buffer_->clear();
      if (rules_.reserve_total) buffer_->reserve(rules_.total_bytes);
    }
  }
  if (overwrite_) {
    std::memcpy(buffer_->data() + received, payload.data(), size);
  } else {
    buffer_->append(payload.data(), size);
  }
  received_ = received + size;
  if (const UpdateCodec* codec = rules_.check_segments) {
    const std::vector<Segment>& segments = codec->segments();
    const absl::string_view bytes(*buffer_);
    while (next_segment_ < segments.size() &&
           segments[next_segment_].byte_begin +
                   segments[next_segment_].byte_size <=
               received_) {
      absl::Status s = codec->ValidateSegment(next_segment_, bytes);
      if (!s.ok()) {
        return Fail(ChunkFault::kInvalidPayload, std::string(s.message()));
      }
      ++next_segment_;
    }
  }
  return absl::OkStatus();
}

absl::Status ChunkAssembler::Finish() {
  if (fault_ != ChunkFault::kNone) return status_;
  if (complete()) return absl::OkStatus();
  return Fail(ChunkFault::kTruncated,
              absl::StrCat("the stream ended after ", received_, " of ",
                           rules_.total_bytes, " bytes"));
}

std::string ChunkAssembler::TakeBuffer() {
  if (!complete()) return std::string();
  std::shared_ptr<std::string> buffer = std::move(buffer_);
  received_ = 0;
  if (buffer.use_count() == 1) return std::move(*buffer);
  return *buffer;
}

std::shared_ptr<const std::string> ChunkAssembler::SharedBuffer() const {
  if (!complete()) return nullptr;
  return buffer_;
}

std::shared_ptr<const std::string> ChunkAssembler::PartialBuffer() const {
  if (rules_.check_segments == nullptr || fault_ != ChunkFault::kNone ||
      received_ == 0) {
    return nullptr;
  }
  return buffer_;
}

}  // namespace effadam
