// Keeps a resync's copy of a region and the array's writes to it apart (md's
// raise_barrier/wait_barrier, per region): a write waits while its region is
// being synced, and a sync waits for the writes in flight to its region.
// Every member may be called from any thread.
#pragma once
#include <cstdint>
#include <functional>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "dmnbd/asio.hpp"

namespace dmnbd::raid {

class RegionBarrier {
 public:
  // A write to regions [first, last] begins once none of them is syncing.
  Task<void> enter_write(uint64_t first, uint64_t last);
  void exit_write(uint64_t first, uint64_t last);

  // Region r syncs: new writes wait, and this returns once those in flight are done.
  Task<void> lock_sync(uint64_t r);
  void unlock_sync(uint64_t r);

 private:
  struct Slot {
    unsigned writers = 0;
    bool syncing = false;
    std::vector<std::function<void()>> waiting_writes;
    std::function<void()> waiting_sync;
  };
  std::mutex mutex_;
  std::unordered_map<uint64_t, Slot> slots_;  // regions with writers or a sync
};

}  // namespace dmnbd::raid
