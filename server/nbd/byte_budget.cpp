#include "byte_budget.hpp"

#include <algorithm>
#include <vector>

#include "dmnbd/park.hpp"

namespace dmnbd::nbd {

Task<ByteBudget::Lease> ByteBudget::acquire(uint64_t bytes) {
  if (bytes == 0) co_return Lease(this, 0);
  {
    std::lock_guard lk(mutex_);
    if (waiters_.empty() && fits(bytes)) {
      grant(bytes);
      co_return Lease(this, bytes);
    }
  }
  // release() grants the bytes before it wakes us: we own them on waking.
  co_await park_until_woken([&](std::function<void()> wake) {
    std::unique_lock lk(mutex_);
    if (waiters_.empty() && fits(bytes)) {  // given back meanwhile
      grant(bytes);
      lk.unlock();
      wake();
      return;
    }
    waiters_.push_back({bytes, std::move(wake)});
  });
  co_return Lease(this, bytes);
}

void ByteBudget::grant(uint64_t bytes) {
  used_ += bytes;
  peak_ = std::max(peak_, used_);
}

void ByteBudget::release(uint64_t bytes) {
  if (bytes == 0) return;
  std::vector<std::function<void()>> woken;
  {
    std::lock_guard lk(mutex_);
    used_ -= bytes;
    while (!waiters_.empty() && fits(waiters_.front().bytes)) {
      grant(waiters_.front().bytes);
      woken.push_back(std::move(waiters_.front().wake));
      waiters_.pop_front();
    }
  }
  for (auto& wake : woken) wake();  // each resumes on its own executor
}

uint64_t ByteBudget::in_use() const {
  std::lock_guard lk(mutex_);
  return used_;
}

uint64_t ByteBudget::peak() const {
  std::lock_guard lk(mutex_);
  return peak_;
}

}  // namespace dmnbd::nbd
