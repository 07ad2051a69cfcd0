// Which snapshots each origin device has (the kernel's _origins table): a
// write through snapshot-origin copies out to each of them first. Keyed by
// the device that really serves the origin (BlockDevice::identity()), so a
// snapshot and a snapshot-origin line naming the same device meet here.
#pragma once
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <vector>

#include "dmnbd/asio.hpp"
#include "dmnbd/block_device.hpp"

namespace dmnbd::snapshot {

class Snapshot;

class Origins {
 public:
  static Origins& instance();

  void add(const std::shared_ptr<Snapshot>& snapshot);
  void remove(const Snapshot* snapshot);
  // The live snapshots of `origin`, largest chunk size first (as the kernel
  // keeps them).
  std::vector<std::shared_ptr<Snapshot>> snapshots_of(const BlockDevice* origin) const;
  // The snapshot of `origin` whose COW is `cow`: a reloaded snapshot table
  // takes it over (the kernel's __find_snapshots_sharing_cow).
  std::shared_ptr<Snapshot> sharing_cow(const BlockDevice* origin, const BlockDevice* cow) const;
  // True when no snapshot of `origin` needs a copy-out for the write (every
  // chunk copied already): a rewrite's fast path, without an allocation.
  bool all_copied_out(const BlockDevice* origin, uint64_t sector, uint64_t count) const;

 private:
  std::vector<std::shared_ptr<Snapshot>> live() const;

  // Shared by every origin write (all_copied_out), exclusive to change.
  mutable std::shared_mutex mutex_;
  std::vector<std::weak_ptr<Snapshot>> snapshots_;  // few: scans are fine
  // Beside snapshots_: a snapshot stays registered until its destructor's
  // remove() gets the lock, so these may be used while it is held.
  std::vector<const Snapshot*> keys_;
};

// do_origin(): before a write of [sector, sector + count) reaches `origin`,
// every snapshot of it copies out what the write would change, side by side.
Task<void> copy_out_to_snapshots(const BlockDevice* origin, uint64_t sector, uint64_t count);

}  // namespace dmnbd::snapshot
