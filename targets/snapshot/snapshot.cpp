#include "snapshot.hpp"

#include <spdlog/spdlog.h>

#include <bit>
#include <optional>

#include "dmnbd/park.hpp"
#include "dmnbd/when_all.hpp"
#include "origins.hpp"

namespace dmnbd::snapshot {

// A chunk being copied to the COW (the kernel's dm_snap_pending_exception).
struct Snapshot::Pending {
  Chunk old_chunk = 0;
  Chunk new_chunk = 0;
  bool done = false;
  std::vector<std::function<void()>> waiters;  // callers waiting for the copy
};

Snapshot::Snapshot(std::shared_ptr<BlockDevice> origin, std::shared_ptr<BlockDevice> cow,
                   std::unique_ptr<ExceptionStore> store, std::function<void()> raise_event)
    : origin_(std::move(origin)),
      cow_(std::move(cow)),
      store_(std::move(store)),
      origin_writes_(OriginWrites::of(origin_->identity())),
      raise_event_(std::move(raise_event)) {}

Snapshot::~Snapshot() {
  Origins::instance().remove(this);
}

Task<void> Snapshot::load() {
  bool header_valid = true;
  Status st;
  std::optional<std::string> refused;
  try {
    st = co_await store_->read_metadata(
        [this](ChunkPair e) { complete_.insert(e.old_chunk, e.new_chunk); }, header_valid);
  } catch (const TargetError& e) {
    refused = e.what();
  }
  // The kernel logs why and answers the load with its one ctr error.
  if (refused || st) {
    spdlog::error("snapshot: {}: {}", cow_->name(), refused ? *refused : st.message());
    throw TargetError(kReadMetadataFailed);
  }
  if (!header_valid) {
    valid_ = false;
    spdlog::warn("snapshot: {}: Snapshot is marked invalid.", cow_->name());
  }
  chunk_sectors_ = store_->chunk_sectors();
  if (chunk_sectors_ == 0) throw TargetError("Chunk size not set");
  chunk_shift_ = static_cast<unsigned>(std::countr_zero(chunk_sectors_));
  Origins::instance().add(shared_from_this());
}

void Snapshot::claim(const void* line, std::function<void()> raise_event) {
  std::lock_guard lk(mutex_);
  owner_ = line;
  raise_event_ = std::move(raise_event);
}

void Snapshot::raise_event() {
  std::function<void()> raise;
  {
    std::lock_guard lk(mutex_);
    raise = raise_event_;
  }
  if (raise) raise();
}

void Snapshot::activate(uint64_t table_sectors) {
  table_sectors_ = table_sectors;
  active_ = true;
}

Task<Status> Snapshot::read(Bio bio) {
  const Chunk chunk = chunk_of(bio.sector);
  Chunk remapped = 0;
  bool in_cow = false;
  {
    std::lock_guard lk(mutex_);
    if (!valid_) co_return errno_status(EIO);
    in_cow = complete_.lookup(chunk, remapped);
    if (!in_cow) ++tracked_[chunk];
  }
  if (in_cow) {
    co_return co_await cow_->submit(bio.at(cow_sector(remapped, bio.sector)));
  }
  const Status st = co_await origin_->submit(bio);
  untrack(chunk);
  co_return st;
}

Task<Status> Snapshot::write(Bio bio) {
  if (!valid_ || overflow_) co_return errno_status(EIO);
  const Chunk chunk = chunk_of(bio.sector);
  // A write of the whole chunk needs no copy: it is the chunk's new content.
  const bool whole = covers_chunk(bio);
  Chunk remapped = 0;
  bool written = false;
  if (Status st = co_await exception_for(chunk, whole ? &bio : nullptr, false, remapped, written))
    co_return errno_status(EIO);
  if (written) co_return ok();
  co_return co_await cow_->submit(bio.at(cow_sector(remapped, bio.sector)));
}

Task<Status> Snapshot::flush() {
  if (!valid_) co_return errno_status(EIO);
  co_return co_await cow_->submit(flush_bio());
}

Task<Status> Snapshot::discard(Bio bio, bool zero_cow, bool passdown) {
  if (!valid_) co_return errno_status(EIO);
  Status to_origin;
  if (passdown)
    to_origin = co_await origin_->submit(bio);  // no copy-out: freeing space is the point
  if (!zero_cow) co_return to_origin;
  const Chunk chunk = chunk_of(bio.sector);
  Chunk remapped = 0;
  bool in_cow = false;
  {
    std::lock_guard lk(mutex_);
    in_cow = complete_.lookup(chunk, remapped);
  }
  // Only a discard of the whole chunk zeroes its copy; the exception stays.
  if (!in_cow || !covers_chunk(bio)) co_return to_origin;
  const Region cow_chunk{cow_.get(), remapped << chunk_shift_, chunk_sectors_};
  CopyResult zeroed = co_await kcopyd_.zero(std::span(&cow_chunk, 1));
  if (zeroed) co_return zeroed.status;
  co_return to_origin;
}

bool Snapshot::copied_out(uint64_t sector, uint64_t count) const {
  if (!valid_ || !active_ || merging_ || count == 0) return true;
  const uint64_t end = std::min(sector + count, table_sectors_.load());
  if (sector >= end) return true;
  std::lock_guard lk(mutex_);
  Chunk unused = 0;
  for (Chunk c = chunk_of(sector); c <= chunk_of(end - 1); ++c)
    if (!complete_.lookup(c, unused) || tracked_.contains(c)) return false;
  return true;
}

Task<void> Snapshot::copy_out(uint64_t sector, uint64_t count) {
  // A merging snapshot is on its way out: it takes no new exceptions.
  if (!valid_ || !active_ || merging_ || count == 0) co_return;
  const uint64_t end = std::min(sector + count, table_sectors_.load());
  if (sector >= end) co_return;  // past the end of the snapshot
  const Chunk first = chunk_of(sector);
  const Chunk last = chunk_of(end - 1);
  std::vector<Task<Status>> copies;
  for (Chunk c = first; c <= last; ++c)
    copies.push_back([](Snapshot& s, Chunk c) -> Task<Status> {
      Chunk unused_chunk = 0;
      bool unused_whole = false;
      co_return co_await s.exception_for(c, nullptr, true, unused_chunk, unused_whole);
    }(*this, c));
  // A failed copy has invalidated this snapshot; the origin write goes on.
  co_await when_all(std::span(copies));
  for (Chunk c = first; c <= last; ++c) co_await wait_for_tracked(c);
}

Task<Status> Snapshot::exception_for(Chunk chunk, const Bio* whole, bool for_origin, Chunk& out,
                                     bool& wrote_whole) {
  for (;;) {
    std::shared_ptr<Pending> pe;
    bool mine = false;
    bool full = false;
    {
      std::lock_guard lk(mutex_);
      if (!valid_) co_return errno_status(EIO);
      if (complete_.lookup(chunk, out)) co_return ok();
      if (auto it = pending_.find(chunk); it != pending_.end()) {
        pe = it->second;
      } else {
        Chunk new_chunk = 0;
        if (store_->prepare_exception(chunk, new_chunk)) {
          full = true;
        } else {
          pe = std::make_shared<Pending>();
          pe->old_chunk = chunk;
          pe->new_chunk = new_chunk;
          pending_.emplace(chunk, pe);
          mine = true;
          ++copies_;
        }
      }
    }
    if (full) {
      // An origin write cannot wait for space: the snapshot goes, even with PO.
      if (for_origin || !store_->overflow_aware()) {
        co_await invalidate("Unable to allocate exception.");
      } else if (!overflow_.exchange(true)) {
        spdlog::error("snapshot: {}: Snapshot overflowed: Unable to allocate exception.",
                      cow_->name());
      }
      co_return errno_status(EIO);
    }
    if (!mine) {
      co_await wait_for(pe);
      continue;  // copied (look it up) or failed (invalid)
    }
    const Status st = co_await make_exception(*pe, whole);
    std::vector<std::function<void()>> waiters;
    std::vector<std::function<void()>> drained;
    {
      std::lock_guard lk(mutex_);
      if (!st) complete_.insert(chunk, pe->new_chunk);
      pending_.erase(chunk);
      pe->done = true;
      waiters.swap(pe->waiters);
      if (--copies_ == 0) drained.swap(drain_waiters_);
    }
    if (st) co_await invalidate("Error reading/writing.");
    for (auto& wake : waiters) wake();
    for (auto& wake : drained) wake();
    if (st) co_return errno_status(EIO);
    out = pe->new_chunk;
    wrote_whole = whole != nullptr;
    co_return ok();
  }
}

Task<Status> Snapshot::make_exception(const Pending& pe, const Bio* whole) {
  const uint64_t to = pe.new_chunk << chunk_shift_;
  bool copied = false;
  if (whole) {
    const Status written = co_await cow_->submit(whole->at(to));
    copied = !written;
  } else {
    // The last chunk of the origin may be short.
    const uint64_t from = pe.old_chunk << chunk_shift_;
    const uint64_t count = std::min<uint64_t>(chunk_sectors_, origin_->sectors() - from);
    const Region src{origin_.get(), from, count};
    const Region dst{cow_.get(), to, count};
    CopyResult result = co_await kcopyd_.copy(src, std::span(&dst, 1));
    copied = !result;
  }
  const ChunkPair e{pe.old_chunk, pe.new_chunk};
  Status st = co_await store_->commit_exception(e, copied);
  if (!st && !copied) st = errno_status(EIO);
  co_return st;
}

Task<void> Snapshot::wait_for(const std::shared_ptr<Pending>& pe) {
  co_await park_until_woken([this, &pe](std::function<void()> wake) {
    std::unique_lock lk(mutex_);
    if (pe->done) {
      lk.unlock();
      wake();
    } else {
      pe->waiters.push_back(std::move(wake));
    }
  });
}

Task<void> Snapshot::invalidate(const char* why) {
  if (!valid_.exchange(false)) co_return;
  spdlog::error("snapshot: {}: Invalidating snapshot: {}", cow_->name(), why);
  co_await store_->drop_snapshot();
  raise_event();
}

void Snapshot::untrack(Chunk chunk) {
  std::vector<std::function<void()>> waiters;
  {
    std::lock_guard lk(mutex_);
    auto it = tracked_.find(chunk);
    if (--it->second == 0) tracked_.erase(it);
    waiters.swap(tracked_waiters_);
  }
  for (auto& wake : waiters) wake();
}

// __check_for_conflicting_io(): a read that found no exception may still be
// reading the origin; the origin write must not overtake it.
Task<void> Snapshot::wait_for_tracked(Chunk chunk) {
  for (;;) {
    {
      std::lock_guard lk(mutex_);
      if (!tracked_.contains(chunk)) co_return;
    }
    co_await park_until_woken([this, chunk](std::function<void()> wake) {
      std::unique_lock lk(mutex_);
      if (!tracked_.contains(chunk)) {
        lk.unlock();
        wake();
      } else {
        tracked_waiters_.push_back(std::move(wake));
      }
    });
  }
}

Task<void> Snapshot::drain() {
  co_await park_until_woken([this](std::function<void()> wake) {
    std::unique_lock lk(mutex_);
    if (copies_ == 0) {
      lk.unlock();
      wake();
    } else {
      drain_waiters_.push_back(std::move(wake));
    }
  });
  co_await kcopyd_.drain();
}

std::string Snapshot::status() const {
  if (!valid_) return "Invalid";
  if (merge_failed_) return "Merge failed";
  if (overflow_) return "Overflow";
  const StoreUsage u = store_->usage();
  return std::to_string(u.sectors_allocated) + "/" + std::to_string(u.total_sectors) + " " +
         std::to_string(u.metadata_sectors);
}

size_t Snapshot::exceptions() const {
  std::lock_guard lk(mutex_);
  return complete_.size();
}

}  // namespace dmnbd::snapshot
