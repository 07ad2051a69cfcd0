#include "dm/suspend_gate.hpp"

#include "dmnbd/park.hpp"

namespace dmnbd {

bool SuspendGate::try_enter() {
  // Count ourselves in first: a suspend that comes after this add waits for us.
  if (!(state_.fetch_add(1, std::memory_order_acquire) & kSuspended)) return true;
  leave();  // the gate was shut: undo, which may be what a suspend waits for
  return false;
}

Task<SuspendGate::Pass> SuspendGate::enter() {
  if (try_enter()) co_return Pass(this);
  co_await park_until_woken([this](std::function<void()> wake) {
    std::unique_lock lk(mutex_);
    if (!(state_.load() & kSuspended)) {
      state_.fetch_add(1);
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

Task<SuspendGate::Pass> SuspendGate::enter_after_resume() {
  co_await park_until_woken([this](std::function<void()> wake) {
    std::lock_guard lk(mutex_);
    ++waited_;
    blocked_.push_back(std::move(wake));  // resume() counts it in flight
  });
  co_return Pass(this);
}

void SuspendGate::leave() {
  if (state_.fetch_sub(1, std::memory_order_release) - 1 != kSuspended) return;
  // The last I/O left a shut gate: wake whoever suspends it.
  std::vector<std::function<void()>> wake;
  {
    std::lock_guard lk(mutex_);
    if (state_.load() == kSuspended) wake.swap(drained_);
  }
  for (auto& w : wake) w();
}

Task<void> SuspendGate::suspend() {
  co_await park_until_woken([this](std::function<void()> wake) {
    std::unique_lock lk(mutex_);
    if (state_.fetch_or(kSuspended) == 0) {  // nothing in flight
      lk.unlock();
      wake();
      return;
    }
    drained_.push_back(std::move(wake));
    if (state_.load() == kSuspended) {  // drained between the two lines above
      std::vector<std::function<void()>> now;
      now.swap(drained_);
      lk.unlock();
      for (auto& w : now) w();
    }
  });
}

void SuspendGate::resume() {
  std::vector<std::function<void()>> wake;
  {
    std::lock_guard lk(mutex_);
    state_.fetch_add(blocked_.size());  // held I/O counts as in flight before it runs
    state_.fetch_and(~kSuspended);
    wake.swap(blocked_);
    // A suspend still waiting to drain is over too: the gate is open again.
    for (auto& w : drained_) wake.push_back(std::move(w));
    drained_.clear();
  }
  for (auto& w : wake) w();
}

bool SuspendGate::suspended() const {
  return state_.load() & kSuspended;
}

size_t SuspendGate::in_flight() const {
  return state_.load() & ~kSuspended;
}

uint64_t SuspendGate::waited() const {
  std::lock_guard lk(mutex_);
  return waited_;
}

}  // namespace dmnbd
