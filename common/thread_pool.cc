#include "common/thread_pool.h"

#include <sched.h>

namespace effadam {

int AvailableCores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? static_cast<int>(hw) : 1;
}

ThreadPool::ThreadPool(int threads) {
  for (int i = 1; i < threads; ++i)
    helpers_.emplace_back([this] { HelperLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    wake_.SignalAll();
  }
  for (std::thread& t : helpers_) t.join();
}

void ThreadPool::RunIterations(const std::function<void(size_t)>& f, size_t n) {
  while (true) {
    size_t i;
    {
      absl::MutexLock lock(&mu_);
      if (next_ >= n) return;
      i = next_++;
    }
    f(i);
  }
}

void ThreadPool::HelperLoop() {
  uint64_t seen = 0;
  while (true) {
    const std::function<void(size_t)>* body;
    size_t n;
    {
      absl::MutexLock lock(&mu_);
      while (!stopping_ && generation_ == seen) wake_.Wait(&mu_);
      if (stopping_) return;
      seen = generation_;
      // A helper that wakes after its loop was done has nothing to join.
      if (body_ == nullptr || next_ >= size_) continue;
      body = body_;
      n = size_;
      ++busy_helpers_;
    }
    RunIterations(*body, n);
    absl::MutexLock lock(&mu_);
    if (--busy_helpers_ == 0) done_.SignalAll();
  }
}

void ThreadPool::ParallelFor(size_t n, const std::function<void(size_t)>& f) {
  if (helpers_.empty() || n <= 1) {
    for (size_t i = 0; i < n; ++i) f(i);
    return;
  }
  absl::MutexLock loop(&loop_mu_);
  {
    absl::MutexLock lock(&mu_);
    body_ = &f;
    size_ = n;
    next_ = 0;
    ++generation_;
    wake_.SignalAll();
  }
  RunIterations(f, n);
  absl::MutexLock lock(&mu_);
  // Every iteration was handed out, so no helper joins any more; wait for
  // those still running one.
  while (busy_helpers_ > 0) done_.Wait(&mu_);
  body_ = nullptr;
}

}  // namespace effadam
