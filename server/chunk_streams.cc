#include "server/chunk_streams.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/wire_format_lite.h"
#include "grpcpp/support/slice.h"
#include "server/server_observer.h"

namespace effadam {
namespace {

// The rejection reason of a chunk the Train stream's assembler refused.
// The first chunk's round is checked before the assembler sees it, so a
// round it refuses is one that changed in the middle of an update.
Rejection TrainRejection(ChunkFault fault) {
  switch (fault) {
    case ChunkFault::kWrongRank:
      return Rejection::kWrongRank;
    case ChunkFault::kWrongRound:
    case ChunkFault::kBadOffset:
      return Rejection::kBadOffset;
    case ChunkFault::kTruncated:
      return Rejection::kTruncatedUpdate;
    case ChunkFault::kInvalidPayload:
      return Rejection::kInvalidPayload;
    case ChunkFault::kNone:
    case ChunkFault::kBadSize:
    case ChunkFault::kNonFinite:  // not checked for encoded updates
      break;
  }
  return Rejection::kBadChunkSize;
}

}  // namespace

absl::StatusOr<UpdateReader> UpdateReader::Create(
    std::shared_ptr<const UpdateCodec> codec, size_t max_chunk_bytes,
    int rank) {
  ChunkRules rules;
  rules.total_bytes = codec->encoded_size();
  rules.max_chunk_bytes = max_chunk_bytes;
  rules.rank = rank;
  rules.check_segments = codec.get();
  absl::StatusOr<ChunkAssembler> assembler = ChunkAssembler::Create(rules);
  if (!assembler.ok()) return assembler.status();
  return UpdateReader(std::move(codec), *std::move(assembler), rank);
}

UpdateReader::UpdateReader(std::shared_ptr<const UpdateCodec> codec,
                           ChunkAssembler assembler, int rank)
    : codec_(std::move(codec)), assembler_(std::move(assembler)), rank_(rank) {}

absl::StatusOr<std::shared_ptr<const std::string>> UpdateReader::Read(
    TrainStream* stream, int64_t round, v1::WorkerMessage* msg,
    const std::function<void(int64_t)>& count_wire, const Progress& progress) {
  assembler_.Start(round);
  size_t reported = 0;  // segments progress heard of
  while (true) {
    absl::Status s = assembler_.Add(msg->rank(), msg->round(), msg->offset(),
                                    msg->payload());
    if (s.ok() && assembler_.segments_validated() > reported) {
      reported = assembler_.segments_validated();
      if (absl::Status p = progress(assembler_.PartialBuffer(), reported);
          !p.ok()) {
        return p;
      }
    }
    if (s.ok() && assembler_.complete()) break;
    if (s.ok() && !stream->Read(msg)) s = assembler_.Finish();
    if (!s.ok()) {
      // A bad payload reads as it did when the engine checked it whole.
      const std::string what =
          assembler_.fault() == ChunkFault::kInvalidPayload
              ? absl::StrCat("update from rank ", rank_, ": ", s.message())
              : absl::StrCat("round ", round, "'s ", codec_->spec().ToString(),
                             " update from rank ", rank_, ": ", s.message());
      return Rejected(TrainRejection(assembler_.fault()),
                      absl::InvalidArgumentError(what));
    }
    count_wire(static_cast<int64_t>(msg->ByteSizeLong()));
  }
  return assembler_.SharedBuffer();
}

grpc::ByteBuffer SerializeDeltaChunk(
    int64_t round, const std::shared_ptr<const std::string>& delta,
    size_t offset, size_t size) {
  using google::protobuf::internal::WireFormatLite;
  // The fields before the payload (kind CHUNK is proto3's default and not
  // written), then the payload's tag and length, as protobuf orders them.
  v1::ServerMessage head_fields;
  head_fields.set_round(round);
  head_fields.set_offset(static_cast<int64_t>(offset));
  std::string head = head_fields.SerializeAsString();
  {
    google::protobuf::io::StringOutputStream out(&head);
    google::protobuf::io::CodedOutputStream coded(&out);
    coded.WriteTag(
        WireFormatLite::MakeTag(v1::ServerMessage::kPayloadFieldNumber,
                                WireFormatLite::WIRETYPE_LENGTH_DELIMITED));
    coded.WriteVarint32(static_cast<uint32_t>(size));
  }
  // The payload slice owns a reference to the delta, dropped by gRPC.
  auto* owner = new std::shared_ptr<const std::string>(delta);
  grpc::Slice slices[2] = {
      grpc::Slice(head),
      grpc::Slice(
          const_cast<char*>(delta->data() + offset), size,
          [](void* p) {
            delete static_cast<std::shared_ptr<const std::string>*>(p);
          },
          owner)};
  return grpc::ByteBuffer(slices, 2);
}

std::shared_ptr<const std::vector<grpc::ByteBuffer>> DeltaMessages::For(
    const DeltaView& view, size_t* ready) {
  absl::MutexLock lock(&mu_);
  const size_t size = view.delta->size();
  const size_t count = (size + max_chunk_bytes_ - 1) / max_chunk_bytes_;
  if (messages_ == nullptr || round_ != view.round ||
      attempt_ != view.attempt || delta_ != view.delta) {
    // Sized once: the vector never moves while streams read it. Streams
    // that still send the last round's messages keep those alive.
    messages_ = std::make_shared<std::vector<grpc::ByteBuffer>>(count);
    delta_ = view.delta;
    round_ = view.round;
    attempt_ = view.attempt;
    cut_ = 0;
  }
  // Chunks carry exactly min(max_chunk_bytes, bytes remaining)
  // (docs/protocol.md, "Chunks"): one is cut once all its bytes are final.
  while (cut_ < count) {
    const size_t offset = cut_ * max_chunk_bytes_;
    const size_t n = std::min(max_chunk_bytes_, size - offset);
    if (offset + n > view.ready_bytes) break;
    (*messages_)[cut_] = SerializeDeltaChunk(view.round, delta_, offset, n);
    ++cut_;
  }
  *ready = cut_;
  return messages_;
}

namespace {

// Writes one serialized message; false when the worker went away.
bool WriteBytes(TrainStream* stream, const grpc::ByteBuffer& bytes,
                int64_t* wire_bytes) {
  if (!stream->Write(bytes)) return false;
  *wire_bytes += static_cast<int64_t>(bytes.Length());
  return true;
}

}  // namespace

absl::Status WriteDelta(TrainStream* stream, int64_t round,
                        const std::vector<grpc::ByteBuffer>& messages,
                        size_t begin, size_t end, int64_t* wire_bytes) {
  for (size_t k = begin; k < end; ++k) {
    if (!WriteBytes(stream, messages[k], wire_bytes)) {
      return absl::CancelledError(
          absl::StrCat("the worker went away while the delta of round ", round,
                       " was sent"));
    }
  }
  return absl::OkStatus();
}

absl::Status WriteRoundMark(TrainStream* stream, int64_t round,
                            v1::ServerMessage::Kind kind, int contributors,
                            int64_t update_taken_into, int64_t* wire_bytes) {
  v1::ServerMessage msg;
  msg.set_round(round);
  msg.set_kind(kind);
  msg.set_contributors(contributors);
  msg.set_update_taken_into(update_taken_into);
  grpc::Slice bytes(msg.SerializeAsString());
  if (!WriteBytes(stream, grpc::ByteBuffer(&bytes, 1), wire_bytes)) {
    return absl::CancelledError(absl::StrCat(
        "the worker went away before the end of round ", round, " was sent"));
  }
  return absl::OkStatus();
}

}  // namespace effadam
