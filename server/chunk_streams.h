#ifndef EFFADAM_SERVER_CHUNK_STREAMS_H_
#define EFFADAM_SERVER_CHUNK_STREAMS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/update_codec.h"
#include "effadam/v1/parameter_server.grpc.pb.h"
#include "grpcpp/support/byte_buffer.h"
#include "server/round_coordinator.h"
#include "transport/chunk_assembler.h"

namespace effadam {

// The Train stream as the service runs it: it reads WorkerMessages and
// writes ServerMessages it serialized itself (grpc::ByteBuffer;
// ParameterServerService registers Train with this type), so that a round's
// delta is serialized once for all streams and sent from its own buffer.
using TrainStream =
    grpc::ServerReaderWriter<grpc::ByteBuffer, v1::WorkerMessage>;

// The bytes of a Train stream (docs/protocol.md, "Chunks"), both ways,
// without a copy that the protocol does not need.
//
// UpdateReader reads one worker's updates, round after round, into one
// buffer per stream that is allocated once and reused (ChunkAssembler with
// reserve_total) and validates each segment as soon as its bytes are in,
// while they are in cache, so the update it hands on needs no second pass.
// One per stream; not thread-safe.
class UpdateReader {
 public:
  // The updates of `rank`, encoded by `codec`, in chunks of at most
  // max_chunk_bytes.
  static absl::StatusOr<UpdateReader> Create(
      std::shared_ptr<const UpdateCodec> codec, size_t max_chunk_bytes,
      int rank);

  // Reads the update of `round` whose first message is *msg (later ones
  // are read into *msg) and calls count_wire with the serialized size of
  // each message after the first. Whenever more segments are in and
  // validated, calls progress with the buffer (full size, shared, still
  // filling) and how many segments, from the first, it holds; an error of
  // progress ends the read with it. Returns the complete, validated update,
  // shared: the reader reuses its memory for a later round once every
  // holder let go of it. A refusal is tagged with its Rejection (a bad
  // payload is kInvalidPayload with "update from rank R: segment at ...").
  using Progress = std::function<absl::Status(
      const std::shared_ptr<const std::string>& buffer, size_t segments)>;
  absl::StatusOr<std::shared_ptr<const std::string>> Read(
      TrainStream* stream, int64_t round, v1::WorkerMessage* msg,
      const std::function<void(int64_t)>& count_wire, const Progress& progress);

 private:
  UpdateReader(std::shared_ptr<const UpdateCodec> codec,
               ChunkAssembler assembler, int rank);

  std::shared_ptr<const UpdateCodec> codec_;
  ChunkAssembler assembler_;
  int rank_;
};

// What of a round's delta can be sent: its buffer, which attempt at
// closing the round it is (ClosingRound), and how many of its first bytes
// hold their final values.
struct DeltaView {
  int64_t round = 0;
  int attempt = 0;
  std::shared_ptr<const std::string> delta;
  size_t ready_bytes = 0;
  int contributors = 0;
};

// The CHUNK ServerMessage that carries `size` bytes of `delta` from
// `offset`, serialized: the bytes protobuf writes for that message (fields
// in number order), as two slices, the fields before the payload (a few
// bytes) and the payload itself, which is `delta`'s memory, not a copy: the
// slice holds a reference to `delta` until gRPC is done with it, so the
// buffer is not reused for a later round's delta while it is being sent.
grpc::ByteBuffer SerializeDeltaChunk(
    int64_t round, const std::shared_ptr<const std::string>& delta,
    size_t offset, size_t size);

// A round's delta as the serialized CHUNK messages that carry it
// (SerializeDeltaChunk), cut once per round (and attempt) as its segments
// close and shared by every stream that sends it: a stream's Write only
// takes references to the slices, so the delta is serialized once per
// round and never copied in user space (gRPC copies it into the socket).
// Keeps the messages of the last round asked for (streams send the newest
// round; a late worker's older one is cut again). Thread-safe.
class DeltaMessages {
 public:
  explicit DeltaMessages(size_t max_chunk_bytes)
      : max_chunk_bytes_(max_chunk_bytes) {}

  // The messages of `view`'s delta, in order, of which the first *ready
  // (those within ready_bytes) are cut and never change again; the others
  // may be written by a later call, so a caller reads only the first
  // *ready.
  std::shared_ptr<const std::vector<grpc::ByteBuffer>> For(
      const DeltaView& view, size_t* ready) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  const size_t max_chunk_bytes_;
  absl::Mutex mu_;
  // The delta the messages were cut from (its slices hold it too).
  std::shared_ptr<const std::string> delta_ ABSL_GUARDED_BY(mu_);
  int64_t round_ ABSL_GUARDED_BY(mu_) = 0;
  int attempt_ ABSL_GUARDED_BY(mu_) = 0;
  size_t cut_ ABSL_GUARDED_BY(mu_) = 0;  // messages cut so far
  std::shared_ptr<std::vector<grpc::ByteBuffer>> messages_ ABSL_GUARDED_BY(mu_);
};

// Writes messages [begin, end) of `messages` (round `round`'s delta) to
// `stream` in order; *wire_bytes gets the serialized size of those
// written, also when a later one fails. Cancelled when the worker went
// away.
absl::Status WriteDelta(TrainStream* stream, int64_t round,
                        const std::vector<grpc::ByteBuffer>& messages,
                        size_t begin, size_t end, int64_t* wire_bytes);
// Writes the message without payload that ends a round's delta or restarts
// it (COMMIT, DROP, RESTART), counted the same way; `update_taken_into`
// (COMMIT, DROP; else 0): the round the worker's late update went into.
absl::Status WriteRoundMark(TrainStream* stream, int64_t round,
                            v1::ServerMessage::Kind kind, int contributors,
                            int64_t update_taken_into, int64_t* wire_bytes);

}  // namespace effadam

#endif  // EFFADAM_SERVER_CHUNK_STREAMS_H_
