#include "daemon/threads_flag.h"

#include <cstdint>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"

ABSL_FLAG(int32_t, threads, 0,
          "Threads for the arithmetic of a round (over segments of the "
          "model); 0: the cores this process may use. Any count gives the "
          "same bits");

namespace effadam {

absl::Status ThreadsFromFlag(int* threads) {
  const int32_t t = absl::GetFlag(FLAGS_threads);
  if (t < 0 || t > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("--threads must be in [0, 1024], got ", t));
  }
  if (t > 0) *threads = t;
  return absl::OkStatus();
}

}  // namespace effadam
