#ifndef EFFADAM_SERVER_PARAMETER_SERVER_SERVICE_H_
#define EFFADAM_SERVER_PARAMETER_SERVER_SERVICE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/clock.h"
#include "common/logger.h"
#include "effadam/v1/parameter_server.grpc.pb.h"
#include "server/chunk_streams.h"
#include "server/parameter_server.h"
#include "server/round_coordinator.h"
#include "server/server_observer.h"

namespace effadam {

// Longest status message a refused call carries; a longer one is cut and
// says so (the server log has it whole). Well under gRPC's 8 KiB metadata
// limit, past which the client would see RESOURCE_EXHAUSTED instead.
inline constexpr size_t kMaxStatusMessageBytes = 1024;

// The effadam.v1.ParameterServer gRPC service (synchronous API): a thin
// adapter over a ParameterServer, which holds the state and the rules
// (docs/protocol.md). It checks the token, translates and validates
// messages (layouts, compression settings, chunks, updates as they
// arrive), reads and writes the chunks, and counts their serialized bytes.
// A rejected message ends its call with the code docs/protocol.md names
// and a message saying what was wrong (at most kMaxStatusMessageBytes), is
// counted once and logged (rate-limited) with the peer, and leaves x and E
// unchanged.
//
// Thread-safe: gRPC runs each call on its own thread, and a Train call
// sends each round's delta on a second thread while its own reads the
// update (SendRound); the service keeps no state of its own beyond the
// delta's messages (cut once per round) and the rejection log's rate
// limit.
class ParameterServerService final
    : public effadam::v1::ParameterServer::Service {
 public:
  // ParameterServer::Create's errors.
  static absl::StatusOr<std::unique_ptr<ParameterServerService>> Create(
      const ServerOptions& options);
  ~ParameterServerService() override;

  // The server the calls drive: its summary, checkpoints, shutdown.
  ParameterServer& server() { return *server_; }
  const ParameterServer& server() const { return *server_; }

  grpc::Status Join(grpc::ServerContext* context,
                    const v1::JoinRequest* request,
                    v1::JoinResponse* response) override;
  grpc::Status UploadParams(grpc::ServerContext* context,
                            grpc::ServerReader<v1::ParamsChunk>* reader,
                            v1::UploadParamsResponse* response) override;
  grpc::Status FetchParams(
      grpc::ServerContext* context, const v1::FetchParamsRequest* request,
      grpc::ServerWriter<v1::ParamsChunk>* writer) override;
  grpc::Status Status(grpc::ServerContext* context,
                      const v1::StatusRequest* request,
                      v1::StatusResponse* response) override;

 private:
  explicit ParameterServerService(std::unique_ptr<ParameterServer> server);

  // Every RPC ends here: counts and logs a rejection once, cuts a long
  // message, and translates the status.
  grpc::Status Finish(const grpc::ServerContext& context, const char* rpc,
                      int rank, const absl::Status& status) const;
  // OK, or UNAUTHENTICATED for a call without the token.
  absl::Status Authenticate(const grpc::ServerContext& context) const;

  absl::Status DoJoin(const v1::JoinRequest& request,
                      v1::JoinResponse* response);
  absl::Status DoUploadParams(grpc::ServerContext* context,
                              grpc::ServerReader<v1::ParamsChunk>* reader,
                              int* rank);
  // Reads the upload that starts with *chunk: x (this shard's
  // `num_elements`; memory grows with what arrives); every chunk must
  // carry `round`. Adds the serialized size of every chunk read to
  // *wire_bytes, also when it fails.
  absl::StatusOr<std::vector<float>> ReadParams(
      grpc::ServerReader<v1::ParamsChunk>* reader, int rank, int64_t round,
      size_t num_elements, v1::ParamsChunk* chunk, int64_t* wire_bytes);
  absl::Status DoFetchParams(grpc::ServerContext* context,
                             const v1::FetchParamsRequest& request,
                             grpc::ServerWriter<v1::ParamsChunk>* writer);
  // The Train RPC, registered with the stream type that writes serialized
  // messages (TrainStream; the constructor registers it in place of the
  // generated Train, which stays unimplemented).
  grpc::Status ServeTrain(grpc::ServerContext* context, TrainStream* stream);
  absl::Status DoTrain(grpc::ServerContext* context, TrainStream* stream,
                       int* rank);
  // The Train stream of `rank` after its first message `msg` was accepted.
  absl::Status RunTrain(grpc::ServerContext* context, TrainStream* stream,
                        int rank, v1::WorkerMessage* msg);
  // Sends `round`'s delta on `stream` while the round closes (on the
  // stream's second thread, beside the one reading the update): CHUNK
  // messages as its segments close, RESTART when it starts again, and
  // COMMIT or DROP once it closed (naming `update_taken_into`, see
  // WriteRoundMark); counts what was written. Returns after the round's
  // end was sent, or once `stop` is set (the update could not be read).
  absl::Status SendRound(const ServerCall& call, TrainStream* stream,
                         int64_t round, int64_t update_taken_into,
                         const std::atomic<bool>& stop);

  const std::unique_ptr<ParameterServer> server_;
  const ServerOptions& options_;  // server_'s
  const Clock& clock_;
  Logger& logger_;
  ServerObserver& observer_;
  // Rejected calls logged: a flood of them must not fill the disk.
  mutable LogRateLimiter rejection_log_;
  // The deltas' messages, cut once per round for every stream.
  DeltaMessages delta_messages_;
};

}  // namespace effadam

#endif  // EFFADAM_SERVER_PARAMETER_SERVER_SERVICE_H_
