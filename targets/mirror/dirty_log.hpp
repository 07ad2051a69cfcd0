// The mirror's dirty region log (the kernel's dm-log.c): which regions are
// clean (no write in flight, every leg holds the same bytes) and which are in
// sync. The `core` log keeps this in memory only, so every activation starts
// a full resync unless `nosync`; the `disk` log keeps the clean bits on a log
// device in the kernel's format (disk_log_format.hpp), so only the regions
// that were being written when the mirror stopped are resynced.
//
// Durability: a write may reach the legs only once the clean bit it cleared
// is on the log device (mark_region() gives the flush to wait for); a clean
// bit set again reaches the log only after the legs were flushed (the
// legs_flush callback), so a region never reads as clean on disk before its
// data is. Flushes are group commits: a writer joins the one in flight or
// starts the next, so many writers share one log write.
//
// Every member may be called from any thread.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "dmnbd/group_commit.hpp"
#include "dmnbd/target.hpp"
#include "region_bits.hpp"

namespace dmnbd::mirror {

using RegionId = uint64_t;

class DirtyLog {
 public:
  // The argument after the region size (struct log_c's enum sync).
  enum class Sync { use_log, nosync, force };

  // dm_dirty_log_create(type, argc, argv): `core` or `disk` with their
  // arguments. Throws TargetError with the kernel's warning text.
  static std::unique_ptr<DirtyLog> create(const TargetContext& ctx, const std::string& type,
                                          TargetArgs args);
  ~DirtyLog();

  // Called before a flush writes bits that were set clean: flushes every
  // leg; an error makes the log mark every region dirty (mirror_flush()).
  void set_legs_flush(std::function<Task<Status>()> legs_flush) {
    legs_flush_ = std::move(legs_flush);
  }

  uint32_t region_size() const { return region_size_; }
  uint64_t region_count() const { return region_count_; }
  bool is_disk() const { return device_ != nullptr; }
  const std::shared_ptr<BlockDevice>& device() const { return device_; }

  // ---- The kernel's dm_dirty_log_type operations.
  bool in_sync(RegionId r) const;
  // Clears the clean bit. Returns the flush number that makes it durable
  // (wait_durable()), or 0 when the bit was already clear.
  uint64_t mark_region(RegionId r);
  void clear_region(RegionId r);  // sets the clean bit, unless a flush failed
  // The lowest region not in sync and not being recovered, from where the
  // search stopped last (it restarts at every resume); it is marked recovering.
  std::optional<RegionId> get_resync_work();
  void set_region_sync(RegionId r, bool in_sync);
  uint64_t sync_count() const;

  // disk_flush(): writes the header and bitmap if a bit changed since the
  // last write, and flushes the log device if a bit was cleared.
  Task<Status> flush();
  // Returns once flush `ticket` (from mark_region()) is done: at once if it
  // is, else it joins or starts the flush. 0 is always done.
  Task<Status> wait_durable(uint64_t ticket);
  // disk_resume(): reads the log device, takes its clean bits (or starts a
  // new log), derives the in-sync bits and writes it all back, flushed.
  Task<void> resume();

  // "1 core" / "3 disk <dev> <A|D|F>", and the table's log part, which ends
  // with a space as the kernel's does: "disk 2 <dev> 1024 ".
  std::string status() const;
  std::string table() const;

 private:
  DirtyLog(const TargetContext& ctx, std::shared_ptr<BlockDevice> device, std::string device_name,
           TargetArgs args);
  // One flush (the group commit's): a copy of the image goes to the log
  // device, after the legs' flush when bits were cleaned.
  Task<Status> run_flush();
  // fail_log_device(): D in the status, and one event.
  void fail_device();

  const std::shared_ptr<BlockDevice> device_;  // null for the core log
  const std::string device_name_;
  std::function<void()> raise_event_;
  std::function<Task<Status>()> legs_flush_;
  Sync sync_ = Sync::use_log;
  uint32_t region_size_ = 0;
  uint64_t region_count_ = 0;

  mutable std::mutex mutex_;  // everything below
  // The log device's image (header and bitmap); the clean bits are its
  // bitmap part. The core log has only the bitmap.
  std::vector<std::byte> image_;
  uint64_t bitmap_at_ = 0;  // where the clean bits start in image_
  std::vector<std::byte> sync_storage_, recovering_storage_;
  RegionBits clean_;
  RegionBits sync_bits_;
  RegionBits recovering_;
  uint64_t sync_count_ = 0;
  RegionId sync_search_ = 0;
  bool touched_dirtied_ = false;
  bool touched_cleaned_ = false;
  bool flush_failed_ = false;  // the legs' flush failed: no region goes clean again
  bool device_failed_ = false;
  bool device_flush_failed_ = false;
  GroupCommit commits_{[this] { return run_flush(); }};
};

}  // namespace dmnbd::mirror
