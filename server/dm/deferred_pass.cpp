#include "dmnbd/deferred_pass.hpp"

#include <boost/asio/as_tuple.hpp>

#include "dmnbd/park.hpp"

namespace dmnbd {

DeferredPass::~DeferredPass() = default;

void DeferredPass::start(asio::any_io_executor executor) {
  std::lock_guard lk(mutex_);
  executor_ = std::move(executor);
  stopped_ = false;
}

void DeferredPass::schedule() {
  asio::any_io_executor executor;
  {
    std::lock_guard lk(mutex_);
    if (stopped_ || !executor_) return;
    if (running_) {
      again_ = true;
      return;
    }
    running_ = true;
    executor = executor_;
  }
  asio::co_spawn(executor, run(), asio::detached);
}

Task<void> DeferredPass::run() {
  auto timer = std::make_shared<asio::steady_timer>(co_await asio::this_coro::executor);
  while (true) {
    const std::optional<Clock::time_point> next = co_await pass_();
    bool sleep = false;
    {
      std::lock_guard lk(mutex_);
      sleep = next && !stopped_;
      if (sleep) {
        timer->expires_at(*next);
        sleep_ = timer;
      }
    }
    if (sleep) {
      co_await timer->async_wait(asio::as_tuple(asio::use_awaitable));
      std::lock_guard lk(mutex_);
      sleep_.reset();
      if (!stopped_) continue;  // else stop() ended the sleep: no pass after it
    }
    std::vector<std::function<void()>> waiters;
    {
      std::lock_guard lk(mutex_);
      if (std::exchange(again_, false) && !stopped_) continue;
      running_ = false;
      waiters.swap(stop_waiters_);
    }
    for (auto& wake : waiters) wake();
    co_return;
  }
}

Task<void> DeferredPass::stop() {
  co_await park_until_woken([this](std::function<void()> wake) {
    std::unique_lock lk(mutex_);
    stopped_ = true;
    again_ = false;
    if (sleep_) sleep_->cancel();
    if (running_) {
      stop_waiters_.push_back(std::move(wake));
      return;
    }
    lk.unlock();
    wake();
  });
}

}  // namespace dmnbd
