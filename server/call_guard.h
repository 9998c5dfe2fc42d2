#ifndef EFFADAM_SERVER_CALL_GUARD_H_
#define EFFADAM_SERVER_CALL_GUARD_H_

// What the gRPC layer of effadam-server adds below the service, for every
// call of every service (a server interceptor, installed by Install):
//
// - A request that does not parse as its method's message (garbage bytes on
//   Join, Status, FetchParams) ends with INVALID_ARGUMENT and a message
//   naming the method, instead of gRPC's INTERNAL with no message, and is
//   counted as a rejection (Rejection::kUnparseable) on the observer.
// - At most CallLimits::max_concurrent_fetches FetchParams handlers run at
//   once (each holds a copy of x while it writes); more wait in line before
//   their handler, and one that waited send_stall_timeout ends with
//   RESOURCE_EXHAUSTED (its handler still runs in turn, and stops at its
//   first write).
// - A call whose outgoing message has waited longer than
//   CallLimits::send_stall_timeout for its client to read (a FetchParams or
//   Train client that never reads) is cancelled with DEADLINE_EXCEEDED, so
//   that its thread and buffers are freed; a watcher thread checks every
//   second or so.
// - It counts the calls in progress that hold one of the synchronous
//   server's threads (everything except grpc.health.v1, which gRPC serves on
//   a thread of its own), so that the health status can say NOT_SERVING
//   while a flood holds every thread and new calls would fail with
//   RESOURCE_EXHAUSTED.
//
// Thread-safe: gRPC creates one interceptor per call on that call's thread;
// the shared state is atomic or under the guard's mutex. The guard must
// outlive the server it is installed on (destroy the server first).

#include <atomic>
#include <set>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"

namespace grpc {
class ServerBuilder;
}  // namespace grpc

namespace effadam {

class ServerObserver;

struct CallLimits {
  // FetchParams calls served at once; the server sets it to --workers (a
  // worker fetches once at a time).
  int max_concurrent_fetches = 4;
  // How long an outgoing message may wait for the client to read it.
  absl::Duration send_stall_timeout = absl::Seconds(60);
};

class CallGuard {
 public:
  // `observer` (null: none) is told about rejected requests; not owned.
  // Starts the watcher thread.
  CallGuard(ServerObserver* observer, const CallLimits& limits,
            const Clock& clock = Clock::Real());
  ~CallGuard();
  CallGuard(const CallGuard&) = delete;
  CallGuard& operator=(const CallGuard&) = delete;

  // Adds the interceptor to `builder`; call before BuildAndStart.
  void Install(grpc::ServerBuilder* builder);

  // Calls in progress that hold a thread of the synchronous server.
  int calls_in_flight() const { return calls_in_flight_.load(); }

 private:
  class Interceptor;
  class Factory;

  void Watch();

  ServerObserver* const observer_;
  const CallLimits limits_;
  const Clock& clock_;
  std::atomic<int> calls_in_flight_{0};
  absl::Mutex mu_;
  int fetches_ ABSL_GUARDED_BY(mu_) = 0;  // FetchParams holding a slot
  // Every call that has sent or is sending a message; an interceptor
  // removes itself before gRPC releases its call.
  std::set<Interceptor*> sending_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread watcher_;
};

}  // namespace effadam

#endif  // EFFADAM_SERVER_CALL_GUARD_H_
