#include "server/server_observer.h"

namespace effadam {

const char* TrafficDirectionName(TrafficDirection direction) {
  switch (direction) {
    case TrafficDirection::kWorkerToServer:
      return "worker_to_server";
    case TrafficDirection::kServerToWorker:
      return "server_to_worker";
    case TrafficDirection::kJoin:
      return "join";
  }
  return "unknown";
}

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
  }
  return "unknown";
}

}  // namespace effadam
