// The writes in flight on one origin device, so that a snapshot's resume can
// wait out those that started before the snapshot was active: they made no
// copy-out for it, and must land before it serves I/O or the snapshot would
// change after it was made. (The kernel fast-suspends the origin device while
// a snapshot resumes, for the same reason.) Two epochs, as RCU does: writes
// count themselves in the current one, and a drain starts a new epoch and
// waits for the old one to empty, so writes that keep coming cannot starve it.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "dmnbd/async_mutex.hpp"
#include "dmnbd/block_device.hpp"

namespace dmnbd::snapshot {

class OriginWrites {
 public:
  // The one for `origin` (BlockDevice::identity()), made on first use.
  static std::shared_ptr<OriginWrites> of(const BlockDevice* origin);

  // Held by a write from before its copy-outs until it has reached the origin.
  class Guard {
   public:
    explicit Guard(std::shared_ptr<OriginWrites> w)
        : writes_(std::move(w)), epoch_(writes_->enter()) {}
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;
    ~Guard() { writes_->leave(epoch_); }

   private:
    const std::shared_ptr<OriginWrites> writes_;
    const unsigned epoch_;
  };

  // Returns once every write that entered before the call has left.
  Task<void> drain();

 private:
  unsigned enter();
  void leave(unsigned epoch);

  AsyncMutex drains_;  // one drain at a time, so epochs never mix
  std::mutex mutex_;   // everything below
  uint64_t epoch_ = 0;
  uint64_t in_flight_[2] = {0, 0};
  std::vector<std::function<void()>> drained_[2];
};

}  // namespace dmnbd::snapshot
