#include "worker/progress.h"

#include "absl/strings/str_format.h"

namespace effadam {

double Traffic::ratio() const {
  return total() > 0 ? static_cast<double>(fp32_total()) / total() : 0.0;
}

void AddTraffic(const Traffic& t, JsonObject* json) {
  json->Add("bytes_worker_to_server", t.worker_to_server)
      .Add("bytes_server_to_worker", t.server_to_worker)
      .Add("fp32_equivalent_bytes", t.fp32_total())
      .Add("compression_ratio", t.ratio());
}

std::string FormatBytes(int64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (b >= 1e9) return absl::StrFormat("%.2f GB", b / 1e9);
  if (b >= 1e6) return absl::StrFormat("%.2f MB", b / 1e6);
  if (b >= 1e3) return absl::StrFormat("%.1f kB", b / 1e3);
  return absl::StrFormat("%d B", bytes);
}

std::string FormatProgress(int64_t round, int64_t rounds, double train_loss,
                           const Evaluation& eval, const Traffic& traffic,
                           double seconds) {
  return absl::StrFormat(
      "round %d/%d  loss %.4f  %s %.4f  up %s  down %s  (%.1fx fewer than "
      "fp32)  %.1f s",
      round, rounds, train_loss, eval.metric_name, eval.metric,
      FormatBytes(traffic.worker_to_server),
      FormatBytes(traffic.server_to_worker), traffic.ratio(), seconds);
}

}  // namespace effadam
