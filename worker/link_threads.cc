#include "worker/link_threads.h"

namespace effadam {

LinkThreads::LinkThreads(int links) {
  for (int k = 1; k < links; ++k) threads_.emplace_back([this, k] { Loop(k); });
}

LinkThreads::~LinkThreads() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  for (std::thread& t : threads_) t.join();
}

void LinkThreads::Run(absl::FunctionRef<void(int)> task) {
  {
    absl::MutexLock lock(&mu_);
    task_ = &task;
    pending_ = static_cast<int>(threads_.size());
    ++generation_;
  }
  task(0);
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](int* pending) { return *pending == 0; }, &pending_));
  task_ = nullptr;
}

void LinkThreads::Loop(int k) {
  int64_t done = 0;  // the last generation this thread ran
  while (true) {
    const absl::FunctionRef<void(int)>* task;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stop_ || generation_ != done;
      };
      mu_.Await(absl::Condition(&ready));
      if (stop_) return;
      done = generation_;
      task = task_;
    }
    (*task)(k);
    absl::MutexLock lock(&mu_);
    --pending_;
  }
}

}  // namespace effadam
