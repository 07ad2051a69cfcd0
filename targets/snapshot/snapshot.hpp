// One snapshot of an origin device (the kernel's struct dm_snapshot): its COW
// device, its exception store and the table of chunks copied so far. It is
// shared, not owned, by the table line that made it: a reloaded snapshot
// table with the same COW takes it over (the kernel's handover) instead of
// reading the metadata again, and an origin write in flight keeps it alive.
//
// Writes to the origin call copy_out() first, for every snapshot of that
// origin (origins.hpp); reads and writes of the snapshot device come through
// read() and write(). Every member may be called from any thread.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "dmnbd/block_device.hpp"
#include "dmnbd/kcopyd.hpp"
#include "exception_store.hpp"
#include "exception_table.hpp"

namespace dmnbd::snapshot {

class Snapshot : public std::enable_shared_from_this<Snapshot> {
 public:
  Snapshot(std::shared_ptr<BlockDevice> origin, std::shared_ptr<BlockDevice> cow,
           std::unique_ptr<ExceptionStore> store, std::function<void()> raise_event);
  ~Snapshot();
  Snapshot(const Snapshot&) = delete;
  Snapshot& operator=(const Snapshot&) = delete;

  // Reads the store's metadata into the exception table (a new COW gets its
  // header here) and registers with the origin. Throws TargetError with the
  // kernel's words.
  Task<void> load();

  const std::shared_ptr<BlockDevice>& origin() const { return origin_; }
  const std::shared_ptr<BlockDevice>& cow() const { return cow_; }
  const ExceptionStore& store() const { return *store_; }
  uint32_t chunk_sectors() const { return chunk_sectors_; }
  Chunk chunk_of(uint64_t sector) const { return sector >> chunk_shift_; }

  // The snapshot device's I/O, each inside one chunk (max_io_len).
  Task<Status> read(Bio bio);
  Task<Status> write(Bio bio);  // also write-zeroes
  Task<Status> flush();         // to the COW
  // With discard_zeroes_cow, a discard of a whole copied chunk zeroes the
  // copy (the exception stays); with discard_passdown_origin it also goes
  // to the origin, without a copy-out.
  Task<Status> discard(Bio bio, bool zero_cow, bool passdown);

  // Before a write of [sector, sector + count) reaches the origin: every
  // chunk of this snapshot it touches is copied out and the copy is durable,
  // and no read of the snapshot is still reading those chunks from the
  // origin. Never fails the origin write: a snapshot that cannot copy is
  // invalidated instead.
  Task<void> copy_out(uint64_t sector, uint64_t count);

  // Copy-outs start once the snapshot table is resumed, for the sectors the
  // table covers (the kernel's s->active and the table size).
  void activate(uint64_t table_sectors);
  bool active() const { return active_.load(); }

  bool valid() const { return valid_.load(); }
  bool overflowed() const { return overflow_.load(); }
  // "Invalid", "Overflow" or "<allocated>/<total> <metadata>".
  std::string status() const;
  size_t exceptions() const;
  size_t table_memory_bytes() const;

  // Waits for every copy in flight (teardown).
  Task<void> drain();

 private:
  struct Pending;

  // The COW chunk holding `chunk` once it is copied (or, when `whole` is
  // given, once `whole` — a write of the entire chunk — is on the COW in its
  // place). Shared by origin copy-outs and snapshot writes: one copy per
  // chunk, later callers wait for it. EIO when the snapshot is (or becomes)
  // invalid; ENOSPC when a snapshot write finds the COW full.
  // `wrote_whole` says `whole` was written as the copy.
  Task<Status> exception_for(Chunk chunk, const Bio* whole, bool for_origin, Chunk& out,
                             bool& wrote_whole);
  // Copies the chunk (or writes `whole`) and commits the exception.
  Task<Status> make_exception(const Pending& pe, const Bio* whole);
  Task<void> wait_for(const std::shared_ptr<Pending>& pe);
  // __invalidate_snapshot(): header valid = 0, all I/O fails, an event.
  Task<void> invalidate(const char* why);

  // Reads of origin chunks in flight through the snapshot (track_chunk()).
  void untrack_read(Chunk chunk);
  Task<void> wait_for_reads(Chunk chunk);

  const std::shared_ptr<BlockDevice> origin_;
  const std::shared_ptr<BlockDevice> cow_;
  const std::unique_ptr<ExceptionStore> store_;
  const std::function<void()> raise_event_;
  uint32_t chunk_sectors_ = 0;
  unsigned chunk_shift_ = 0;
  Kcopyd kcopyd_;

  std::atomic<bool> valid_ = true;
  std::atomic<bool> overflow_ = false;
  std::atomic<bool> active_ = false;
  std::atomic<uint64_t> table_sectors_ = 0;

  mutable std::mutex mutex_;  // everything below
  ExceptionTable complete_;
  std::unordered_map<Chunk, std::shared_ptr<Pending>> pending_;
  std::unordered_map<Chunk, unsigned> reads_;        // origin reads in flight, per chunk
  std::vector<std::function<void()>> read_waiters_;  // woken when a tracked read ends
  unsigned copies_ = 0;                              // exception_for() calls copying
  std::vector<std::function<void()>> drain_waiters_;
};

}  // namespace dmnbd::snapshot
