#include "server/server_observer.h"

#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"

namespace effadam {
namespace {

// The type URL of the payload Rejected() adds; its value is the enum's
// number in decimal.
constexpr char kRejectionPayload[] = "effadam.dev/rejection";

}  // namespace

const char* RejectionName(Rejection why) {
  switch (why) {
    case Rejection::kBadLayout:
      return "bad_layout";
    case Rejection::kLayoutMismatch:
      return "layout_mismatch";
    case Rejection::kCompressionMismatch:
      return "compression_mismatch";
    case Rejection::kBadCompression:
      return "bad_compression";
    case Rejection::kBadRank:
      return "bad_rank";
    case Rejection::kRankTaken:
      return "rank_taken";
    case Rejection::kNoFreeRank:
      return "no_free_rank";
    case Rejection::kTrainingEnded:
      return "training_ended";
    case Rejection::kBadUpload:
      return "bad_upload";
    case Rejection::kNotReady:
      return "not_ready";
    case Rejection::kUnknownRank:
      return "unknown_rank";
    case Rejection::kDuplicateStream:
      return "duplicate_stream";
    case Rejection::kWrongRank:
      return "wrong_rank";
    case Rejection::kWrongRound:
      return "wrong_round";
    case Rejection::kBadOffset:
      return "bad_offset";
    case Rejection::kBadChunkSize:
      return "bad_chunk_size";
    case Rejection::kTruncatedUpdate:
      return "truncated_update";
    case Rejection::kInvalidPayload:
      return "invalid_payload";
    case Rejection::kLagging:
      return "lagging";
    case Rejection::kUnauthenticated:
      return "unauthenticated";
    case Rejection::kUnparseable:
      return "unparseable";
    case Rejection::kProtocolMismatch:
      return "protocol_mismatch";
  }
  return "unknown";
}

absl::Status Rejected(Rejection why, absl::Status status) {
  status.SetPayload(kRejectionPayload,
                    absl::Cord(std::to_string(static_cast<int>(why))));
  return status;
}

std::optional<Rejection> RejectionOf(const absl::Status& status) {
  const auto mark = status.GetPayload(kRejectionPayload);
  int value = 0;
  if (!mark.has_value() || !absl::SimpleAtoi(std::string(*mark), &value) ||
      value < 0 || value >= kNumRejections) {
    return std::nullopt;
  }
  return static_cast<Rejection>(value);
}

ServerObserver& ServerObserver::None() {
  static ServerObserver* const none = new ServerObserver;
  return *none;
}

}  // namespace effadam
