#ifndef EFFADAM_DAEMON_LIFECYCLE_H_
#define EFFADAM_DAEMON_LIFECYCLE_H_

#include <signal.h>

#include <atomic>
#include <functional>
#include <thread>

namespace effadam {

// Turns SIGINT/SIGTERM into a call on a thread of its own. The signals are
// blocked in every thread and taken by sigtimedwait, because a signal
// handler may not call into gRPC or take a lock. Construct before any
// other thread starts (first thing in Run), so that gRPC's and civetweb's
// threads inherit the mask. A second signal ends the process at once with
// 128 + its number (for a stop that hangs).
//
// signal() is thread-safe; Watch is called once, from the thread that
// constructed the watcher.
class SignalWatcher {
 public:
  SignalWatcher();
  ~SignalWatcher();
  SignalWatcher(const SignalWatcher&) = delete;
  SignalWatcher& operator=(const SignalWatcher&) = delete;

  // Starts watching; `on_first` (may be empty) runs on the watcher's
  // thread at the first signal, after signal() has turned non-zero. What it
  // uses must outlive the watcher.
  void Watch(std::function<void(int)> on_first);

  // The first signal received, or 0.
  int signal() const { return signal_.load(); }

  // "SIGTERM", "SIGINT", or "a signal".
  static const char* Name(int signo);

 private:
  sigset_t set_;
  std::atomic<bool> done_{false};
  std::atomic<int> signal_{0};
  std::thread thread_;
};

// Ends the process with `status` once a daemon's results are on disk and
// its summary is printed: flushes stdout and stderr and calls _exit,
// without running destructors. A normal return would tear down the
// metrics exposer and gRPC, and both wait on threads that sleep in a poll:
// civetweb's mg_stop waits for its master thread's 2 s poll() (measured:
// the server exited 1.8-2.0 s after its summary with --metrics_listen on),
// and grpc_shutdown (run by the last gRPC object's destructor, e.g.
// ~ServerBuilder) joins executor threads that may sit in epoll_wait for
// up to 10 s. Nothing is lost: checkpoints and summaries are written and
// fsync'ed or closed before this, and the kernel closes the sockets.
[[noreturn]] void ExitNow(int status);

}  // namespace effadam

#endif  // EFFADAM_DAEMON_LIFECYCLE_H_
