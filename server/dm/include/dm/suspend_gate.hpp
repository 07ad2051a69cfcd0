// The suspend gate of a device (Seastar's gate, plus a door): I/O enters and
// leaves; suspend() shuts the door to new I/O and waits until everything in
// flight has left; resume() lets the queued I/O through. Safe across threads:
// each waiter is resumed on its own executor.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <vector>

#include "dmnbd/asio.hpp"

namespace dmnbd {

class SuspendGate {
 public:
  class Pass {
   public:
    explicit Pass(SuspendGate* gate) : gate_(gate) {}
    Pass(Pass&& o) noexcept : gate_(std::exchange(o.gate_, nullptr)) {}
    Pass& operator=(Pass&& o) noexcept {
      if (this != &o) {
        if (gate_) gate_->leave();
        gate_ = std::exchange(o.gate_, nullptr);
      }
      return *this;
    }
    ~Pass() {
      if (gate_) gate_->leave();
    }

   private:
    SuspendGate* gate_;
  };

  // Waits while suspended, then counts the caller as in flight until the Pass dies.
  Task<Pass> enter();
  // enter() without a suspension point when the gate is open (the hot path);
  // false means the caller must co_await enter().
  bool try_enter();
  // enter(), but only after the next resume(), even if the gate is open now:
  // for I/O a target gave back during a noflush suspend (requeue_status()).
  Task<Pass> enter_after_resume();

  // Stops new I/O and waits for the I/O in flight to finish. Idempotent.
  Task<void> suspend();
  void resume();

  bool suspended() const;
  size_t in_flight() const;
  // How many entries had to wait for a resume, since the gate was made.
  uint64_t waited() const;

 private:
  void leave();

  // Bit 63: suspended; the rest: I/O in flight. Entering an open gate is one
  // atomic add; the mutex is only for suspending, resuming and waiting.
  static constexpr uint64_t kSuspended = 1ull << 63;
  std::atomic<uint64_t> state_ = 0;
  mutable std::mutex mutex_;
  uint64_t waited_ = 0;
  std::vector<std::function<void()>> blocked_;  // I/O waiting for resume
  std::vector<std::function<void()>> drained_;  // suspenders waiting for in_flight_ == 0
};

}  // namespace dmnbd
