#include "common/traffic.h"

#include "absl/strings/str_cat.h"
#include "common/json_writer.h"

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

double TrafficCounts::compression_ratio() const {
  const int64_t actual = round_payload();
  if (actual == 0) return 0;
  return static_cast<double>(fp32_equivalent()) / static_cast<double>(actual);
}

void AddRoundTraffic(const TrafficCounts& t, JsonObject* json) {
  json->Add("bytes_worker_to_server", t.up().payload)
      .Add("bytes_server_to_worker", t.down().payload)
      .Add("fp32_equivalent_bytes", t.fp32_equivalent())
      .Add("compression_ratio", t.compression_ratio());
}

void AddJoinAndWireTraffic(const TrafficCounts& t, JsonObject* json) {
  json->Add("bytes_join", t.join().payload);
  for (int d = 0; d < kNumTrafficDirections; ++d) {
    const auto direction = static_cast<TrafficDirection>(d);
    json->Add(absl::StrCat("wire_bytes_", TrafficDirectionName(direction)),
              t[direction].wire);
  }
}

}  // namespace effadam
