#include "dmnbd/background_job.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <optional>
#include <thread>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>

namespace dmnbd {
namespace {

using std::chrono::milliseconds;

// A step standing in for I/O: sleeps `ms` on the job's loop, then advances
// `units`, until `total` is done; counts how many steps are inside.
struct FakeWork {
  uint64_t total = UINT64_MAX;
  uint64_t units = 1;
  int ms = 0;
  std::optional<uint64_t> fail_at;  // fails the step starting here
  int in_step = 0;
  int steps = 0;
  bool saw_cancel = false;

  BackgroundJob::Step step() {
    return [this](uint64_t done, const CancelToken& cancel) -> Task<JobStep> {
      ++in_step;
      ++steps;
      if (ms) {
        auto executor = co_await asio::this_coro::executor;
        asio::steady_timer t(executor, milliseconds(ms));
        co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
      }
      --in_step;
      if (cancel.cancelled()) {
        saw_cancel = true;
        co_return JobStep{errno_status(ECANCELED), 0};
      }
      if (fail_at && done == *fail_at) co_return JobStep{errno_status(EIO), 0};
      co_return JobStep{ok(), std::min(units, total - done)};
    };
  }
};

class BackgroundJobTest : public ::testing::Test {
 protected:
  // Runs the loop for `ms` (or until it runs out of work).
  void run_for(int ms) {
    ctx_.restart();
    ctx_.run_for(milliseconds(ms));
  }
  // Runs `task` on the loop to completion, with the job's steps beside it.
  void await(Task<void> task) {
    bool done = false;
    asio::co_spawn(ctx_, std::move(task), [&](std::exception_ptr) { done = true; });
    for (int i = 0; i < 1000 && !done; ++i) run_for(5);
    ASSERT_TRUE(done);
  }
  asio::io_context ctx_;
  std::vector<Status> done_;
  BackgroundJob::Options options(uint64_t total) {
    return {.total = total, .on_done = [this](Status st) { done_.push_back(st); }};
  }
};

TEST_F(BackgroundJobTest, RunsToTheEndReportingProgressAndCompletionOnce) {
  FakeWork work{.total = 10, .units = 3};
  BackgroundJob job(work.step(), options(10));
  EXPECT_EQ(job.progress().done, 0u);
  job.start(ctx_.get_executor());
  EXPECT_TRUE(job.running());
  run_for(50);
  EXPECT_EQ(job.progress().done, 10u);
  EXPECT_EQ(job.progress().total, 10u);
  EXPECT_EQ(work.steps, 5);  // 3 + 3 + 3 + 1, then the step that finds nothing left
  EXPECT_EQ(done_, std::vector<Status>{ok()});
  EXPECT_FALSE(job.running());
  await(job.stop());  // a finished job stops at once
  EXPECT_EQ(done_.size(), 1u);
}

TEST_F(BackgroundJobTest, AFailingStepEndsTheJobWithItsError) {
  FakeWork work{.fail_at = 4};
  BackgroundJob job(work.step(), options(100));
  job.start(ctx_.get_executor());
  run_for(50);
  EXPECT_EQ(done_, std::vector<Status>{errno_status(EIO)});
  EXPECT_EQ(job.progress().done, 4u);
  EXPECT_FALSE(job.running());
}

TEST_F(BackgroundJobTest, PauseWaitsForTheStepAndHoldsProgressUntilResume) {
  FakeWork work{.ms = 2};
  BackgroundJob job(work.step(), options(0));
  job.start(ctx_.get_executor());
  run_for(30);
  EXPECT_GT(job.progress().done, 0u);
  bool step_was_running = true;
  await([&]() -> Task<void> {
    co_await job.pause();
    step_was_running = work.in_step != 0;
  }());
  EXPECT_FALSE(step_was_running);
  EXPECT_TRUE(job.paused());
  const uint64_t held = job.progress().done;
  run_for(60);
  EXPECT_EQ(job.progress().done, held);
  EXPECT_TRUE(job.running());
  job.resume();
  run_for(30);
  EXPECT_GT(job.progress().done, held);
  await(job.stop());
  EXPECT_TRUE(done_.empty());
}

TEST_F(BackgroundJobTest, ARateLimitSpacesTheSteps) {
  FakeWork work{.units = 10};
  auto opts = options(0);
  opts.max_rate = 100;  // units per second: one 10-unit step per 100 ms
  BackgroundJob job(work.step(), opts);
  job.start(ctx_.get_executor());
  run_for(250);
  // Unthrottled, it would have done millions; at 100/s, 3 steps by 250 ms.
  EXPECT_GE(job.progress().done, 20u);
  EXPECT_LE(job.progress().done, 40u);
  await(job.stop());
}

TEST_F(BackgroundJobTest, APauseBetweenStepsSpacesThem) {
  FakeWork work;
  auto opts = options(0);
  opts.pause_between_steps = milliseconds(40);
  BackgroundJob job(work.step(), opts);
  job.start(ctx_.get_executor());
  run_for(130);
  EXPECT_GE(work.steps, 2);
  EXPECT_LE(work.steps, 5);
  // pause() cuts the sleep short and stop() ends it at once.
  await(job.pause());
  await(job.stop());
  EXPECT_FALSE(job.running());
}

TEST_F(BackgroundJobTest, StopMidStepCancelsAndWaitsWithoutCompletion) {
  FakeWork work{.ms = 20};
  BackgroundJob job(work.step(), options(1000));
  job.start(ctx_.get_executor());
  run_for(30);  // inside the second step
  bool in_step_after_stop = true;
  await([&]() -> Task<void> {
    co_await job.stop();
    in_step_after_stop = work.in_step != 0;
  }());
  EXPECT_FALSE(in_step_after_stop);
  EXPECT_TRUE(work.saw_cancel);  // the step in flight saw the token
  EXPECT_FALSE(job.running());
  EXPECT_TRUE(done_.empty());
  const uint64_t at_stop = job.progress().done;
  run_for(50);
  EXPECT_EQ(job.progress().done, at_stop);
  // Stopping a paused job, and one never started.
  BackgroundJob paused(work.step(), options(10));
  paused.start(ctx_.get_executor());
  await(paused.pause());
  await(paused.stop());
  EXPECT_FALSE(paused.running());
  BackgroundJob idle(work.step(), options(10));
  await(idle.stop());
}

TEST_F(BackgroundJobTest, ProgressIsReadableFromAnotherThread) {
  FakeWork work{.total = 5000};
  BackgroundJob job(work.step(), options(5000));
  std::atomic<bool> stop = false;
  uint64_t last = 0;
  bool monotonic = true;
  std::thread reader([&] {
    while (!stop) {
      const uint64_t now = job.progress().done;
      monotonic = monotonic && now >= last;
      last = now;
    }
  });
  job.start(ctx_.get_executor());
  for (int i = 0; i < 200 && done_.empty(); ++i) run_for(5);
  stop = true;
  reader.join();
  EXPECT_TRUE(monotonic);
  EXPECT_EQ(done_, std::vector<Status>{ok()});
  EXPECT_EQ(job.progress().done, 5000u);
}

}  // namespace
}  // namespace dmnbd
