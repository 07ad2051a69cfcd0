#include "dmnbd/group_commit.hpp"

#include "dmnbd/park.hpp"

namespace dmnbd {

uint64_t GroupCommit::next() const {
  std::lock_guard lk(mutex_);
  return next_;
}

uint64_t GroupCommit::newest_started() const {
  std::lock_guard lk(mutex_);
  return next_ - 1;
}

bool GroupCommit::in_flight() const {
  std::lock_guard lk(mutex_);
  return running_;
}

Task<Status> GroupCommit::wait(uint64_t ticket) {
  if (ticket == 0) co_return ok();
  while (true) {
    uint64_t number = 0;
    {
      std::lock_guard lk(mutex_);
      if (done_ >= ticket) co_return ok();
      if (!running_) {
        running_ = true;
        number = next_++;
      }
    }
    if (number == 0) {
      // Join the commit in flight. It may not hold our change: look again
      // after it, unless it failed with our change in it.
      co_await park_until_woken([this](std::function<void()> wake) {
        std::unique_lock lk(mutex_);
        if (!running_) {
          lk.unlock();
          wake();
          return;
        }
        waiters_.push_back(std::move(wake));
      });
      std::lock_guard lk(mutex_);
      if (done_ < ticket && last_failed_ >= ticket) co_return last_failure_;
      continue;
    }
    Status st = co_await commit_();
    std::vector<std::function<void()>> waiters;
    {
      std::lock_guard lk(mutex_);
      running_ = false;
      if (!st) {
        done_ = number;
      } else {
        last_failed_ = number;
        last_failure_ = st;
      }
      waiters.swap(waiters_);
    }
    for (auto& wake : waiters) wake();
    if (st) co_return st;
  }
}

}  // namespace dmnbd
