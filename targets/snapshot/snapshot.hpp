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

#include "dmnbd/background_job.hpp"
#include "dmnbd/block_device.hpp"
#include "dmnbd/kcopyd.hpp"
#include "exception_store.hpp"
#include "exception_table.hpp"
#include "origin_writes.hpp"

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
  // Where `sector` of a chunk now in COW chunk `remapped` is (remap_exception()).
  uint64_t cow_sector(Chunk remapped, uint64_t sector) const {
    return (remapped << chunk_shift_) + (sector & (chunk_sectors_ - 1));
  }
  // The bio is the whole of its chunk (io_overlaps_chunk()).
  bool covers_chunk(const Bio& bio) const {
    return (bio.sector & (chunk_sectors_ - 1)) == 0 && bio.sectors == chunk_sectors_;
  }

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
  // True when copy_out() would have nothing to do: every chunk is copied
  // already and no snapshot read is on them (the fast path of a rewrite).
  bool copied_out(uint64_t sector, uint64_t count) const;

  // Copy-outs start once the snapshot table is resumed, for the sectors the
  // table covers (the kernel's s->active and the table size).
  void activate(uint64_t table_sectors);
  // Returns once the origin writes that began before activate() have landed:
  // they made no copy for this snapshot (origin_writes.hpp).
  Task<void> wait_for_earlier_origin_writes() { co_await origin_writes_->drain(); }

  // Which table line drives the snapshot: the one resumed last. A reloaded
  // line takes the snapshot over from the one before (the kernel's
  // handover), and the line it was taken from reads as Invalid.
  // Its events go to the claiming line's device from then on.
  void claim(const void* line, std::function<void()> raise_event);
  bool owned_by(const void* line) const {
    const void* owner = owner_.load();
    return owner == nullptr || owner == line;
  }

  // ---- snapshot-merge (merge.cpp): the COW's chunks copied back into the
  // origin, newest first, in the kernel's batches, while the merging device
  // (which takes the origin's place) stays readable and writable.
  bool merging() const { return merging_.load(); }
  // snapshot_merge_map(): a chunk still in the COW is read and written
  // there, except that a write to a chunk being merged waits for its batch
  // and then goes to the origin; other chunks are the origin's (writes copy
  // out to the origin's other snapshots first). Discards do nothing.
  Task<Status> merge_io(Bio bio);
  Task<Status> merge_flush();  // the origin and the COW
  // Starts the merge on `executor` (the first time), or lets it go on.
  void start_merge(asio::any_io_executor executor);
  // Presuspend: returns once the batch in flight is done.
  Task<void> pause_merge();
  // Teardown: the merge ends after the batch in flight.
  Task<void> stop_merge();

  // "Invalid", "Merge failed", "Overflow" or "<allocated>/<total> <metadata>".
  std::string status() const;
  size_t exceptions() const;

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
  // One merge batch (snapshot_merge_next_chunks() and merge_callback()).
  Task<JobStep> merge_batch();
  // The merge stops for good: queued writes fail, status "Merge failed".
  void fail_merge(const char* why);

  // I/O in flight that a copy must not overtake (track_chunk()): a
  // snapshot's reads of the origin, which an origin write waits for, and a
  // merging snapshot's writes to the COW, which a merge batch waits for.
  void untrack(Chunk chunk);
  Task<void> wait_for_tracked(Chunk chunk);

  const std::shared_ptr<BlockDevice> origin_;
  const std::shared_ptr<BlockDevice> cow_;
  const std::unique_ptr<ExceptionStore> store_;
  const std::shared_ptr<OriginWrites> origin_writes_;  // this origin's, shared with its writers
  uint32_t chunk_sectors_ = 0;
  unsigned chunk_shift_ = 0;
  Kcopyd kcopyd_;

  std::atomic<bool> valid_ = true;
  std::atomic<bool> overflow_ = false;
  std::atomic<bool> active_ = false;
  std::atomic<uint64_t> table_sectors_ = 0;
  std::atomic<const void*> owner_ = nullptr;
  std::atomic<bool> merging_ = false;
  std::atomic<bool> merge_failed_ = false;
  std::unique_ptr<BackgroundJob> merge_job_;  // on the executor start_merge() was given

  // dm_table_event() of the owning line's device.
  void raise_event();

  mutable std::mutex mutex_;  // everything below
  std::function<void()> raise_event_;
  ExceptionTable complete_;
  std::unordered_map<Chunk, std::shared_ptr<Pending>> pending_;
  std::unordered_map<Chunk, unsigned> tracked_;         // tracked I/O in flight, per chunk
  std::vector<std::function<void()>> tracked_waiters_;  // woken when tracked I/O ends
  unsigned copies_ = 0;                                 // exception_for() calls copying
  std::vector<std::function<void()>> drain_waiters_;
  Chunk merging_first_ = 0;  // the batch being merged: chunks [first, first + count)
  uint64_t merging_count_ = 0;
  std::vector<std::function<void()>> merge_waiters_;  // writes to the batch, until it is done
};

}  // namespace dmnbd::snapshot
