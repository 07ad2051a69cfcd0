// A thin pool (the kernel's struct pool in dm-thin.c): the metadata, the
// data device, the pool's mode, and the I/O of every thin device on it.
//
// One Pool outlives reloads of its thin-pool table: a new table line naming
// the same metadata device on the same mapped device takes the live pool
// over (__pool_find), and thin lines reach it through the pool's mapped
// device. Metadata calls are serialised by one lock (root_lock); a thin
// I/O holds its virtual block's lock (a bio prison cell) from lookup to
// mapping insert, so two writes never provision one block twice.
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "dmnbd/async_mutex.hpp"
#include "dmnbd/background_job.hpp"
#include "dmnbd/group_commit.hpp"
#include "dmnbd/kcopyd.hpp"
#include "dmnbd/key_locks.hpp"
#include "dmnbd/target.hpp"
#include "pool_metadata.hpp"

namespace dmnbd::thin {

// enum pool_mode, in the kernel's order (the code compares with >=).
enum class PoolMode { write, out_of_data_space, out_of_metadata_space, read_only, fail };

struct PoolFeatures {
  PoolMode mode = PoolMode::write;  // read_only when asked for
  bool zero_new_blocks = true;
  bool discard_enabled = true;
  bool discard_passdown = true;
  bool error_if_no_space = false;
};

class Pool : public std::enable_shared_from_this<Pool> {
 public:
  // The pool of `mapped_device` or of `metadata` if one is live, else a new
  // one; throws TargetError in the kernel's words (__pool_find).
  static std::shared_ptr<Pool> find_or_create(const BlockDevice* mapped_device,
                                              std::shared_ptr<BlockDevice> metadata,
                                              std::shared_ptr<BlockDevice> data,
                                              uint32_t block_sectors, bool& created);
  // The pool a thin line's pool device serves, if any.
  static std::shared_ptr<Pool> of_device(const BlockDevice* mapped_device);
  ~Pool();

  // Opens (or formats) the metadata: the first open() of a new pool.
  Task<void> open_metadata(bool read_only);
  bool metadata_open() const;

  uint32_t block_sectors() const { return block_sectors_; }
  BlockDevice& data_device() const { return *data_; }
  BlockDevice& metadata_device() const { return *metadata_dev_; }
  PoolMode mode() const { return mode_.load(); }
  bool suspended() const { return suspended_.load(); }
  PoolFeatures features() const;

  // ---- the pool target's hooks ----
  // bind_control_target(): the table's features and low water mark take over.
  void bind(const PoolFeatures& requested, uint64_t low_water_blocks,
            std::function<void()> raise_event);
  // maybe_resize_data_dev / maybe_resize_metadata_dev, then a commit if
  // either grew. Returns the error for a device smaller than the metadata.
  Task<Status> preresume(uint64_t data_blocks, std::string& error);
  Task<void> resume();
  Task<void> postsuspend();
  void presuspend() { suspended_ = true; }
  // STATUSTYPE_INFO, from what the last metadata call left (no commit:
  // the periodic one is at most a second away).
  std::string status() const;
  Task<std::string> message(std::vector<std::string> words);
  // The last holder's teardown commits and stops the periodic commit.
  void hold();
  Task<void> release();

  // ---- thin devices ----
  // A thin line's constructor and teardown; both run on the control thread,
  // as do the messages that add and delete devices.
  Status open_thin(uint32_t id);      // ENODATA for an unknown id
  Task<void> load_thin(uint32_t id);  // its highest mapped block, for status
  void close_thin(uint32_t id);
  Task<void> unload_thin(uint32_t id);  // after close_thin: what load_thin kept goes
  // `noflush_suspending` is the thin line's: a write waiting for data space
  // goes back to the device (requeued) when a noflush suspend begins.
  Task<Status> thin_io(uint32_t id, Bio bio, BlockDevice* origin, uint64_t origin_sectors,
                       const std::function<bool()>* noflush_suspending = nullptr);
  Task<Status> thin_flush(uint32_t id);
  std::string thin_status(uint32_t id) const;
  Task<Status> thin_block_status(uint32_t id, uint64_t sector, uint64_t count, ExtentList& out);

 private:
  Pool(const BlockDevice* mapped_device, std::shared_ptr<BlockDevice> metadata,
       std::shared_ptr<BlockDevice> data, uint32_t block_sectors);

