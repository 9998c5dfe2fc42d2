#ifndef EFFADAM_WORKER_PROGRESS_H_
#define EFFADAM_WORKER_PROGRESS_H_

#include <cstdint>
#include <string>

#include "common/traffic.h"
#include "worker/model.h"

namespace effadam {

// One human-readable progress line:
// "round 200/1000  loss 0.4123  test_accuracy 0.8412  up 1.2 MB  down 1.2 MB
//  (31.0x fewer than fp32)  12.3 s"
std::string FormatProgress(int64_t round, int64_t rounds, double train_loss,
                           const Evaluation& eval, const TrafficCounts& traffic,
                           double seconds);

// "12.3 MB", "980 kB", ... (decimal units).
std::string FormatBytes(int64_t bytes);

}  // namespace effadam

#endif  // EFFADAM_WORKER_PROGRESS_H_
