#include "dmnbd/background_job.hpp"

#include <atomic>
#include <mutex>
#include <vector>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>

#include "dmnbd/park.hpp"

namespace dmnbd {
namespace {

using Clock = std::chrono::steady_clock;

void wake_all(std::vector<std::function<void()>>& waiters) {
  std::vector<std::function<void()>> now;
  now.swap(waiters);
  for (auto& wake : now) wake();
}

}  // namespace

// Shared with the loop coroutine, so a job destroyed while its loop is still
// ending leaves it nothing freed to touch.
struct BackgroundJob::State {
  Step step;
  Options options;
  std::atomic<uint64_t> done = 0;
  std::atomic<uint64_t> total = 0;
  CancelToken cancel;

  std::mutex mutex;  // everything below
  bool running = false;
  bool paused = false;
  bool stopping = false;
  bool in_step = false;
  std::shared_ptr<asio::steady_timer> timer;     // the throttle's sleep
  std::function<void()> loop_parked;             // the loop, waiting for resume()
  std::vector<std::function<void()>> step_done;  // pause()rs
  std::vector<std::function<void()>> ended;      // stop()pers

  // Returns once `busy` is false, joining `waiters` (woken when it clears)
  // meanwhile. The lambda captures only raw pointers: one with a destructor
  // in a co_await expression is destroyed twice by GCC 12.
  Task<void> wait_while(const bool& busy, std::vector<std::function<void()>>& waiters) {
    co_await park_until_woken([s = this, b = &busy, w = &waiters](std::function<void()> wake) {
      std::unique_lock lk(s->mutex);
      if (*b) {
        w->push_back(std::move(wake));
        return;
      }
      lk.unlock();
      wake();
    });
  }

  // Cuts a throttle sleep short. Posted: the timer belongs to the job's
  // executor, and the loop checks the flags before it sleeps.
  void interrupt_sleep() {
    if (auto t = timer) asio::post(t->get_executor(), [t] { t->cancel(); });
  }
};

void BackgroundJob::finish(State& s, Status st) {
  std::function<void(Status)> on_done;
  {
    std::lock_guard lk(s.mutex);
    s.running = false;
    // The timer belongs to the loop's executor, which may go before the job.
    s.timer.reset();
    wake_all(s.ended);
    on_done = s.options.on_done;
  }
  if (on_done) on_done(st);
}

Task<void> BackgroundJob::run_loop(std::shared_ptr<State> s) {
  Clock::time_point window_start = Clock::now();
  uint64_t window_units = 0;
  while (true) {
    // Park while paused; a resume starts a new rate window.
    bool was_paused = false;
    co_await park_until_woken([&s, &was_paused](std::function<void()> wake) {
      std::unique_lock lk(s->mutex);
      if (s->paused && !s->stopping) {
        was_paused = true;
        s->loop_parked = std::move(wake);
        return;
      }
      lk.unlock();
      wake();
    });
    if (was_paused) {
      window_start = Clock::now();
      window_units = 0;
    }
    {
      std::lock_guard lk(s->mutex);
      if (s->stopping) break;
      if (s->paused) continue;
      s->in_step = true;
    }
    const JobStep r = co_await s->step(s->done.load(), s->cancel);
    bool stopping = false;
    {
      std::lock_guard lk(s->mutex);
      s->in_step = false;
      wake_all(s->step_done);
      stopping = s->stopping;
    }
    if (stopping) break;  // a step cut short by stop() is no result
    if (r.status || r.advanced == 0) {
      finish(*s, r.status);
      co_return;
    }
    s->done += r.advanced;

    // Throttle: no sooner than the pause, nor than the rate allows.
    const Clock::time_point now = Clock::now();
    Clock::time_point until = now + s->options.pause_between_steps;
    if (s->options.max_rate) {
      window_units += r.advanced;
      const auto due = std::chrono::duration_cast<Clock::duration>(
          std::chrono::duration<double>(double(window_units) / double(s->options.max_rate)));
      until = std::max(until, window_start + due);
    }
    if (until <= now) continue;
    std::shared_ptr<asio::steady_timer> timer;
    {
      std::lock_guard lk(s->mutex);
      if (s->paused || s->stopping) continue;
      timer = s->timer;
    }
    timer->expires_at(until);
    co_await timer->async_wait(asio::as_tuple(asio::use_awaitable));
  }
  std::lock_guard lk(s->mutex);
  s->running = false;
  s->timer.reset();
  wake_all(s->ended);
}

BackgroundJob::BackgroundJob(Step step, Options options) : state_(std::make_shared<State>()) {
  state_->step = std::move(step);
  state_->total = options.total;
  state_->options = std::move(options);
}

BackgroundJob::~BackgroundJob() {
  std::lock_guard lk(state_->mutex);
  state_->stopping = true;
  state_->cancel.cancel();
  state_->options.on_done = nullptr;
  state_->interrupt_sleep();
  if (state_->loop_parked) std::exchange(state_->loop_parked, nullptr)();
}

void BackgroundJob::start(asio::any_io_executor executor) {
  {
    std::lock_guard lk(state_->mutex);
    if (state_->running) return;
    state_->running = true;
    state_->stopping = false;
    state_->cancel.reset();
    state_->timer = std::make_shared<asio::steady_timer>(executor);
  }
  // A step that throws is a bug in it; the job ends as if the step had failed.
  asio::co_spawn(executor, run_loop(state_), [s = state_](std::exception_ptr e) {
    if (e) finish(*s, errno_status(EIO));
  });
}

Task<void> BackgroundJob::pause() {
  {
    std::lock_guard lk(state_->mutex);
    state_->paused = true;
    state_->interrupt_sleep();
  }
  co_await state_->wait_while(state_->in_step, state_->step_done);
}

void BackgroundJob::resume() {
  std::function<void()> loop;
  {
    std::lock_guard lk(state_->mutex);
    state_->paused = false;
    loop = std::exchange(state_->loop_parked, nullptr);
  }
  if (loop) loop();
}

Task<void> BackgroundJob::stop() {
  std::function<void()> loop;
  {
    std::lock_guard lk(state_->mutex);
    state_->stopping = true;
    state_->cancel.cancel();
    state_->interrupt_sleep();
    loop = std::exchange(state_->loop_parked, nullptr);
  }
  if (loop) loop();
  co_await state_->wait_while(state_->running, state_->ended);
}

BackgroundJob::Progress BackgroundJob::progress() const {
  return {state_->done.load(), state_->total.load()};
}

void BackgroundJob::set_total(uint64_t total) {
  state_->total = total;
}

bool BackgroundJob::running() const {
  std::lock_guard lk(state_->mutex);
  return state_->running;
}

bool BackgroundJob::paused() const {
  std::lock_guard lk(state_->mutex);
  return state_->paused;
}

}  // namespace dmnbd
