#include "daemon/lifecycle.h"

#include <pthread.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>

namespace effadam {

SignalWatcher::SignalWatcher() {
  sigemptyset(&set_);
  sigaddset(&set_, SIGINT);
  sigaddset(&set_, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set_, nullptr);
}

SignalWatcher::~SignalWatcher() {
  done_ = true;
  if (thread_.joinable()) thread_.join();
}

void SignalWatcher::Watch(std::function<void(int)> on_first) {
  thread_ = std::thread([this, on_first = std::move(on_first)] {
    const timespec poll = {0, 100 * 1000 * 1000};
    while (!done_) {
      const int sig = sigtimedwait(&set_, nullptr, &poll);
      if (sig <= 0) continue;
      if (signal_.load() != 0) {
        std::fflush(stdout);
        std::_Exit(128 + sig);
      }
      signal_.store(sig);
      if (on_first) on_first(sig);
    }
  });
}

const char* SignalWatcher::Name(int signo) {
  switch (signo) {
    case SIGTERM:
      return "SIGTERM";
    case SIGINT:
      return "SIGINT";
  }
  return "a signal";
}

void ExitNow(int status) {
  std::fflush(stdout);
  std::fflush(stderr);
  _exit(status);
}

}  // namespace effadam
