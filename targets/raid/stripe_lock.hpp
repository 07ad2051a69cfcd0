// One lock per raid4/5/6 row (md's stripe_head, which serialises the I/O of
// a stripe): a write's read-old, compute and write-all of data and parity,
// and a read that rebuilds lost data, hold their row, so that two writes to
// different blocks of one row never lose a parity update and a rebuilding
// read never sees data without its parity. Rows are locked one at a time
// (a request lies in one row), so there is no lock order to keep.
// Every member may be called from any thread.
#pragma once
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <unordered_map>
#include <utility>

#include "dmnbd/asio.hpp"

namespace dmnbd::raid {

class StripeLocks {
 public:
  class Guard {
   public:
    Guard(StripeLocks* locks, uint64_t row) : locks_(locks), row_(row) {}
    Guard(Guard&& o) noexcept : locks_(std::exchange(o.locks_, nullptr)), row_(o.row_) {}
    Guard& operator=(Guard&&) = delete;
    ~Guard() {
      if (locks_) locks_->unlock(row_);
    }

   private:
    StripeLocks* locks_;
    uint64_t row_;
  };

  Task<Guard> lock(uint64_t row);
  // Rows locked now (for tests and for the curious).
  size_t locked() const;

 private:
  void unlock(uint64_t row);

  mutable std::mutex mutex_;
  // A row is in the map while locked; its waiters queue in order.
  std::unordered_map<uint64_t, std::deque<std::function<void()>>> rows_;
};

}  // namespace dmnbd::raid
