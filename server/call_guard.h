#ifndef EFFADAM_SERVER_CALL_GUARD_H_
#define EFFADAM_SERVER_CALL_GUARD_H_

// What the gRPC layer of effadam-server adds below the service, for every
// call of every service (a server interceptor, installed by Install):
//
// - A request that does not parse as its method's message (garbage bytes on
//   Join, Status, FetchParams) ends with INVALID_ARGUMENT and a message
//   naming the method, instead of gRPC's INTERNAL with no message, and is
//   counted as a rejection (Rejection::kUnparseable) on the observer.
// - It counts the calls in progress that hold one of the synchronous
//   server's threads (everything except grpc.health.v1, which gRPC serves on
//   a thread of its own), so that the health status can say NOT_SERVING
//   while a flood holds every thread and new calls would fail with
//   RESOURCE_EXHAUSTED.
//
// Thread-safe: gRPC creates one interceptor per call on that call's thread;
// the counters are atomic. The guard must outlive the server it is
// installed on.

#include <atomic>

namespace grpc {
class ServerBuilder;
}  // namespace grpc

namespace effadam {

class ServerObserver;

class CallGuard {
 public:
  // `observer` (null: none) is told about rejected requests; not owned.
  explicit CallGuard(ServerObserver* observer) : observer_(observer) {}
  CallGuard(const CallGuard&) = delete;
  CallGuard& operator=(const CallGuard&) = delete;

  // Adds the interceptor to `builder`; call before BuildAndStart.
  void Install(grpc::ServerBuilder* builder);

  // Calls in progress that hold a thread of the synchronous server.
  int calls_in_flight() const { return calls_in_flight_.load(); }

 private:
  class Interceptor;
  class Factory;

  ServerObserver* const observer_;
  std::atomic<int> calls_in_flight_{0};
};

}  // namespace effadam

#endif  // EFFADAM_SERVER_CALL_GUARD_H_
