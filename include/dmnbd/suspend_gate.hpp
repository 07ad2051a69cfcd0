// The suspend gate of a device (Seastar's gate, plus a door): I/O enters and
// leaves; suspend() shuts the door to new I/O and waits until everything in
// flight has left; resume() lets the queued I/O through. Safe across threads:
// each waiter is resumed on its own executor.
#pragma once
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
    Pass& operator=(Pass&&) = delete;
    ~Pass() {
      if (gate_) gate_->leave();
    }

   private:
    SuspendGate* gate_;
  };

  // Waits while suspended, then counts the caller as in flight until the Pass dies.
  Task<Pass> enter();

  // Stops new I/O and waits for the I/O in flight to finish. Idempotent.
  Task<void> suspend();
  void resume();

  bool suspended() const;
  size_t in_flight() const;
  // How many entries had to wait for a resume, since the gate was made.
  uint64_t waited() const;

 private:
  void leave();

  mutable std::mutex mutex_;
  bool suspended_ = false;
  size_t in_flight_ = 0;
  uint64_t waited_ = 0;
  std::vector<std::function<void()>> blocked_;  // I/O waiting for resume
  std::vector<std::function<void()>> drained_;  // suspenders waiting for in_flight_ == 0
};

}  // namespace dmnbd
