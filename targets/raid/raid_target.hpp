// raid <type> <#params> <chunk> [<param>...] <#devs> (<meta|-> <data|->)...:
// the kernel's dm-raid (target 1.15.1) for raid0, raid1, raid10, raid4,
// raid5 and raid6, with md's behaviour around it: the dm_raid_superblock and
// write-intent bitmap on each metadata device (metadata_format.hpp), resync,
// recovery, check and repair in the background, and the status line and
// messages of dm-raid.
//
//   raid_target.cpp  construction, superblocks, suspend/resume, status, messages
//   raid_io.cpp      raid0/1/10 reads (md's read balancing) and writes (every copy)
//   raid_sync.cpp    the sync actions: resync, recover, check, repair
//   parity_io.cpp    raid4/5/6 reads and writes (parity_layout, parity_math,
//   parity_sync.cpp  stripe_lock) and their sync actions
//
// A leg that fails an I/O is marked faulty (md_error): its failure is in
// the superblocks before the I/O completes, writes go on to the others and
// leave their regions dirty in the bitmap, and a resume that finds it
// readable again (or a reload naming it) recovers just those regions.
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "dmnbd/background_job.hpp"
#include "dmnbd/deferred_pass.hpp"
#include "dmnbd/group_commit.hpp"
#include "dmnbd/kcopyd.hpp"
#include "dmnbd/key_locks.hpp"
#include "dmnbd/target.hpp"
#include "metadata_format.hpp"
#include "parity_layout.hpp"
#include "parity_math.hpp"
#include "raid_layout.hpp"
#include "raid_params.hpp"
#include "region_barrier.hpp"
#include "write_intent_bitmap.hpp"

namespace dmnbd::raid {

struct WriteSegment;

// md's sync actions, as dm-raid's status names them.
enum class SyncAction { idle, resync, recover, check, repair };

struct RaidDevice {
  std::string data_name;  // empty for "-"
  std::shared_ptr<BlockDevice> meta, data;
  bool write_mostly = false;
  bool first_use = false;  // a new superblock (no valid one, or rebuild)
  // Re-added after a failure: its recovery copies only the bitmap's dirty
  // regions (md's saved_raid_disk), where a new one copies everything.
  bool partial = false;
  uint64_t data_offset = 0;
  format::Superblock sb;  // as read
  std::atomic<bool> faulty = false;
  std::atomic<bool> in_sync = true;
  std::atomic<uint64_t> recovery_offset = format::kMaxSector;
  std::atomic<unsigned> in_flight = 0;  // for read balancing
  uint64_t failure_ticket = 0;          // the superblock commit that records its failure

  bool present() const { return data != nullptr; }
  bool usable() const { return present() && !faulty.load(); }
};

class RaidTarget final : public Target {
 public:
  RaidTarget(const TargetContext& ctx, TargetArgs args);
  ~RaidTarget() override;

  Task<void> open() override;
  Task<Status> map(Bio bio) override;
  Task<Status> direct_access(uint64_t sector, uint64_t count, const DirectAccess& how) override;
  std::string table() const override;
  std::string status() const override;
  Task<std::string> message(std::vector<std::string> words) override;
  Task<void> presuspend() override;
  Task<void> postsuspend() override;
  Task<Status> preresume() override;
  Task<void> resume() override;
  Task<void> teardown() override;
  uint64_t max_io_len() const override;
  std::vector<DeviceArea> device_areas() const override;

 private:
  // ---- raid_target.cpp
  void open_devices(const TargetContext& ctx);
  void open_journal(const TargetContext& ctx);
  Task<void> run_parity_checks();
  void set_sizes(uint64_t length);
  Task<void> analyse_superblocks();
  void validate_freshest(const format::Superblock& sb);
  void validate_redundancy() const;
  Task<void> load_bitmap();
  // md_update_sb(): every superblock (and the bitmap header) with events + 1.
  Task<Status> commit_superblocks();
  Task<Status> write_superblocks();
  format::Superblock superblock_for(unsigned dev) const;
  // md_error(): the device fails, once; the failure reaches the superblocks
  // before this returns.
  Task<void> fail_device(unsigned dev);
  void mark_faulty(unsigned dev);
  bool degraded() const;
  uint64_t resync_max_sectors() const;
  Task<void> attempt_restore_of_faulty_devices();
  Task<void> stop_writes();

  // ---- raid_io.cpp
  Task<Status> read(Bio bio);
  Task<Status> write(Bio bio);
  // The copy md's read_balance() picks, or none.
  std::optional<DeviceSector> choose_read_copy(const Copies& copies, uint64_t sectors,
                                               uint64_t array_sector) const;
  bool readable(const DeviceSector& c, uint64_t sectors) const;
  Bio on_device(const Bio& bio, const DeviceSector& c) const;
  Task<Status> legs_flush();
  // The bitmap daemon's pass (md_bitmap_daemon_work()).
  Task<std::optional<DeferredPass::Clock::time_point>> clear_bitmap_bits();

