// The CPU pool runs every part, on threads other than the caller's loop, side
// by side, and resumes the caller on its own loop once all are done.
#include "dmnbd/cpu_pool.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <set>
#include <thread>
#include <vector>

#include "test_support.hpp"

namespace dmnbd {
namespace {

TEST(CpuPoolTest, EveryPartRunsOffTheLoopAndTheCallerResumesOnIt) {
  const auto loop_thread = std::this_thread::get_id();
  std::vector<std::atomic<int>> runs(16);
  std::atomic<bool> ran_on_loop = false;
  std::thread::id resumed_on;
  test::run_sync([&]() -> Task<void> {
    co_await run_on_cpu_pool(runs.size(), [&](size_t i) {
      if (std::this_thread::get_id() == loop_thread) ran_on_loop = true;
      ++runs[i];
    });
    resumed_on = std::this_thread::get_id();
  }());
  for (auto& r : runs) EXPECT_EQ(r, 1);
  EXPECT_FALSE(ran_on_loop);
  EXPECT_EQ(resumed_on, loop_thread);
}

TEST(CpuPoolTest, PartsRunSideBySide) {
  if (cpu_pool_threads() < 2) GTEST_SKIP() << "one core: nothing runs side by side";
  // Each part waits until both have started: with one thread this would hang.
  std::atomic<int> started = 0;
  std::atomic<bool> timed_out = false;
  test::run_sync([&]() -> Task<void> {
    co_await run_on_cpu_pool(2, [&](size_t) {
      ++started;
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (started < 2)
        if (std::chrono::steady_clock::now() > deadline) {
          timed_out = true;
          return;
        }
    });
  }());
  EXPECT_FALSE(timed_out);
}

TEST(CpuPoolTest, ZeroPartsReturnAtOnce) {
  bool ran = false;
  test::run_sync(
      [&]() -> Task<void> { co_await run_on_cpu_pool(0, [&](size_t) { ran = true; }); }());
  EXPECT_FALSE(ran);
}

}  // namespace
}  // namespace dmnbd
