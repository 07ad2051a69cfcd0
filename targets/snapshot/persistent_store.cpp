// The "P"/"PO" exception store: the kernel's dm-snap-persistent.c, byte for
// byte (layout in persistent_format.hpp).
//
// Commits follow persistent_commit_exception: each writes its slot into the
// in-memory area in allocation order (CommitOrder); the area goes to disk
// (flush, then a FUA write of the whole chunk) only when no other prepared
// exception is pending or the area has just filled, and every commit since
// the last area write is answered once that write is done. A full area is
// followed on disk by a zeroed one before the full one is written, so that
// a reload always finds where the list ends.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <vector>

#include "commit_order.hpp"
#include "dmnbd/async_mutex.hpp"
#include "dmnbd/dm_io.hpp"
#include "dmnbd/park.hpp"
#include "exception_store.hpp"
#include "persistent_format.hpp"

namespace dmnbd::snapshot {
namespace {

using namespace pstore;

class PersistentStore final : public ExceptionStore {
 public:
  PersistentStore(uint32_t chunk_sectors, bool overflow_aware, std::shared_ptr<BlockDevice> cow)
      : cow_(std::move(cow)), chunk_(chunk_sectors), overflow_aware_(overflow_aware) {}

  uint32_t chunk_sectors() const override { return chunk_; }
  std::string table_word() const override { return overflow_aware_ ? "PO" : "P"; }
  bool persistent() const override { return true; }
  bool overflow_aware() const override { return overflow_aware_; }

  Task<Status> read_metadata(std::function<void(ChunkPair)> add, bool& valid) override;
  Status prepare_exception(Chunk old_chunk, Chunk& new_chunk) override;
  Task<Status> commit_exception(ChunkPair e, bool copied) override;
  Task<void> drop_snapshot() override;
  StoreUsage usage() const override;
  Task<Status> prepare_merge(Chunk& last_old, Chunk& last_new, unsigned& count) override;
  Task<Status> commit_merge(unsigned count) override;

 private:
  // One commit_exception waiting for the area write that holds its slot.
  struct Waiter {
    bool released = false;
    Status result;
    std::function<void()> wake;
  };

  size_t chunk_bytes() const { return size_t{chunk_} << 9; }
  uint64_t area_sector(uint64_t area) const { return area_location(per_area_, area) * chunk_; }
  Status invalid_status() const { return errno_status(EIO); }

  // Reads the chunk size, validity and version; true for a zeroed COW.
  Task<Status> read_header(bool& fresh);
  Task<Status> write_header();
  Task<Status> read_exceptions(const std::function<void(ChunkPair)>& add);
  // The current area, durably: flush what came before, then FUA.
  Task<Status> write_area();
  Task<Status> zero_area(uint64_t area);
  Task<void> commit_in_turn(ChunkPair e, bool copied, Waiter& me);
  void release(std::vector<Waiter*> batch, Status result);
  Task<void> wait_released(Waiter& me);

  const std::shared_ptr<BlockDevice> cow_;
  uint32_t chunk_;  // sectors; final once read_metadata has read the header
  const bool overflow_aware_;
  uint32_t per_area_ = 0;            // E, exceptions per metadata area
  uint32_t version_ = kDiskVersion;  // what a header rewrite says
  std::atomic<bool> valid_ = true;
  std::vector<std::byte> zeroes_;  // one chunk, for clearing the next area

  CommitOrder order_;
  AsyncMutex io_mutex_;             // the area buffer and its I/O: one commit or merge step
  std::vector<std::byte> area_;     // the current metadata area, as it will be written
  uint32_t current_committed_ = 0;  // slots used in area_ (io_mutex_, and mutex_ to change)

