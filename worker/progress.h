#ifndef EFFADAM_WORKER_PROGRESS_H_
#define EFFADAM_WORKER_PROGRESS_H_

#include <cstdint>
#include <string>

#include "common/json_writer.h"
#include "worker/model.h"

namespace effadam {

// Payload bytes moved by a run and what fp32 Adam would have moved for the
// same rounds and workers.
struct Traffic {
  int64_t worker_to_server = 0;
  int64_t server_to_worker = 0;
  int64_t fp32_worker_to_server = 0;
  int64_t fp32_server_to_worker = 0;

  int64_t total() const { return worker_to_server + server_to_worker; }
  int64_t fp32_total() const {
    return fp32_worker_to_server + fp32_server_to_worker;
  }
  // fp32 bytes / actual bytes; 0 before any traffic.
  double ratio() const;
};

// One human-readable progress line:
// "round 200/1000  loss 0.4123  test_accuracy 0.8412  up 1.2 MB  down 1.2 MB
//  (31.0x fewer than fp32)  12.3 s"
std::string FormatProgress(int64_t round, int64_t rounds, double train_loss,
                           const Evaluation& eval, const Traffic& traffic,
                           double seconds);

// Adds the traffic fields every summary JSON carries:
// bytes_worker_to_server, bytes_server_to_worker, fp32_equivalent_bytes,
// compression_ratio.
void AddTraffic(const Traffic& traffic, JsonObject* json);

// "12.3 MB", "980 kB", ... (decimal units).
std::string FormatBytes(int64_t bytes);

}  // namespace effadam

#endif  // EFFADAM_WORKER_PROGRESS_H_
