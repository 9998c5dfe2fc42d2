#include "common/thread_pool.h"

#include <atomic>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace effadam {
namespace {

TEST(ThreadPool, CallsEveryIterationExactlyOnce) {
  for (int threads : {1, 2, 3, 7}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.threads(), threads);
    for (size_t n : {0, 1, 2, 5, 100, 1000}) {
      std::vector<std::atomic<int>> calls(n);
      pool.ParallelFor(n, [&](size_t i) { calls[i].fetch_add(1); });
      for (size_t i = 0; i < n; ++i) {
        ASSERT_EQ(calls[i].load(), 1) << threads << " threads, i " << i;
      }
    }
  }
}

TEST(ThreadPool, OneThreadRunsTheLoopInOrderOnTheCaller) {
  ThreadPool pool(1);
  std::vector<size_t> order;
  const std::thread::id caller = std::this_thread::get_id();
  pool.ParallelFor(10, [&](size_t i) {
    EXPECT_EQ(std::this_thread::get_id(), caller);
    order.push_back(i);
  });
  EXPECT_EQ(order, (std::vector<size_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
  EXPECT_EQ(ThreadPool(0).threads(), 1);
}

TEST(ThreadPool, ConcurrentLoopsTakeTurns) {
  ThreadPool pool(3);
  std::atomic<int> total{0};
  auto loops = [&] {
    for (int k = 0; k < 200; ++k) {
      pool.ParallelFor(17, [&](size_t) { total.fetch_add(1); });
    }
  };
  std::thread a(loops), b(loops);
  a.join();
  b.join();
  EXPECT_EQ(total.load(), 2 * 200 * 17);
}

TEST(ThreadPool, AvailableCoresIsAtLeastOne) { EXPECT_GE(AvailableCores(), 1); }

}  // namespace
}  // namespace effadam
