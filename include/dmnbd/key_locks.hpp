// One lock per key, taken by coroutines, granted in the order asked: the
// kernel's bio prison cells, simplified. raid4/5/6 lock a row (md's
// stripe_head) around a write's read-old, compute and write-all of data and
// parity; thin locks a virtual block around its lookup, provisioning and
// copy. A caller holds one key at a time, so there is no lock order to keep.
// Every member may be called from any thread.
#pragma once
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <unordered_map>
#include <utility>

#include "dmnbd/asio.hpp"

namespace dmnbd {

class KeyLocks {
 public:
  class Guard {
   public:
    Guard(KeyLocks* locks, uint64_t key) : locks_(locks), key_(key) {}
    Guard(Guard&& o) noexcept : locks_(std::exchange(o.locks_, nullptr)), key_(o.key_) {}
    Guard& operator=(Guard&&) = delete;
    ~Guard() {
      if (locks_) locks_->unlock(key_);
    }

   private:
    KeyLocks* locks_;
    uint64_t key_;
  };

  Task<Guard> lock(uint64_t key);
  // Keys locked now (for tests and for the curious).
  size_t locked() const;

 private:
  void unlock(uint64_t key);

  mutable std::mutex mutex_;
  // A key is in the map while locked; its waiters queue in order.
  std::unordered_map<uint64_t, std::deque<std::function<void()>>> keys_;
};

}  // namespace dmnbd
