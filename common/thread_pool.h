#ifndef EFFADAM_COMMON_THREAD_POOL_H_
#define EFFADAM_COMMON_THREAD_POOL_H_

#include <cstddef>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace effadam {

// The number of CPUs this process may run on (sched_getaffinity), at
// least 1: the default of every `threads` option.
int AvailableCores();

// A fixed set of threads that runs the iterations of a loop whose
// iterations are independent (the segments of an update). ParallelFor(n, f)
// calls f(i) exactly once for every i in [0, n), on the calling thread and
// on threads - 1 helpers, and returns when all calls have returned. Which
// thread runs which i is not fixed, so f(i) must depend on i alone for the
// result to be the same for any thread count. A pool of 1 thread starts no
// thread and runs the loop in order on the caller.
//
// Thread-safe: concurrent ParallelFor calls take turns (one loop at a time);
// f must not call ParallelFor on the same pool.
class ThreadPool {
 public:
  // threads < 1 is taken as 1.
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const { return static_cast<int>(helpers_.size()) + 1; }

  void ParallelFor(size_t n, const std::function<void(size_t)>& f);

 private:
  void HelperLoop();
  // Runs iterations of the current loop until none is left.
  void RunIterations(const std::function<void(size_t)>& f, size_t n);

  absl::Mutex loop_mu_;  // one loop at a time
  absl::Mutex mu_;
  absl::CondVar wake_;
  absl::CondVar done_;
  // The loop being run: its body, its length, the next iteration to hand
  // out, the helpers still in it; generation_ moves on with each loop.
  const std::function<void(size_t)>* body_ ABSL_GUARDED_BY(mu_) = nullptr;
  size_t size_ ABSL_GUARDED_BY(mu_) = 0;
  size_t next_ ABSL_GUARDED_BY(mu_) = 0;
  int busy_helpers_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> helpers_;
};

}  // namespace effadam

#endif  // EFFADAM_COMMON_THREAD_POOL_H_