  // ---- parity_io.cpp: raid4/5/6
  // Rows are read, rebuilt and written in columns of at most this many
  // sectors (64 KiB a leg), which bounds the buffers of one request.
  static constexpr uint64_t kColumnSectors = 128;
  // One row's blocks of some device sectors, one per leg, in one buffer.
  struct RowBuffers {
    RowBuffers(size_t disks, uint64_t sectors);
    uint64_t sectors;
    size_t bytes;
    AlignedBuffer buffer;
    std::vector<std::byte*> blocks;
  };
  // The leg can serve device sectors [sector, +sectors): working, and in
  // sync or recovered past them.
  bool holds(unsigned dev, uint64_t sector, uint64_t sectors) const;
  Task<Status> parity_read(Bio bio);
  Task<Status> read_row(const RowLayout& layout, uint64_t sector, RowBuffers& row);
  Task<std::vector<Status>> read_legs(const std::vector<unsigned>& devs, uint64_t sector,
                                      RowBuffers& row);
  Task<std::vector<unsigned>> write_legs(const std::vector<unsigned>& devs, uint64_t sector,
                                         const RowBuffers& row, uint32_t flags);
  Task<bool> failed_any(const std::vector<unsigned>& devs, const std::vector<Status>& results);
  Task<Status> parity_write(Bio bio);
  Task<Status> write_segment(const RowLayout& layout, uint64_t region, const WriteSegment& seg,
                             uint32_t flags, bool* degraded_write);

  // ---- parity_sync.cpp: raid4/5/6
  enum class RowSync { resync, check, repair, recover };
  Task<bool> parity_sync_span(uint64_t start, uint64_t end, RowSync how, const CancelToken& cancel);
  Task<bool> parity_recover_step(uint64_t s, uint64_t count, const CancelToken& cancel);
  Task<bool> sync_row(uint64_t row, uint64_t sector, uint64_t sectors, RowSync how);
  // raid4/5 with a leg lost, raid6 with two: there is nothing to check or resync.
  bool parity_sync_impossible() const;

  // ---- raid_sync.cpp
  // md_check_recovery(): starts what is needed, unless frozen or running.
  void start_needed_action(std::optional<SyncAction> requested = std::nullopt);
  Task<JobStep> sync_step(const CancelToken& cancel);
  Task<bool> resync_region(uint64_t start, uint64_t end, const CancelToken& cancel);
  Task<bool> compare_region(uint64_t start, uint64_t end, bool repair, const CancelToken& cancel);
  Task<bool> recover_step(uint64_t s, uint64_t count, const CancelToken& cancel);
  // By value: GCC 12 and coroutine parameters that are references to temporaries.
  Task<bool> copy_chunk(uint64_t count, DeviceSector from, std::vector<DeviceSector> to,
                        const CancelToken& cancel);
  bool end_action(SyncAction action, uint64_t generation, Status st);
  Task<void> finish_action();
  Task<void> stop_action();
  bool needs_recovery() const;
  uint64_t recovery_start() const;
  std::optional<unsigned> first_in_sync_copy(const Copies& copies, unsigned excluding) const;

  const std::function<void()> raise_event_;
  RaidParams params_;
  std::vector<std::unique_ptr<RaidDevice>> devs_;
  Geometry geometry_;
  std::optional<ParityGeometry> parity_;  // raid4/5/6
  KeyLocks stripe_locks_;
  uint64_t dev_sectors_ = 0;    // md's dev_sectors
  uint64_t array_sectors_ = 0;  // md's array_sectors
  uint32_t layout_ = 0;         // md layout in use
  uint32_t region_sectors_ = 0;
  std::chrono::milliseconds daemon_period_{5000};
  bool has_metadata_ = false;
  bool new_array_ = false;
  std::unique_ptr<WriteIntentBitmap> bitmap_;
  RegionBarrier barrier_;
  Kcopyd kcopyd_;

  mutable std::mutex mutex_;  // the array's state below
  uint64_t events_ = 0;
  std::atomic<uint64_t> recovery_cp_ = format::kMaxSector;
  std::atomic<bool> preresumed_ = false;  // status() reads it from any thread
  std::atomic<bool> resumed_ = false;
  bool writes_stopped_ = false;  // stop_writes() ran since the last resume
  GroupCommit sb_commits_{[this] { return write_superblocks(); }};

  // The sync thread: one action at a time.
  std::atomic<SyncAction> action_ = SyncAction::idle;
  std::atomic<bool> frozen_ = false;
  bool recover_partial_ = false;        // the running recovery skips clean regions
  std::atomic<uint64_t> position_ = 0;  // curr_resync_completed
  std::atomic<uint64_t> mismatches_ = 0;
  std::string last_action_;
  std::unique_ptr<BackgroundJob> job_;
  std::atomic<uint64_t> job_generation_ = 0;  // a finished job's report is for this one only
  asio::any_io_executor executor_;            // resume()'s, where background work runs

  DeferredPass bitmap_daemon_{[this] { return clear_bitmap_bits(); }};
  std::mutex background_mutex_;  // executor_ and the two below
  // Finished sync actions being wrapped up (finish_action()), for teardown.
  unsigned finishing_ = 0;
  std::vector<std::function<void()>> finished_waiters_;
};

}  // namespace dmnbd::raid
