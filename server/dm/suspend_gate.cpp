#include "dmnbd/suspend_gate.hpp"

#include "dmnbd/park.hpp"

namespace dmnbd {
Task<SuspendGate::Pass> SuspendGate::enter() {
  {
    std::lock_guard lk(mutex_);
    if (!suspended_) {
      ++in_flight_;  // the common case: no suspension, no suspension point
      co_return Pass(this);
    }
  }
  co_await park_until_woken([this](std::function<void()> wake) {
    std::unique_lock lk(mutex_);
    if (!suspended_) {
      ++in_flight_;
      lk.unlock();
      wake();
      return;
    }
    ++waited_;
    // resume() counts us in flight before waking us, so a new suspend that
    // comes before we run still waits for us.
    blocked_.push_back(std::move(wake));
  });
  co_return Pass(this);
}

void SuspendGate::leave() {
  std::vector<std::function<void()>> wake;
  {
    std::lock_guard lk(mutex_);
    if (--in_flight_ == 0) wake.swap(drained_);
  }
  for (auto& w : wake) w();
}

Task<void> SuspendGate::suspend() {
  co_await park_until_woken([this](std::function<void()> wake) {
    std::unique_lock lk(mutex_);
    suspended_ = true;
    if (in_flight_ == 0) {
      lk.unlock();
      wake();
      return;
    }
    drained_.push_back(std::move(wake));
  });
}

void SuspendGate::resume() {
  std::vector<std::function<void()>> wake;
  {
    std::lock_guard lk(mutex_);
    suspended_ = false;
    in_flight_ += blocked_.size();
    wake.swap(blocked_);
  }
  for (auto& w : wake) w();
}

bool SuspendGate::suspended() const {
  std::lock_guard lk(mutex_);
  return suspended_;
}

size_t SuspendGate::in_flight() const {
  std::lock_guard lk(mutex_);
  return in_flight_;
}

uint64_t SuspendGate::waited() const {
  std::lock_guard lk(mutex_);
  return waited_;
}

}  // namespace dmnbd
