#include "dmnbd/async_mutex.hpp"

#include "dmnbd/park.hpp"

namespace dmnbd {

Task<AsyncMutex::Guard> AsyncMutex::lock() {
  {
    // Not held: taken at once, without a trip through the event loop.
    std::lock_guard lk(state_mutex_);
    if (!locked_) {
      locked_ = true;
      co_return Guard(this);
    }
  }
  co_await park_until_woken([this](std::function<void()> wake) {
    std::unique_lock lk(state_mutex_);
    if (!locked_) {
      locked_ = true;
      lk.unlock();
      wake();
    } else {
      waiters_.push_back(std::move(wake));
    }
  });
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
