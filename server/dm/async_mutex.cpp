#include "dmnbd/async_mutex.hpp"

#include <memory>

namespace dmnbd {

Task<AsyncMutex::Guard> AsyncMutex::lock() {
  co_await asio::async_initiate<decltype(asio::use_awaitable), void()>(
      [this](auto handler) {
        auto home = asio::get_associated_executor(handler);
        // std::function needs a copyable callable; the handler is move-only.
        auto shared = std::make_shared<decltype(handler)>(std::move(handler));
        auto resume = [home, shared] { asio::post(home, [shared] { std::move (*shared)(); }); };
        std::unique_lock lk(state_mutex_);
        if (!locked_) {
          locked_ = true;
          lk.unlock();
          resume();
        } else {
          waiters_.push_back(std::move(resume));
        }
      },
      asio::use_awaitable);
  co_return Guard(this);
}

void AsyncMutex::unlock() {
  std::function<void()> next;
  {
    std::lock_guard lk(state_mutex_);
    if (waiters_.empty()) {
      locked_ = false;
      return;
    }
    next = std::move(waiters_.front());  // ownership passes straight to the next waiter
    waiters_.pop_front();
  }
  next();
}

}  // namespace dmnbd
