#include "nbd/byte_budget.hpp"

#include <gtest/gtest.h>

#include <boost/asio/steady_timer.hpp>
#include <thread>
#include <vector>

#include "test_support.hpp"

namespace dmnbd::nbd {
namespace {

using test::run_sync;

TEST(ByteBudget, GrantsWhatFitsAndGivesBackOnDestruction) {
  ByteBudget budget(100);
  run_sync([&]() -> Task<void> {
    auto a = co_await budget.acquire(60);
    auto b = co_await budget.acquire(40);
    EXPECT_EQ(budget.in_use(), 100u);
    { ByteBudget::Lease gone = std::move(a); }
    EXPECT_EQ(budget.in_use(), 40u);
    EXPECT_EQ(a.bytes(), 0u);  // moved from: gives nothing back twice
  }());
  EXPECT_EQ(budget.in_use(), 0u);
  EXPECT_EQ(budget.peak(), 100u);
}

TEST(ByteBudget, WaitsUntilEnoughIsGivenBackInArrivalOrder) {
  ByteBudget budget(100);
  std::vector<int> order;
  run_sync([&]() -> Task<void> {
    auto ex = co_await asio::this_coro::executor;
    auto held = std::make_shared<ByteBudget::Lease>(co_await budget.acquire(90));
    auto waiter = [&](int id, uint64_t bytes) -> Task<void> {
      auto lease = co_await budget.acquire(bytes);
      order.push_back(id);
    };
    asio::co_spawn(ex, waiter(1, 50), asio::detached);
    asio::co_spawn(ex, waiter(2, 5), asio::detached);  // fits now, but 1 came first
    asio::steady_timer t(ex, std::chrono::milliseconds(20));
    co_await t.async_wait(asio::use_awaitable);
    EXPECT_TRUE(order.empty());
    held.reset();
    t.expires_after(std::chrono::milliseconds(20));
    co_await t.async_wait(asio::use_awaitable);
  }());
  EXPECT_EQ(order, (std::vector<int>{1, 2}));
  EXPECT_EQ(budget.in_use(), 0u);
}

TEST(ByteBudget, MoreThanTheLimitGoesAloneWhenNothingElseIsHeld) {
  ByteBudget budget(10);
  bool granted = false;
  run_sync([&]() -> Task<void> {
    auto ex = co_await asio::this_coro::executor;
    auto small = std::make_shared<ByteBudget::Lease>(co_await budget.acquire(1));
    asio::co_spawn(
        ex,
        [&]() -> Task<void> {
          auto big = co_await budget.acquire(1000);
          granted = true;
          EXPECT_EQ(budget.in_use(), 1000u);
        },
        asio::detached);
    asio::steady_timer t(ex, std::chrono::milliseconds(20));
    co_await t.async_wait(asio::use_awaitable);
    EXPECT_FALSE(granted);
    small.reset();
    t.expires_after(std::chrono::milliseconds(20));
    co_await t.async_wait(asio::use_awaitable);
  }());
  EXPECT_TRUE(granted);
}

// Leases taken and given back on two threads never exceed the limit.
TEST(ByteBudget, BoundHoldsAcrossThreads) {
  ByteBudget budget(64);
  auto worker = [&] {
    run_sync([&]() -> Task<void> {
      for (int i = 0; i < 2000; ++i) {
        auto lease = co_await budget.acquire(1 + i % 32);
        EXPECT_LE(budget.in_use(), 64u);
      }
    }());
  };
  std::thread a(worker), b(worker);
  a.join();
  b.join();
  EXPECT_EQ(budget.in_use(), 0u);
  EXPECT_LE(budget.peak(), 64u);
}

}  // namespace
}  // namespace dmnbd::nbd
