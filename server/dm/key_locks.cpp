#include "dmnbd/key_locks.hpp"

#include "dmnbd/park.hpp"

namespace dmnbd {

Task<KeyLocks::Guard> KeyLocks::lock(uint64_t key) {
  {
    // Not held: taken at once, without a trip through the event loop.
    std::lock_guard lk(mutex_);
    if (keys_.try_emplace(key).second) co_return Guard(this, key);
  }
  co_await park_until_woken([this, key](std::function<void()> wake) {
    std::unique_lock lk(mutex_);
    auto [it, fresh] = keys_.try_emplace(key);
    if (!fresh) {
      it->second.push_back(std::move(wake));
      return;
    }
    lk.unlock();
    wake();
  });
  co_return Guard(this, key);
}

void KeyLocks::unlock(uint64_t key) {
  std::function<void()> next;
  {
    std::lock_guard lk(mutex_);
    auto it = keys_.find(key);
    if (it->second.empty()) {
      keys_.erase(it);
      return;
    }
    next = std::move(it->second.front());  // the key passes straight to the next waiter
    it->second.pop_front();
  }
  next();
}

size_t KeyLocks::locked() const {
  std::lock_guard lk(mutex_);
  return keys_.size();
}

}  // namespace dmnbd
