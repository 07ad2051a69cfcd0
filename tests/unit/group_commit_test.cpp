// GroupCommit: writers waiting at once share one commit; a change made while
// a commit runs waits for the next one; a failed commit fails only the
// writers whose change it held.
#include "dmnbd/group_commit.hpp"

#include <gtest/gtest.h>

#include <boost/asio/steady_timer.hpp>

#include "dmnbd/when_all.hpp"
#include "test_support.hpp"

namespace dmnbd {
namespace {

using namespace std::chrono_literals;

// Metadata of one counter: a change bumps `value`; a commit copies it to
// `durable` after a short sleep, unless told to fail.
struct Counter {
  std::mutex mutex;
  int value = 0;
  int durable = 0;
  int commits = 0;
  bool fail_next = false;
  GroupCommit commits_of{[this]() -> Task<Status> {
    int snapshot = 0;
    bool fail = false;
    {
      std::lock_guard lk(mutex);
      snapshot = value;
      fail = std::exchange(fail_next, false);
      ++commits;
    }
    asio::steady_timer timer(co_await asio::this_coro::executor, 20ms);
    co_await timer.async_wait(asio::use_awaitable);
    if (fail) co_return errno_status(EIO);
    std::lock_guard lk(mutex);
    durable = std::max(durable, snapshot);
    co_return ok();
  }};

  uint64_t change() {
    std::lock_guard lk(mutex);
    ++value;
    return commits_of.next();
  }
  Task<Status> change_and_wait() {
    const uint64_t ticket = change();
    co_return co_await commits_of.wait(ticket);
  }
};

TEST(GroupCommitTest, WritersWaitingTogetherShareOneCommit) {
  Counter c;
  test::run_sync([&]() -> Task<void> {
    std::vector<Task<Status>> writers;
    std::vector<uint64_t> tickets;
    for (int i = 0; i < 8; ++i) tickets.push_back(c.change());
    for (uint64_t t : tickets) writers.push_back(c.commits_of.wait(t));
    const std::vector<Status> results = co_await when_all(writers);
    for (const Status& st : results) EXPECT_FALSE(st);
  }());
  EXPECT_EQ(c.durable, 8);
  EXPECT_EQ(c.commits, 1);
}

TEST(GroupCommitTest, AChangeDuringACommitWaitsForTheNext) {
  Counter c;
  test::run_sync([&]() -> Task<void> {
    const uint64_t first = c.change();
    auto executor = co_await asio::this_coro::executor;
    // Named: the coroutine refers to its captures until it ends.
    auto second_writer = [&]() -> Task<Status> {
      asio::steady_timer timer(executor, 5ms);  // the first commit is running now
      co_await timer.async_wait(asio::use_awaitable);
      EXPECT_TRUE(c.commits_of.in_flight());
      const Status st = co_await c.change_and_wait();
      EXPECT_EQ(c.durable, 2);  // not returned by the first commit, which held 1
      co_return st;
    };
    std::vector<Task<Status>> both;
    both.push_back(c.commits_of.wait(first));
    both.push_back(second_writer());
    const std::vector<Status> results = co_await when_all(both);
    EXPECT_FALSE(results[0]);
    EXPECT_FALSE(results[1]);
  }());
  EXPECT_EQ(c.commits, 2);
}

TEST(GroupCommitTest, AFailedCommitFailsItsWritersAndTheNextWritesAgain) {
  Counter c;
  test::run_sync([&]() -> Task<void> {
    c.fail_next = true;
    const Status failed = co_await c.change_and_wait();
    EXPECT_EQ(failed, std::errc::io_error);
    EXPECT_EQ(c.durable, 0);
    const Status later = co_await c.change_and_wait();
    EXPECT_FALSE(later);
    EXPECT_EQ(c.durable, 2);
    EXPECT_FALSE(co_await c.commits_of.wait(0));  // 0 is always done
  }());
}

}  // namespace
}  // namespace dmnbd
