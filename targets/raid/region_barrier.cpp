#include "region_barrier.hpp"

#include "dmnbd/park.hpp"

namespace dmnbd::raid {

Task<void> RegionBarrier::enter_write(uint64_t first, uint64_t last) {
  while (true) {
    bool entered = false;
    co_await park_until_woken([&](std::function<void()> wake) {
      std::unique_lock lk(mutex_);
      for (uint64_t r = first; r <= last; ++r) {
        auto it = slots_.find(r);
        if (it != slots_.end() && it->second.syncing) {
          it->second.waiting_writes.push_back(std::move(wake));
          return;
        }
      }
      for (uint64_t r = first; r <= last; ++r) ++slots_[r].writers;
      entered = true;
      lk.unlock();
      wake();
    });
    if (entered) co_return;
  }
}

void RegionBarrier::exit_write(uint64_t first, uint64_t last) {
  std::vector<std::function<void()>> wake;
  {
    std::lock_guard lk(mutex_);
    for (uint64_t r = first; r <= last; ++r) {
      auto it = slots_.find(r);
      if (it == slots_.end()) continue;
      Slot& s = it->second;
      if (--s.writers) continue;
      if (s.waiting_sync) wake.push_back(std::exchange(s.waiting_sync, nullptr));
      if (!s.syncing) slots_.erase(it);
    }
  }
  for (auto& w : wake) w();
}

Task<void> RegionBarrier::lock_sync(uint64_t r) {
  co_await park_until_woken([&](std::function<void()> wake) {
    std::unique_lock lk(mutex_);
    Slot& s = slots_[r];
    s.syncing = true;
    if (s.writers) {
      s.waiting_sync = std::move(wake);
      return;
    }
    lk.unlock();
    wake();
  });
}

void RegionBarrier::unlock_sync(uint64_t r) {
  std::vector<std::function<void()>> wake;
  {
    std::lock_guard lk(mutex_);
    auto it = slots_.find(r);
    if (it == slots_.end()) return;
    it->second.syncing = false;
    wake.swap(it->second.waiting_writes);
    if (!it->second.writers) slots_.erase(it);
  }
  for (auto& w : wake) w();
}

}  // namespace dmnbd::raid