  mutable std::mutex mutex_;             // everything below, and the Waiters
  Chunk next_free_ = kHeaderChunks + 1;  // the header and area 0 come first
  uint64_t current_area_ = 0;
  uint64_t pending_ = 0;        // prepared and not yet through their commit step
  std::vector<Waiter*> batch_;  // committed into area_, waiting for its write
};

Task<Status> PersistentStore::read_header(bool& fresh) {
  // Without a table chunk size the header is read with the default one,
  // which the header then overrides without a word.
  const bool supplied = chunk_ != 0;
  if (!supplied) chunk_ = kDefaultChunkSectors;
  std::vector<std::byte> chunk(chunk_bytes());
  if (Status st = co_await read_sectors(*cow_, 0, chunk)) co_return st;
  const DiskHeader h = decode_header(chunk);
  fresh = h.magic == 0;
  if (fresh) co_return ok();
  if (h.magic != kMagic) {
    spdlog::warn("persistent snapshot: Invalid or corrupt snapshot");
    throw StoreError("Invalid or corrupt snapshot", kReadMetadataFailed, errno_status(ENXIO));
  }
  valid_ = h.valid != 0;
  version_ = h.version;
  if (h.chunk_size == chunk_) co_return ok();
  if (supplied)
    spdlog::warn(
        "persistent snapshot: chunk size {} in device metadata overrides table chunk size of {}.",
        h.chunk_size, chunk_);
  if (const char* why = chunk_size_error(h.chunk_size)) {
    const std::string words =
        "invalid on-disk chunk size " + std::to_string(h.chunk_size) + ": " + why + ".";
    spdlog::error("persistent snapshot: {}", words);
    throw StoreError(words, kReadMetadataFailed, errno_status(EINVAL));
  }
  chunk_ = h.chunk_size;
  co_return ok();
}

Task<Status> PersistentStore::write_header() {
  std::vector<std::byte> chunk(chunk_bytes());
  encode_header({.valid = valid_ ? 1u : 0u, .version = version_, .chunk_size = chunk_}, chunk);
  co_return co_await write_sectors(*cow_, 0, chunk, kBioFua);
}

Task<Status> PersistentStore::read_exceptions(const std::function<void(ChunkPair)>& add) {
  // Area after area until one is not full: that one is the current area.
  for (uint64_t area = 0;; ++area) {
    if (Status st = co_await read_sectors(*cow_, area_sector(area), area_)) co_return st;
    bool full = true;
    for (uint32_t i = 0; i < per_area_; ++i) {
      const ChunkPair e = decode_slot(area_, i);
      if (e.new_chunk == 0) {  // would be the header: the end of the list
        current_committed_ = i;
        full = false;
        break;
      }
      // Exceptions may have been committed out of order before a crash,
      // leaving holes: the free pointer goes past the highest one.
      next_free_ = std::max(next_free_, e.new_chunk + 1);
      add(e);
    }
    if (!full) {
      current_area_ = area;
      break;
    }
  }
  next_free_ = skip_metadata(per_area_, next_free_);
  co_return ok();
}

Task<Status> PersistentStore::read_metadata(std::function<void(ChunkPair)> add, bool& valid) {
  bool fresh = false;
  if (Status st = co_await read_header(fresh)) co_return st;
  per_area_ = exceptions_per_area(chunk_);
  area_.assign(chunk_bytes(), std::byte{0});
  zeroes_.assign(chunk_bytes(), std::byte{0});
  valid = true;
  if (fresh) {
    // A new snapshot: an empty area 0 and its header, there at once (the
    // kernel writes both at table load). The kernel writes the header first
    // and leaves both volatile until the first commit's preflush; here area
    // 0 goes first and the header follows with a preflush and FUA, so that
    // a crash in between leaves a COW that still reads as new. Same bytes.
    valid_ = true;
    version_ = kDiskVersion;
    if (Status st = co_await zero_area(0)) {
      spdlog::warn("persistent snapshot: zero_disk_area(0) failed");
      co_return st;
    }
    Status st = co_await flush_device(*cow_);
    if (!st) st = co_await write_header();
    if (st) spdlog::warn("persistent snapshot: write_header failed");
    co_return st;
  }
  if (version_ != kDiskVersion) {
    spdlog::warn("persistent snapshot: unable to handle snapshot disk version {}", version_);
    throw StoreError("unable to handle snapshot disk version " + std::to_string(version_),
                     kReadMetadataFailed, errno_status(EINVAL));
  }
  if (!valid_) {
    // The table loads, the snapshot is Invalid; its areas are not read.
    valid = false;
    co_return ok();
  }
  co_return co_await read_exceptions(add);
}

Status PersistentStore::prepare_exception(Chunk old_chunk, Chunk& new_chunk) {
  std::lock_guard lk(mutex_);
  if (cow_->sectors() < (next_free_ + 1) * chunk_) return errno_status(ENOSPC);
  new_chunk = next_free_;
  next_free_ = skip_metadata(per_area_, next_free_ + 1);
  ++pending_;
  order_.take_ticket(new_chunk);
  return ok();
}

Task<Status> PersistentStore::commit_exception(ChunkPair e, bool copied) {
  // Named, not in the condition: GCC 12 mis-builds some co_await there.
  const bool prepared = co_await order_.wait_turn(e.new_chunk);
  if (!prepared) co_return errno_status(EINVAL);  // never prepared
  Waiter me;
  co_await commit_in_turn(e, copied, me);
  order_.end_turn();
  co_await wait_released(me);
  co_return me.result;
}

Task<void> PersistentStore::commit_in_turn(ChunkPair e, bool copied, Waiter& me) {
  auto guard = co_await io_mutex_.lock();
  bool full = false;
  {
    std::lock_guard lk(mutex_);
    if (!copied) valid_ = false;
    encode_slot(area_, current_committed_++, e);
    batch_.push_back(&me);
    full = current_committed_ == per_area_;
    // More exceptions in flight and room left: a later commit writes the area.
    if (--pending_ != 0 && !full) co_return;
  }
  // The next area is cleared before this one is written full, so that the
  // list on disk always ends in a zero slot.
  if (full) {
    Status st = co_await zero_area(current_area_ + 1);
    if (st) valid_ = false;
  }
  if (valid_) {
    Status st = co_await write_area();
    if (st) valid_ = false;
  }
  std::vector<Waiter*> batch;
  {
    std::lock_guard lk(mutex_);
    if (full) {
      current_committed_ = 0;
      ++current_area_;
      std::fill(area_.begin(), area_.end(), std::byte{0});
    }
    batch.swap(batch_);
  }
  release(std::move(batch), valid_ ? ok() : invalid_status());
}

Task<Status> PersistentStore::write_area() {
  if (Status st = co_await flush_device(*cow_)) co_return st;
  co_return co_await write_sectors(*cow_, area_sector(current_area_), area_, kBioFua);
}

Task<Status> PersistentStore::zero_area(uint64_t area) {
  co_return co_await write_sectors(*cow_, area_sector(area), zeroes_);
}

void PersistentStore::release(std::vector<Waiter*> batch, Status result) {
  for (Waiter* w : batch) {
    std::function<void()> wake;
    {
      std::lock_guard lk(mutex_);
      w->released = true;
      w->result = result;
      wake = std::move(w->wake);
    }
    if (wake) wake();
  }
}

Task<void> PersistentStore::wait_released(Waiter& me) {
  co_await park_until_woken([this, &me](std::function<void()> wake) {
    std::unique_lock lk(mutex_);
    if (!me.released) {
      me.wake = std::move(wake);
      return;
    }
    lk.unlock();
    wake();
  });
}

Task<void> PersistentStore::drop_snapshot() {
  // The header has its own buffer: it may go while an area is written.
  valid_ = false;
  if (Status st = co_await write_header()) spdlog::warn("persistent snapshot: write header failed");
}

StoreUsage PersistentStore::usage() const {
  std::lock_guard lk(mutex_);
  // The header, then areas 0..current_area, each a chunk.
  return {.total_sectors = cow_->sectors(),
          .sectors_allocated = next_free_ * chunk_,
          .metadata_sectors = (current_area_ + 1 + kHeaderChunks) * chunk_};
}

Task<Status> PersistentStore::prepare_merge(Chunk& last_old, Chunk& last_new, unsigned& count) {
  auto guard = co_await io_mutex_.lock();
  count = 0;
  if (current_committed_ == 0) {
    // The current area is empty: go back to the one before (full).
    uint64_t area = 0;
    {
      std::lock_guard lk(mutex_);
      if (current_area_ == 0) co_return ok();  // all merged
      area = --current_area_;
    }
    if (Status st = co_await read_sectors(*cow_, area_sector(area), area_)) co_return st;
    std::lock_guard lk(mutex_);
    current_committed_ = per_area_;
  }
  const ChunkPair last = decode_slot(area_, current_committed_ - 1);
  last_old = last.old_chunk;
  last_new = last.new_chunk;
  // The slots before it that continue it backwards, within this area.
  uint32_t n = 1;
  for (; n < current_committed_; ++n) {
    const ChunkPair e = decode_slot(area_, current_committed_ - 1 - n);
    if (e.old_chunk != last_old - n || e.new_chunk != last_new - n) break;
  }
  count = n;
  co_return ok();
}

Task<Status> PersistentStore::commit_merge(unsigned count) {
  auto guard = co_await io_mutex_.lock();
  if (count > current_committed_) co_return errno_status(EINVAL);
  for (unsigned i = 0; i < count; ++i) encode_slot(area_, current_committed_ - 1 - i, ChunkPair{});
  if (Status st = co_await write_area()) co_return st;
  std::lock_guard lk(mutex_);
  current_committed_ -= count;
  // What next_free would be had every exception been committed in order;
  // only the status reads it while merging. current_area_ steps back in
  // the next prepare_merge, after this area is written empty.
  next_free_ = area_location(per_area_, current_area_) + current_committed_ + 1;
  co_return ok();
}

}  // namespace

std::unique_ptr<ExceptionStore> make_persistent_store(uint32_t chunk_sectors, bool overflow_aware,
                                                      std::shared_ptr<BlockDevice> cow) {
  return std::make_unique<PersistentStore>(chunk_sectors, overflow_aware, std::move(cow));
}

}  // namespace dmnbd::snapshot
