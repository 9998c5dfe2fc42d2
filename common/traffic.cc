#include "common/traffic.h"

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

}  // namespace effadam
