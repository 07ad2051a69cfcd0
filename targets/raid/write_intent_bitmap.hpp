// md's write-intent bitmap, as dm-raid keeps it on every metadata device
// (md-bitmap.c; the format is metadata_format.hpp): one bit per region of
// the array's resync range, set and on disk before a write to the region
// goes out, cleared once the region has been idle for two daemon periods
// (the kernel: two to three) and nothing is degraded. A crash or a missing
// leg leaves the bits of the regions written meanwhile set, and those are
// what a resync or a returning leg's recovery copies.
//
// Durability: a write waits for the commit that holds its bit (group
// commits, GroupCommit); a commit that clears bits first flushes the data
// legs (the legs_flush callback), so a bit never reads clear on disk before
// the data it covered is durable. Unlike md, which flushes only the metadata
// device, that holds when legs and metadata are on different disks.
//
// Besides the bits each region has a count of writes in flight, and a
// "needed" mark: the region still has to be resynced or recovered.
// Every member may be called from any thread.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

#include "dmnbd/block_device.hpp"
#include "dmnbd/group_commit.hpp"
#include "metadata_format.hpp"

namespace dmnbd::raid {

class WriteIntentBitmap {
 public:
  using Clock = std::chrono::steady_clock;

  struct Options {
    uint64_t sync_size = 0;       // sectors the bits cover
    uint32_t region_sectors = 0;  // a power of two
    uint32_t daemon_sleep_seconds = 5;
    uint32_t write_behind = 0;
  };

  // `metadata`: one per raid device, null where it has none.
  WriteIntentBitmap(std::vector<std::shared_ptr<BlockDevice>> metadata, Options options);

  uint64_t regions() const { return regions_; }
  uint32_t region_sectors() const { return options_.region_sectors; }
  uint64_t region_of(uint64_t sector) const { return sector >> region_shift_; }

  // Flushes the data legs before cleared bits are written.
  void set_legs_flush(std::function<Task<Status>()> legs_flush) {
    legs_flush_ = std::move(legs_flush);
  }
  // Called when writing to a metadata device fails (the leg fails, md_error).
  void set_on_device_error(std::function<void(unsigned device)> on_error) {
    on_device_error_ = std::move(on_error);
  }
  // Metadata devices written to (md writes every leg that is not faulty).
  void set_device_active(unsigned device, bool active);

  // ---- Load (md_bitmap_read_sb and md_bitmap_init_from_disk).
  struct Loaded {
    bool ok = false;
    std::string error;   // why the bitmap cannot be used ("bad magic")
    bool stale = false;  // out of date or STALE: every bit set
    uint64_t dirty = 0;  // bits found set
    uint32_t chunksize = 0;
    uint32_t daemon_sleep = 0;
  };
  // Reads device `from`'s copy; events < `sb_events` makes it stale.
  Task<Loaded> load(unsigned from, uint64_t sb_events);
  // A new bitmap (md_bitmap_new_disk_sb): every bit set unless `clean`.
  void create(bool clean, uint64_t events);
  // Re-lays the bits for a new region size (md_bitmap_resize): a new region
  // is dirty if any old one it covers was.
  void resize(uint32_t region_sectors);

  // ---- Writes.
  // The regions of [first, last] get a write in flight; returns once every
  // bit is on disk (the commit's error otherwise; the counts stay taken).
  Task<Status> start_write(uint64_t first, uint64_t last);
  // `degraded`: a leg missed the write, so its regions stay dirty and needed.
  void end_write(uint64_t first, uint64_t last, bool degraded);

  // md_bitmap_daemon_work(): bits of regions idle for `min_idle` are
  // cleared unless `keep_dirty` (an array that is degraded keeps them).
  // Returns when the next region becomes due, if any.
  struct Cleared {
    bool any = false;
    std::optional<Clock::time_point> next;
  };
  Cleared clear_idle(Clock::duration min_idle, bool keep_dirty);

  // ---- Resync and recovery.
  bool needed(uint64_t r) const;
  void set_needed_where_dirty(uint64_t from_region);
  void set_all_needed(uint64_t from_region);
  // The first needed region at or after `from`, or regions().
  uint64_t next_needed(uint64_t from) const;
  void end_sync(uint64_t r);  // the region is in sync: its bit may clear
  void clear_needed();        // nothing left to sync (all of it is in sync)
  uint64_t dirty_count() const;

  // ---- Commits: the changed pages to every active metadata device.
  void set_events(uint64_t events, bool array_clean);  // md_bitmap_update_sb()
  Task<Status> flush();                                // writes whatever changed, and waits for it

 private:
  struct Entry {
    unsigned pending = 0;
    uint64_t ticket = 0;  // the commit that holds the bit it set
    Clock::time_point idle_since;
  };
  bool bit(uint64_t r) const;
  void set_bit(uint64_t r, bool value);  // under mutex_: marks its page
  void encode_header();                  // under mutex_
  Task<Status> commit();

  std::vector<std::shared_ptr<BlockDevice>> metadata_;
  Options options_;
  unsigned region_shift_ = 0;
  uint64_t regions_ = 0;
  std::function<Task<Status>()> legs_flush_;
  std::function<void(unsigned)> on_device_error_;

  mutable std::mutex mutex_;  // everything below
  std::vector<bool> active_;
  format::BitmapHeader header_;
  std::vector<std::byte> image_;  // header, bits, rounded to the logical block
  std::vector<bool> dirty_pages_;
  std::vector<bool> needed_;
  bool cleared_since_commit_ = false;
  std::unordered_map<uint64_t, Entry> entries_;  // regions with a bit set since load
  GroupCommit commits_{[this] { return commit(); }};
};

}  // namespace dmnbd::raid
