#ifndef EFFADAM_COMMON_TRAFFIC_H_
#define EFFADAM_COMMON_TRAFFIC_H_

#include <array>
#include <cstdint>

namespace effadam {

class JsonObject;

// Where bytes travel; the names are those of the summary JSON and of the
// metrics' `direction` label.
enum class TrafficDirection {
  kWorkerToServer,  // Train: WorkerMessage
  kServerToWorker,  // Train: ServerMessage
  kJoin,            // UploadParams and FetchParams: ParamsChunk
};
inline constexpr int kNumTrafficDirections = 3;

// "worker_to_server", "server_to_worker", "join".
const char* TrafficDirectionName(TrafficDirection direction);

// The bytes of one direction, counted three ways.
struct DirectionBytes {
  // Codec payloads (updates, deltas, parameters), as effadam-sim counts.
  int64_t payload = 0;
  // What fp32 Adam would have moved for the same rounds (0 for join).
  int64_t fp32 = 0;
  // The serialized protobuf messages that carried them (ByteSizeLong),
  // without gRPC's 5-byte prefix and HTTP/2 framing.
  int64_t wire = 0;

  DirectionBytes& operator+=(const DirectionBytes& other) {
    payload += other.payload;
    fp32 += other.fp32;
    wire += other.wire;
    return *this;
  }
};

// Bytes moved by a server, a worker or a simulated run, by direction: the
// one record of traffic that summaries, metrics, progress lines and the
// Python bindings read. A worker's counts add up over its shards
// (operator+=); in a run without failures the workers' counts add up to
// the server's. A plain value; not synchronized.
struct TrafficCounts {
  std::array<DirectionBytes, kNumTrafficDirections> by_direction;

  TrafficCounts& operator+=(const TrafficCounts& other) {
    for (int d = 0; d < kNumTrafficDirections; ++d) {
      by_direction[d] += other.by_direction[d];
    }
    return *this;
  }

  DirectionBytes& operator[](TrafficDirection d) {
    return by_direction[static_cast<int>(d)];
  }
  const DirectionBytes& operator[](TrafficDirection d) const {
    return by_direction[static_cast<int>(d)];
  }
  const DirectionBytes& up() const {
    return (*this)[TrafficDirection::kWorkerToServer];
  }
  const DirectionBytes& down() const {
    return (*this)[TrafficDirection::kServerToWorker];
  }
  const DirectionBytes& join() const {
    return (*this)[TrafficDirection::kJoin];
  }

  // Round payload bytes, both directions (join traffic is not a round's).
  int64_t round_payload() const { return up().payload + down().payload; }
  // What fp32 Adam would have moved, both directions.
  int64_t fp32_equivalent() const { return up().fp32 + down().fp32; }
  // fp32_equivalent / round_payload; 0 before any traffic.
  double compression_ratio() const;
};

// The round traffic fields of every summary JSON (effadam-server,
// effadam-worker, effadam-sim, the synthetic worker): bytes_worker_to_server,
// bytes_server_to_worker, fp32_equivalent_bytes, compression_ratio.
void AddRoundTraffic(const TrafficCounts& traffic, JsonObject* json);
// The fields of the daemons' summaries beyond those: bytes_join and
// wire_bytes_worker_to_server, wire_bytes_server_to_worker, wire_bytes_join.
void AddJoinAndWireTraffic(const TrafficCounts& traffic, JsonObject* json);

}  // namespace effadam

#endif  // EFFADAM_COMMON_TRAFFIC_H_
