#include "dm/suspend_gate.hpp"

#include <gtest/gtest.h>

#include <boost/asio/steady_timer.hpp>
#include <chrono>

#include "test_support.hpp"

namespace dmnbd {
namespace {

using namespace std::chrono_literals;

Task<void> sleep_for(std::chrono::milliseconds d) {
  asio::steady_timer t(co_await asio::this_coro::executor, d);
  co_await t.async_wait(asio::use_awaitable);
}

TEST(SuspendGate, SuspendWaitsForInFlightIo) {
  SuspendGate gate;
  std::vector<std::string> events;
  auto scenario = [&]() -> Task<bool> {
    auto ex = co_await asio::this_coro::executor;
    // An I/O enters and stays in flight for 50 ms.
    asio::co_spawn(
        ex,
        [&]() -> Task<void> {
          auto pass = co_await gate.enter();
          events.push_back("io entered");
          co_await sleep_for(50ms);
          events.push_back("io left");
        },
        asio::detached);
    co_await sleep_for(5ms);
    co_await gate.suspend();
    events.push_back("suspended");
    co_return true;
  };
  EXPECT_TRUE(test::run_sync(scenario()));
  EXPECT_EQ(events, (std::vector<std::string>{"io entered", "io left", "suspended"}));
  EXPECT_TRUE(gate.suspended());
  EXPECT_EQ(gate.in_flight(), 0u);
}

TEST(SuspendGate, IoWaitsWhileSuspendedAndIsCounted) {
  SuspendGate gate;
  std::vector<std::string> events;
  auto scenario = [&]() -> Task<bool> {
    auto ex = co_await asio::this_coro::executor;
    co_await gate.suspend();
    for (int i = 0; i < 3; ++i)
      asio::co_spawn(
          ex,
          [&]() -> Task<void> {
            auto pass = co_await gate.enter();
            events.push_back("io ran");
          },
          asio::detached);
    co_await sleep_for(20ms);
    events.push_back("resuming");
    gate.resume();
    co_await sleep_for(10ms);
    co_return true;
  };
  EXPECT_TRUE(test::run_sync(scenario()));
  EXPECT_EQ(events, (std::vector<std::string>{"resuming", "io ran", "io ran", "io ran"}));
  EXPECT_EQ(gate.waited(), 3u);
  EXPECT_EQ(gate.in_flight(), 0u);
}

TEST(SuspendGate, SuspendOfAnIdleGateIsImmediateAndIdempotent) {
  SuspendGate gate;
  test::run_sync([&]() -> Task<bool> {
    co_await gate.suspend();
    co_await gate.suspend();
    co_return true;
  }());
  EXPECT_TRUE(gate.suspended());
  gate.resume();
  EXPECT_FALSE(gate.suspended());
  EXPECT_EQ(gate.waited(), 0u);
}

}  // namespace
}  // namespace dmnbd
