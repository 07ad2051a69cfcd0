#include "stripe_lock.hpp"

#include "dmnbd/park.hpp"

namespace dmnbd::raid {

Task<StripeLocks::Guard> StripeLocks::lock(uint64_t row) {
  co_await park_until_woken([this, row](std::function<void()> wake) {
    std::unique_lock lk(mutex_);
    auto [it, fresh] = rows_.try_emplace(row);
    if (!fresh) {
      it->second.push_back(std::move(wake));
      return;
    }
    lk.unlock();
    wake();
  });
  co_return Guard(this, row);
}

void StripeLocks::unlock(uint64_t row) {
  std::function<void()> next;
  {
    std::lock_guard lk(mutex_);
    auto it = rows_.find(row);
    if (it->second.empty()) {
      rows_.erase(it);
      return;
    }
    next = std::move(it->second.front());  // the row passes straight to the next waiter
    it->second.pop_front();
  }
  next();
}

size_t StripeLocks::locked() const {
  std::lock_guard lk(mutex_);
  return rows_.size();
}

}  // namespace dmnbd::raid