  struct Provision;
  Task<Status> write_unserviceable(const std::function<bool()>* noflush_suspending);
  Task<Status> provision(uint32_t id, uint64_t vblock, const Bio& bio, std::optional<uint64_t> old,
                         BlockDevice* origin, uint64_t origin_sectors,
                         const std::function<bool()>* noflush_suspending);
  Task<Status> fill_around(const Bio& bio, uint64_t vblock, uint64_t data_block,
                           std::optional<uint64_t> old, BlockDevice* origin,
                           uint64_t origin_sectors);
  Task<Status> alloc_data_block(uint64_t& out, const std::function<bool()>* noflush_suspending);
  Task<Status> discard(uint32_t id, const Bio& bio);
  Task<Status> commit_for(uint32_t id);
  Task<Status> commit_locked();  // under meta_lock_
  Task<Status> commit();
  void set_mode(PoolMode mode);
  Task<void> metadata_failed(const char* op, Status st);
  void check_low_water(uint64_t free_blocks);
  std::string name() const;  // the pool device's, for the log
  uint64_t metadata_threshold() const;
  uint64_t metadata_reserve() const;
  uint64_t metadata_headroom() const;
  Task<Status> wait_for_space(const std::function<bool()>* noflush_suspending);
  // The metadata lock; releasing it refreshes what status() shows.
  class MetaGuard {
   public:
    MetaGuard(Pool* pool, AsyncMutex::Guard guard) : pool_(pool), guard_(std::move(guard)) {}
    MetaGuard(MetaGuard&& o) noexcept
        : pool_(std::exchange(o.pool_, nullptr)), guard_(std::move(o.guard_)) {}
    MetaGuard& operator=(MetaGuard&&) = delete;
    ~MetaGuard() {
      if (pool_) pool_->metadata_changed();  // before guard_ lets go
    }

   private:
    Pool* pool_;
    AsyncMutex::Guard guard_;
  };
  Task<MetaGuard> lock_metadata();
  void fire_event();
  void metadata_changed();  // under meta_lock_: the status snapshot, the metadata low water
  void snapshot_status();   // under meta_lock_
  void wake_space_waiters();

  const BlockDevice* mapped_device_;
  std::shared_ptr<BlockDevice> metadata_dev_;
  std::shared_ptr<BlockDevice> data_;
  const uint32_t block_sectors_;

  AsyncMutex meta_lock_;  // every metadata call
  std::unique_ptr<PoolMetadata> pmd_;
  // dev id -> thin lines using it (the control thread's: constructors, teardowns, messages)
  std::map<uint32_t, unsigned> open_thins_;
  // Devices whose mappings changed since the last commit: a flush to one commits.
  std::map<uint32_t, bool> changed_;

  KeyLocks cells_;
  Kcopyd kcopyd_;
  GroupCommit commits_;
  std::unique_ptr<BackgroundJob> waker_;

  mutable std::mutex state_mutex_;  // the fields below
  PoolFeatures requested_;
  PoolFeatures pf_;
  uint64_t low_water_blocks_ = 0;
  bool low_water_triggered_ = false;
  std::function<void()> raise_event_ = [] {};
  std::vector<std::function<void()>> space_waiters_;
  std::chrono::steady_clock::time_point out_of_space_since_;
  unsigned holders_ = 0;
  bool metadata_low_ = false;  // free metadata at or under the threshold (under meta_lock_)

  struct ThinShown {
    uint64_t mapped_blocks = 0;
    std::optional<uint64_t> highest;
  };
  struct Shown {
    bool valid = false;
    uint64_t transaction_id = 0;
    PoolMetadata::Usage usage;
    uint64_t held_root = 0;
    bool needs_check = false;
  };
  std::map<uint32_t, std::optional<uint64_t>> highest_;  // open thins (under meta_lock_)
  // Open thins whose status changed since the last snapshot (under meta_lock_).
  std::set<uint32_t> shown_stale_;
  mutable std::mutex shown_mutex_;
  Shown shown_;
  std::map<uint32_t, ThinShown> shown_thins_;

  std::atomic<PoolMode> mode_ = PoolMode::write;
  std::atomic<bool> suspended_ = true;  // a new pool is suspended until its first resume
};

}  // namespace dmnbd::thin
