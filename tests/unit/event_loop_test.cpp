// The polling event loop must run every handler, stop when told, and sleep
// once its polling window has passed: an idle server must not burn a CPU.
#include "runtime/event_loop.hpp"

#include <gtest/gtest.h>
#include <time.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <thread>

namespace dmnbd::runtime {
namespace {

double thread_cpu_seconds(std::thread& t) {
  clockid_t clock;
  pthread_getcpuclockid(t.native_handle(), &clock);
  timespec ts;
  clock_gettime(clock, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

TEST(EventLoop, PollsBrieflyThenSleeps) {
  asio::io_context ctx;
  auto guard = asio::make_work_guard(ctx);
  std::atomic<int> handled = 0;
  std::thread loop([&] { run_event_loop(ctx, std::chrono::microseconds(200)); });
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 30; ++i) {  // sparse work: one handler every 10 ms
    asio::post(ctx, [&] { ++handled; });
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const double wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double cpu = thread_cpu_seconds(loop);
  guard.reset();
  ctx.stop();
  loop.join();
  EXPECT_EQ(handled, 30);
  // 30 wake-ups with at most 200 us of polling each is 6 ms; allow slack for a busy machine.
  EXPECT_LT(cpu, 0.25 * wall) << "the loop kept spinning while idle: " << cpu << " s CPU in "
                              << wall << " s";
}

TEST(EventLoop, ReturnsWhenOutOfWorkOrStopped) {
  asio::io_context ctx;
  int handled = 0;
  asio::post(ctx, [&] { ++handled; });
  run_event_loop(ctx, std::chrono::microseconds(50));  // no guard: returns when the work is done
  EXPECT_EQ(handled, 1);

  asio::io_context stopped;
  auto guard = asio::make_work_guard(stopped);
  asio::post(stopped, [&] { stopped.stop(); });
  run_event_loop(stopped, std::chrono::microseconds(50));
  EXPECT_TRUE(stopped.stopped());
}

}  // namespace
}  // namespace dmnbd::runtime
