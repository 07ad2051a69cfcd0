// A mutex for coroutines that may run on different event-loop threads:
// lock() suspends the caller instead of blocking its thread.
#pragma once
#include <deque>
#include <functional>
#include <mutex>

#include "dmnbd/asio.hpp"

namespace dmnbd {

class AsyncMutex {
 public:
  class Guard {
   public:
    explicit Guard(AsyncMutex* m) : mutex_(m) {}
    Guard(Guard&& o) noexcept : mutex_(std::exchange(o.mutex_, nullptr)) {}
    Guard& operator=(Guard&&) = delete;
    ~Guard() {
      if (mutex_) mutex_->unlock();
    }

   private:
    AsyncMutex* mutex_;
  };

  Task<Guard> lock();
  void unlock();

 private:
  std::mutex state_mutex_;
  bool locked_ = false;
  std::deque<std::function<void()>> waiters_;  // each resumes one waiter on its own executor
};

}  // namespace dmnbd
