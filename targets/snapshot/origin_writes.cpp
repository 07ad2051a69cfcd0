#include "origin_writes.hpp"

#include <map>

#include "dmnbd/park.hpp"

namespace dmnbd::snapshot {

std::shared_ptr<OriginWrites> OriginWrites::of(const BlockDevice* origin) {
  static std::mutex mutex;
  static std::map<const BlockDevice*, std::weak_ptr<OriginWrites>> all;
  std::lock_guard lk(mutex);
  std::weak_ptr<OriginWrites>& slot = all[origin];
  auto writes = slot.lock();
  if (!writes) {
    writes = std::make_shared<OriginWrites>();
    slot = writes;
  }
  return writes;
}

unsigned OriginWrites::enter() {
  std::lock_guard lk(mutex_);
  const unsigned epoch = epoch_ & 1;
  ++in_flight_[epoch];
  return epoch;
}

void OriginWrites::leave(unsigned epoch) {
  std::vector<std::function<void()>> wake;
  {
    std::lock_guard lk(mutex_);
    if (--in_flight_[epoch] == 0) wake.swap(drained_[epoch]);
  }
  for (auto& w : wake) w();
}

Task<void> OriginWrites::drain() {
  AsyncMutex::Guard one = co_await drains_.lock();
  co_await park_until_woken([this](std::function<void()> wake) {
    std::unique_lock lk(mutex_);
    const unsigned old = epoch_ & 1;
    ++epoch_;
    if (in_flight_[old] == 0) {
      lk.unlock();
      wake();
    } else {
      drained_[old].push_back(std::move(wake));
    }
  });
}

}  // namespace dmnbd::snapshot
