// DeferredPass: one pass at a time, a schedule() while one runs runs it once
// more, a pass sleeps until the time it asks for, and stop() ends the sleep
// at once and lets nothing run after it.
#include "dmnbd/deferred_pass.hpp"

#include <gtest/gtest.h>

#include <atomic>

#include "test_support.hpp"

namespace dmnbd {
namespace {

using namespace std::chrono_literals;
using Clock = DeferredPass::Clock;

Task<void> sleep_for(Clock::duration d) {
  asio::steady_timer timer(co_await asio::this_coro::executor, d);
  co_await timer.async_wait(asio::use_awaitable);
}

TEST(DeferredPassTest, AScheduleDuringAPassRunsItOnceMore) {
  std::atomic<int> runs = 0, running = 0, overlap = 0;
  DeferredPass pass([&]() -> Task<std::optional<Clock::time_point>> {
    if (running++) ++overlap;
    ++runs;
    co_await sleep_for(10ms);
    --running;
    co_return std::nullopt;
  });
  test::run_sync([&]() -> Task<void> {
    pass.start(co_await asio::this_coro::executor);
    pass.schedule();
    pass.schedule();  // during the first: once more after it
    pass.schedule();
    co_await sleep_for(60ms);
    co_await pass.stop();
  }());
  EXPECT_EQ(runs, 2);
  EXPECT_EQ(overlap, 0);
}

TEST(DeferredPassTest, APassSleepsUntilItsTimeAndStopEndsTheSleep) {
  std::atomic<int> runs = 0;
  DeferredPass pass([&]() -> Task<std::optional<Clock::time_point>> {
    ++runs;
    co_return Clock::now() + (runs == 1 ? 20ms : 10s);
  });
  test::run_sync([&]() -> Task<void> {
    pass.start(co_await asio::this_coro::executor);
    pass.schedule();
    co_await sleep_for(80ms);
    EXPECT_EQ(runs, 2);  // woke after 20 ms, now asleep for 10 s
    const auto t0 = Clock::now();
    co_await pass.stop();
    EXPECT_LT(Clock::now() - t0, 1s);
    pass.schedule();  // stopped: nothing runs
    co_await sleep_for(30ms);
    EXPECT_EQ(runs, 2);
  }());
}

}  // namespace
}  // namespace dmnbd
