#ifndef EFFADAM_WORKER_LINK_THREADS_H_
#define EFFADAM_WORKER_LINK_THREADS_H_

// LinkThreads: runs one task per shard link in parallel on threads made
// once, for the life of a WorkerClient, instead of S-1 new threads every
// round. Task 0 runs on the calling thread, task k > 0 on persistent
// thread k; Run returns when all have. The destructor stops and joins the
// threads (a Run in progress must have returned).
//
// Thread-safety: Run is called from one thread at a time (the client's);
// the tasks of one Run run concurrently, each on its own thread, so task k
// may only touch what belongs to link k.

#include <cstdint>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"

namespace effadam {

class LinkThreads {
 public:
  // `links` >= 1; starts links - 1 threads.
  explicit LinkThreads(int links);
  ~LinkThreads();
  LinkThreads(const LinkThreads&) = delete;
  LinkThreads& operator=(const LinkThreads&) = delete;

  int links() const { return static_cast<int>(threads_.size()) + 1; }

  // Calls task(k) for every k in [0, links()), in parallel; returns when
  // all calls have returned.
  void Run(absl::FunctionRef<void(int)> task);

 private:
  void Loop(int k);

  absl::Mutex mu_;
  // Each Run is a new generation; a thread runs the task once per
  // generation.
  int64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  int pending_ ABSL_GUARDED_BY(mu_) = 0;  // threads still in this Run's task
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  const absl::FunctionRef<void(int)>* task_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::vector<std::thread> threads_;
};

}  // namespace effadam

#endif  // EFFADAM_WORKER_LINK_THREADS_H_
