// The state of each region of a mirror while it is in use (the kernel's
// dm-region-hash.c): writes in flight per region, and the transitions that
// tell the dirty log when a region goes dirty, clean, out of sync or is
// recovered.
//
//   clean      in sync, no write in flight (the log's clean bit may still be
//              clear until clear_clean_regions() sets it)
//   dirty      in sync, writes in flight; its clean bit is clear
//   nosync     out of sync: writes go to the default leg only
//   recovering being copied from the default leg; new writes wait
//
// Only regions that are not plainly clean have an entry; the rest are read
// from the log. Every member may be called from any thread.
#pragma once
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

#include "dirty_log.hpp"

namespace dmnbd::mirror {

enum class RegionState { clean, dirty, nosync, recovering };

class RegionHash {
 public:
  explicit RegionHash(DirtyLog& log);

  RegionId region_of(uint64_t sector) const { return sector >> region_shift_; }
  uint64_t region_start(RegionId r) const { return r << region_shift_; }

  // dm_rh_get_state()
  RegionState state(RegionId r) const;
  bool in_sync(RegionId r) const {
    const RegionState s = state(r);
    return s == RegionState::clean || s == RegionState::dirty;
  }

  struct WriteStart {
    RegionState state;    // clean/dirty: write every leg; nosync: the default leg
    uint64_t log_ticket;  // DirtyLog::wait_durable() before the data goes out
  };
  // A write to the region begins (dm_rh_inc_pending), after waiting while the
  // region is recovering (dm_rh_delay). A clean region goes dirty.
  Task<WriteStart> begin_write(RegionId r);
  // The write is done (dm_rh_dec). True when the region went clean: its
  // clean bit waits for clear_clean_regions().
  bool end_write(RegionId r);
  // A write that failed on some leg but not all (dm_rh_mark_nosync): the
  // region goes out of sync. For a failed flush, flush_failed(): from now on
  // every region whose writes end goes out of sync.
  void mark_nosync(RegionId r);
  void flush_failed();

  // dm_rh_update_states(), the clean part: the log's clean bit is set for
  // every region that went clean at least `min_idle` ago.
  struct Cleared {
    bool any = false;                                           // bits were set: flush the log
    std::optional<std::chrono::steady_clock::time_point> next;  // when the next one is due
  };
  Cleared clear_clean_regions(std::chrono::steady_clock::duration min_idle = {});

  // ---- Recovery, one region at a time.
  // The next region to recover (the log's get_resync_work()); it goes to
  // `recovering`, so new writes wait.
  std::optional<RegionId> begin_recovery();
  // Returns once the writes in flight to the region are done (true), or
  // false when one of them failed and the region went out of sync instead.
  Task<bool> wait_quiesced(RegionId r);
  // The copy is done: the region is in sync (success, or a failure the mirror
  // does not handle) or stays out of sync; waiting writes go on.
  void end_recovery(RegionId r, bool in_sync, bool cleaned);

 private:
  struct Entry {
    RegionState state = RegionState::clean;
    unsigned pending = 0;
    uint64_t log_ticket = 0;  // the flush that holds the clean bit it cleared
    bool on_clean_list = false;
    std::chrono::steady_clock::time_point clean_since;  // when it went on the clean list
    std::vector<std::function<void()>> delayed;         // writes waiting for a recovery
    std::function<void()> quiesced;                     // the recovery, waiting for writes
  };
  Entry& find_or_add(RegionId r);                // under mutex_: __rh_find()
  void put_on_clean_list(RegionId r, Entry& e);  // under mutex_
  void wake_delayed(Entry& e);                   // under mutex_; the wakes only post

  DirtyLog& log_;
  unsigned region_shift_ = 0;
  mutable std::mutex mutex_;  // everything below
  std::unordered_map<RegionId, Entry> regions_;
  // Regions in the order they went clean; a region that went dirty and
  // clean again is here twice, and only its newest place counts.
  std::deque<std::pair<RegionId, std::chrono::steady_clock::time_point>> clean_list_;
  bool flush_failure_ = false;
};

}  // namespace dmnbd::mirror
