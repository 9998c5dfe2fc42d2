#ifndef EFFADAM_DAEMON_THREADS_FLAG_H_
#define EFFADAM_DAEMON_THREADS_FLAG_H_

#include "absl/status/status.h"

namespace effadam {

// --threads, defined once for the binaries that run the round's arithmetic
// (effadam-server, effadam-worker, effadam-synthetic-worker): the threads
// of the options struct's `threads` field. 0 (the flag's default) keeps the
// struct's default, the cores the process may use. Sets *threads from the
// flag; InvalidArgument for a negative value or one over 1024.
absl::Status ThreadsFromFlag(int* threads);

}  // namespace effadam

#endif  // EFFADAM_DAEMON_THREADS_FLAG_H_
