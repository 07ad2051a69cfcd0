#include "event_loop.hpp"

#include <sched.h>
#include <sys/resource.h>

namespace dmnbd::runtime {
namespace {

using Clock = std::chrono::steady_clock;

// How long polling stays off after it competed with another thread.
constexpr auto kBackoff = std::chrono::milliseconds(20);

long involuntary_switches() {
  rusage usage;
  getrusage(RUSAGE_THREAD, &usage);
  return usage.ru_nivcsw;
}

}  // namespace

void run_event_loop(asio::io_context& ctx, std::chrono::microseconds max_poll) {
  if (max_poll.count() <= 0) {
    ctx.run();
    return;
  }
  auto last_work = Clock::now();
  auto polling_allowed_at = last_work;
  bool polling = false;  // inside a polling stretch
  long switches_at_start = 0;
  while (!ctx.stopped()) {
    if (ctx.poll()) {  // a non-blocking look at the reactor and the ready handlers
      last_work = Clock::now();
      polling = false;
      continue;
    }
    const auto now = Clock::now();
    if (now - last_work < max_poll && now >= polling_allowed_at) {
      if (!polling) {
        polling = true;
        switches_at_start = involuntary_switches();
      } else if (involuntary_switches() != switches_at_start) {
        polling_allowed_at = now + kBackoff;  // the CPU is wanted elsewhere
        continue;
      }
      sched_yield();  // anyone else runnable here goes first
      continue;
    }
    polling = false;
    if (!ctx.run_one()) break;  // sleeps until there is work
    last_work = Clock::now();
  }
}

}  // namespace dmnbd::runtime
