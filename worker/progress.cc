#include "worker/progress.h"

#include "absl/strings/str_format.h"

namespace effadam {

std::string FormatBytes(int64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (b >= 1e9) return absl::StrFormat("%.2f GB", b / 1e9);
  if (b >= 1e6) return absl::StrFormat("%.2f MB", b / 1e6);
  if (b >= 1e3) return absl::StrFormat("%.1f kB", b / 1e3);
  return absl::StrFormat("%d B", bytes);
}

std::string FormatProgress(int64_t round, int64_t rounds, double train_loss,
                           const Evaluation& eval, const TrafficCounts& traffic,
                           double seconds) {
  return absl::StrFormat(
      "round %d/%d  loss %.4f  %s %.4f  up %s  down %s  (%.1fx fewer than "
      "fp32)  %.1f s",
      round, rounds, train_loss, eval.metric_name, eval.metric,
      FormatBytes(traffic.up().payload), FormatBytes(traffic.down().payload),
      traffic.compression_ratio(), seconds);
}

}  // namespace effadam
