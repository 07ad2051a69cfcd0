// snapshot-merge's half of Snapshot: the merge loop and the merging device's
// I/O, as dm-snap.c's snapshot_merge_next_chunks(), merge_callback() and
// snapshot_merge_map().
#include <spdlog/spdlog.h>

#include "dmnbd/dm_io.hpp"
#include "dmnbd/park.hpp"
#include "origin_writes.hpp"
#include "origins.hpp"
#include "snapshot.hpp"

namespace dmnbd::snapshot {

void Snapshot::start_merge(asio::any_io_executor executor) {
  merging_ = true;
  if (merge_job_) {
    merge_job_->resume();
    return;
  }
  BackgroundJob::Options options;
  options.total = exceptions();
  options.on_done = [this](Status st) {
    if (!st) {
      spdlog::info("snapshot: {}: merge complete", cow_->name());
      // The kernel raises no event here; one lets `dmnbd wait` see the end.
      raise_event();
    }
  };
  merge_job_ = std::make_unique<BackgroundJob>(
      [this](uint64_t, const CancelToken&) { return merge_batch(); }, options);
  merge_job_->start(executor);
}

Task<void> Snapshot::pause_merge() {
  if (merge_job_) co_await merge_job_->pause();
}

Task<void> Snapshot::stop_merge() {
  if (merge_job_) co_await merge_job_->stop();
}

void Snapshot::fail_merge(const char* why) {
  spdlog::error("snapshot: {}: {}", cow_->name(), why);
  std::vector<std::function<void()>> queued;
  {
    std::lock_guard lk(mutex_);
    merge_failed_ = true;
    merging_count_ = 0;
    queued.swap(merge_waiters_);
  }
  for (auto& wake : queued) wake();  // they see merge_failed_ and fail
}

Task<JobStep> Snapshot::merge_batch() {
  if (!valid_) {
    spdlog::error("snapshot: {}: Snapshot is invalid: can't merge", cow_->name());
    co_return JobStep{errno_status(EINVAL)};
  }
  Chunk last_old = 0, last_new = 0;
  unsigned count = 0;
  if (co_await store_->prepare_merge(last_old, last_new, count)) {
    fail_merge("Read error in exception store: shutting down merge");
    co_return JobStep{errno_status(EIO)};
  }
  if (count == 0) co_return JobStep{ok(), 0};  // nothing left: merged
  const Chunk old_first = last_old + 1 - count;
  const Chunk new_first = last_new + 1 - count;
  const uint64_t sector = old_first << chunk_shift_;
  const uint64_t io_sectors = uint64_t(count) << chunk_shift_;
  const uint64_t sectors = std::min(io_sectors, origin_->sectors() - sector);

  // The origin's other snapshots keep what the batch overwrites.
  const OriginWrites::Guard in_flight(origin_writes_);
  co_await copy_out_to_snapshots(origin_->identity(), sector, io_sectors);
  {
    std::lock_guard lk(mutex_);
    merging_first_ = old_first;
    merging_count_ = count;
  }
  for (Chunk c = old_first; c < old_first + count; ++c) co_await wait_for_tracked(c);

  const Region src{cow_.get(), new_first << chunk_shift_, sectors};
  const Region dst{origin_.get(), sector, sectors};
  CopyResult copied = co_await kcopyd_.copy(src, std::span(&dst, 1));
  if (copied) {
    fail_merge(copied.read_error ? "Read error: shutting down merge."
                                 : "Write error: shutting down merge.");
    co_return JobStep{copied.status};
  }
  if (co_await flush_device(*origin_)) {
    fail_merge("Flush after merge failed: shutting down merge");
    co_return JobStep{errno_status(EIO)};
  }
  if (co_await store_->commit_merge(count)) {
    fail_merge("Write error in exception store: shutting down merge");
    co_return JobStep{errno_status(EIO)};
  }
  std::vector<std::function<void()>> queued;
  {
    std::lock_guard lk(mutex_);
    for (Chunk c = old_first; c < old_first + count; ++c) complete_.erase(c);
    merging_count_ = 0;
    queued.swap(merge_waiters_);
  }
  for (auto& wake : queued) wake();  // queued writes now go to the origin
  co_return JobStep{ok(), count};
}

Task<Status> Snapshot::merge_io(Bio bio) {
  if (bio.op == BioOp::discard) co_return ok();  // once merging, discards change nothing
  const bool write = bio.op != BioOp::read;
  const Chunk chunk = chunk_of(bio.sector);
  Chunk remapped = 0;
  bool in_cow = false, queued = false;
  {
    std::lock_guard lk(mutex_);
    // An invalid merging snapshot is all origin.
    in_cow = valid_ && complete_.lookup(chunk, remapped);
    if (in_cow && write && merging_count_ && chunk >= merging_first_ &&
        chunk < merging_first_ + merging_count_)
      queued = true;
    else if (in_cow && write)
      ++tracked_[chunk];
  }
  if (queued) {
    co_await park_until_woken([this, chunk](std::function<void()> wake) {
      std::unique_lock lk(mutex_);
      if (!merging_count_ || chunk < merging_first_ || chunk >= merging_first_ + merging_count_) {
        lk.unlock();
        wake();
      } else {
        merge_waiters_.push_back(std::move(wake));
      }
    });
    if (merge_failed_) co_return errno_status(EIO);
  }
  if (in_cow && !queued) {
    const Status st = co_await cow_->submit(bio.at(cow_sector(remapped, bio.sector)));
    if (write) untrack(chunk);
    co_return st;
  }
  if (!write) co_return co_await origin_->submit(bio);
  // An origin write: the other snapshots copy out first (a write held for its
  // batch finds that done already, unless a snapshot resumed meanwhile).
  const OriginWrites::Guard in_flight(origin_writes_);
  co_await copy_out_to_snapshots(origin_->identity(), bio.sector, bio.sectors);
  co_return co_await origin_->submit(bio);
}

Task<Status> Snapshot::merge_flush() {
  const Status to_origin = co_await origin_->submit(flush_bio());
  const Status to_cow = co_await cow_->submit(flush_bio());
  co_return to_origin ? to_origin : to_cow;
}

}  // namespace dmnbd::snapshot
