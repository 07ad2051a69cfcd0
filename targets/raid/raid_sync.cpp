// The raid target's sync actions, md's sync thread (md_do_sync() and the
// personalities' sync_request()), one at a time as a background job:
//   resync   makes the copies of the regions still to be synced agree,
//            copying the first in-sync copy over the others (the regions
//            with dirty bits when there is a bitmap, else all of them from
//            recovery_cp); progress in the array's resync range;
//   recover  fills devices that are not in sync from the others, in device
//            sectors from their recovery_offset (a re-added device only the
//            regions its bitmap says it missed);
//   check    compares every copy with the first, in 64 KiB blocks, and
//            counts the sectors that differ (mismatch_cnt);
//   repair   the same, and rewrites what differs from the first copy.
// Each step holds its region against writes (RegionBarrier) while it works.
#include <spdlog/spdlog.h>

#include <cstring>

#include "dmnbd/dm_io.hpp"
#include "dmnbd/when_all.hpp"
#include "raid_target.hpp"

namespace dmnbd::raid {
namespace {

constexpr uint64_t kCompareBlock = 128;               // RESYNC_BLOCK_SIZE, sectors
constexpr uint32_t kDefaultMaxRecoveryRate = 200000;  // speed_limit_max, KiB/s

const char* action_name(SyncAction a) {
  switch (a) {
    case SyncAction::resync:
      return "resync";
    case SyncAction::recover:
      return "recover";
    case SyncAction::check:
      return "check";
    case SyncAction::repair:
      return "repair";
    default:
      return "idle";
  }
}

}  // namespace

bool RaidTarget::needs_recovery() const {
  for (const auto& d : devs_)
    if (d->usable() && !d->in_sync) return true;
  return false;
}

uint64_t RaidTarget::recovery_start() const {
  uint64_t from = format::kMaxSector;
  for (const auto& d : devs_)
    if (d->usable() && !d->in_sync) from = std::min(from, d->recovery_offset.load());
  return from;
}

// md_check_recovery(): recovery first, then a pending resync, then what a
// message asked for.
void RaidTarget::start_needed_action(std::optional<SyncAction> requested) {
  if (params_.type->level == 0 || frozen_ || action_ != SyncAction::idle) return;
  asio::any_io_executor executor;
  {
    std::lock_guard lk(background_mutex_);
    executor = executor_;
  }
  if (!executor) return;
  SyncAction action = SyncAction::idle;
  uint64_t from = 0;
  if (needs_recovery()) {
    action = SyncAction::recover;
    from = recovery_start();
    recover_partial_ = true;
    for (const auto& d : devs_)
      if (d->usable() && !d->in_sync && !d->partial) recover_partial_ = false;
  } else if (recovery_cp_ < resync_max_sectors()) {
    // With a bitmap md starts at 0 and skips what its bits say is in sync.
    action = SyncAction::resync;
    from = bitmap_ ? 0 : recovery_cp_.load();
  } else if (requested) {
    action = *requested;
  }
  if (action == SyncAction::idle) return;
  {
    std::lock_guard lk(mutex_);
    last_action_ = action_name(action);
  }
  if (action != SyncAction::recover) mismatches_ = 0;
  position_ = from;
  action_ = action;
  const uint64_t generation = ++job_generation_;
  BackgroundJob::Options options;
  options.total = resync_max_sectors();
  options.max_rate =
      uint64_t(params_.max_recovery_rate ? params_.max_recovery_rate : kDefaultMaxRecoveryRate) * 2;
  options.on_done = [this, action, generation, executor](Status st) {
    // The state at once (the status never shows a finished action running),
    // the superblocks and what comes next in the background.
    if (!end_action(action, generation, st)) return;
    {
      std::lock_guard lk(background_mutex_);
      ++finishing_;
    }
    asio::co_spawn(executor, finish_action(), asio::detached);
  };
  job_ = std::make_unique<BackgroundJob>(
      [this](uint64_t, const CancelToken& cancel) { return sync_step(cancel); }, options);
  spdlog::info("raid: {} started at sector {}", action_name(action), from);
  job_->start(executor);
}

Task<JobStep> RaidTarget::sync_step(const CancelToken& cancel) {
  const SyncAction action = action_;
  if (action == SyncAction::recover) {
    const uint64_t s = position_;
    const uint64_t end = parity_ ? parity_->used_device_sectors() : geometry_.used_device_sectors();
    if (s >= end) co_return JobStep{ok(), 0};
    const uint64_t count = std::min<uint64_t>(region_sectors_, end - s);
    if (!co_await recover_step(s, count, cancel)) co_return JobStep{errno_status(EIO), 0};
    if (cancel.cancelled()) co_return JobStep{ok(), 0};
    position_ = s + count;
    for (auto& d : devs_)
      if (d->usable() && !d->in_sync && d->recovery_offset < s + count)
        d->recovery_offset = s + count;
    co_return JobStep{ok(), count};
  }
  const uint64_t total = resync_max_sectors();
  if (position_ >= total) co_return JobStep{ok(), 0};
  if (parity_ && parity_sync_impossible()) {
    // md skips the rest at once: a raid4/5 missing a leg (raid6 two) has
    // no parity left to check or make.
    position_ = total;
    co_return JobStep{ok(), 0};
  }
  uint64_t r = position_ / region_sectors_;
  // A resync with a bitmap skips the regions it says are in sync.
  if (action == SyncAction::resync && bitmap_) {
    r = bitmap_->next_needed(r);
    if (r >= bitmap_->regions()) {
      position_ = total;
      co_return JobStep{ok(), 0};
    }
  }
  const uint64_t start = std::max<uint64_t>(r * region_sectors_, position_);
  const uint64_t end = std::min<uint64_t>((r + 1) * region_sectors_, total);
  co_await barrier_.lock_sync(r);
  bool done = false;
  if (parity_)
    done = co_await parity_sync_span(start, end,
                                     action == SyncAction::resync   ? RowSync::resync
                                     : action == SyncAction::repair ? RowSync::repair
                                                                    : RowSync::check,
                                     cancel);
  else if (action == SyncAction::resync)
    done = co_await resync_region(start, end, cancel);
  else
    done = co_await compare_region(start, end, action == SyncAction::repair, cancel);
  barrier_.unlock_sync(r);
  if (!done) co_return JobStep{errno_status(EIO), 0};
  if (cancel.cancelled()) co_return JobStep{ok(), 0};
  if (bitmap_ && action != SyncAction::check) bitmap_->end_sync(r);
  position_ = end;
  co_return JobStep{ok(), end - start};
}

// The first copy on a device in sync (raid1: not write-mostly if it can).
std::optional<unsigned> RaidTarget::first_in_sync_copy(const Copies& copies,
                                                       unsigned excluding) const {
  std::optional<unsigned> write_mostly;
  for (unsigned k = 0; k < copies.size(); ++k) {
    const RaidDevice& d = *devs_[copies[k].dev];
    if (copies[k].dev == excluding || !d.usable() || !d.in_sync) continue;
    if (d.write_mostly) {
      if (!write_mostly) write_mostly = k;
      continue;
    }
    return k;
  }
  return write_mostly;
}

// kcopyd from one copy to others (at most eight at a time); a device that
// fails is failed. False when the source could not be read.
Task<bool> RaidTarget::copy_chunk(uint64_t count, DeviceSector from, std::vector<DeviceSector> to,
                                  const CancelToken& cancel) {
  const ::dmnbd::Region source{devs_[from.dev]->data.get(),
                               devs_[from.dev]->data_offset + from.sector, count};
  for (size_t at = 0; at < to.size(); at += Kcopyd::kMaxDestinations) {
    ::dmnbd::Region dest[Kcopyd::kMaxDestinations];
    const size_t n = std::min(Kcopyd::kMaxDestinations, to.size() - at);
    for (size_t k = 0; k < n; ++k) {
      const DeviceSector& c = to[at + k];
      dest[k] = {devs_[c.dev]->data.get(), devs_[c.dev]->data_offset + c.sector, count};
    }
    const CopyResult res =
        co_await kcopyd_.copy(source, std::span(dest, n), &cancel, kKcopydIgnoreErrors);
    if (res.read_error) {
      co_await fail_device(from.dev);
      co_return false;
    }
    for (size_t k = 0; k < n; ++k)
      if (res.write_errors & (1u << k)) co_await fail_device(to[at + k].dev);
  }
  co_return true;
}

// raid1/raid10 sync_request_write() for a resync: the first copy in sync
// over every other working one, chunk by chunk.
Task<bool> RaidTarget::resync_region(uint64_t start, uint64_t end, const CancelToken& cancel) {
  for (uint64_t x = start; x < end && !cancel.cancelled();) {
    const uint64_t count = std::min(geometry_.to_chunk_end(x), end - x);
    const Copies copies = geometry_.copies(x);
    const std::optional<unsigned> from = first_in_sync_copy(copies, ~0u);
    if (!from) co_return false;
    std::vector<DeviceSector> to;
    for (unsigned k = 0; k < copies.size(); ++k)
      if (k != *from && devs_[copies[k].dev]->usable()) to.push_back(copies[k]);
    if (!to.empty() && !co_await copy_chunk(count, copies[*from], to, cancel)) {
      // The source failed: the next one in sync takes over, if any.
      continue;
    }
    x += count;
  }
  co_return true;
}

// process_checks(): every working copy is read; the first that reads is
// the reference, and each other that differs adds the block's sectors to
// mismatch_cnt (repair then rewrites it from the reference).
Task<bool> RaidTarget::compare_region(uint64_t start, uint64_t end, bool repair,
                                      const CancelToken& cancel) {
  for (uint64_t x = start; x < end && !cancel.cancelled();) {
    const uint64_t count = std::min(std::min(kCompareBlock, geometry_.to_chunk_end(x)), end - x);
    const Copies copies = geometry_.copies(x);
    std::vector<DeviceSector> readers;
    for (const DeviceSector& c : copies) {
      const RaidDevice& d = *devs_[c.dev];
      if (d.usable() && (d.in_sync || params_.type->level == 10)) readers.push_back(c);
    }
    if (readers.empty()) co_return false;
    std::vector<std::vector<std::byte>> buffers(readers.size(),
                                                std::vector<std::byte>(count << kSectorShift));
    std::vector<Task<Status>> reads;
    for (size_t k = 0; k < readers.size(); ++k)
      reads.push_back(read_sectors(*devs_[readers[k].dev]->data,
                                   devs_[readers[k].dev]->data_offset + readers[k].sector,
                                   buffers[k]));
    const std::vector<Status> results = co_await when_all(reads);
    std::optional<size_t> reference;
    for (size_t k = 0; k < readers.size(); ++k) {
      if (results[k]) continue;
      if (!reference) {
        reference = k;
        continue;
      }
      if (std::memcmp(buffers[k].data(), buffers[*reference].data(), buffers[k].size()) == 0)
        continue;
      mismatches_ += count;
      if (!repair) continue;
      Status st = co_await write_sectors(*devs_[readers[k].dev]->data,
                                         devs_[readers[k].dev]->data_offset + readers[k].sector,
                                         buffers[*reference]);
      if (st) co_await fail_device(readers[k].dev);
    }
    for (size_t k = 0; k < readers.size(); ++k)
      if (results[k]) co_await fail_device(readers[k].dev);
    if (!reference) co_return false;
    x += count;
  }
  co_return true;
}

// raid1/raid10 sync_request() for a recovery: device sectors [s, s + count)
// of every device being recovered, from a copy in sync, region by region.
Task<bool> RaidTarget::recover_step(uint64_t s, uint64_t count, const CancelToken& cancel) {
  if (parity_) co_return co_await parity_recover_step(s, count, cancel);
  const uint64_t piece = params_.type->level == 10 ? geometry_.chunk() : count;
  for (unsigned dev = 0; dev < devs_.size(); ++dev) {
    RaidDevice& d = *devs_[dev];
    if (!d.usable() || d.in_sync || d.recovery_offset > s) continue;
    for (uint64_t p = s; p < s + count && d.usable() && !cancel.cancelled(); p += piece) {
      const uint64_t x = geometry_.array_sector_of(dev, p);
      if (x >= geometry_.array_sectors()) continue;  // the last stripe is not complete
      const uint64_t r = x / region_sectors_;
      if (recover_partial_ && bitmap_ && !bitmap_->needed(r)) continue;
      const Copies copies = geometry_.copies(x);
      std::optional<DeviceSector> mine;
      for (const DeviceSector& c : copies)
        if (c.dev == dev) mine = c;
      if (!mine) continue;
      co_await barrier_.lock_sync(r);
      bool copied = false;
      const std::vector<DeviceSector> to{*mine};
      while (!copied && d.usable()) {
        const std::optional<unsigned> from = first_in_sync_copy(copies, dev);
        if (!from) break;
        const uint64_t n = std::min(piece, s + count - p);
        copied = co_await copy_chunk(n, copies[*from], to, cancel);
      }
      barrier_.unlock_sync(r);
      if (!copied && d.usable()) co_return false;  // nothing in sync left to copy from
    }
  }
  co_return true;
}

// The job ended by itself: md_reap_sync_thread(). False if it was stopped
// meanwhile (its report is late).
bool RaidTarget::end_action(SyncAction action, uint64_t generation, Status st) {
  if (generation != job_generation_ || action_ != action) return false;
  if (st) {
    spdlog::error("raid: {} aborted: {}", action_name(action), st.message());
  } else {
    spdlog::info("raid: {} done", action_name(action));
    if (action == SyncAction::resync || action == SyncAction::repair)
      recovery_cp_ = format::kMaxSector;
    if (action == SyncAction::recover) {
      std::lock_guard lk(mutex_);
      for (auto& d : devs_) {
        if (!d->usable() || d->in_sync) continue;
        d->in_sync = true;
        d->recovery_offset = format::kMaxSector;
        d->partial = false;
      }
    }
    if (bitmap_ && !degraded() && recovery_cp_ == format::kMaxSector) bitmap_->clear_needed();
  }
  action_ = SyncAction::idle;
  return true;
}

// What follows an action's end: the superblocks record it, an event, the
// next action if one is needed, and the bits of what is in sync now clear.
Task<void> RaidTarget::finish_action() {
  Status sb = co_await commit_superblocks();
  if (sb) spdlog::error("raid: writing the superblocks failed: {}", sb.message());
  raise_event_();
  start_needed_action();
  bitmap_daemon_.schedule();
  std::vector<std::function<void()>> idle;
  {
    std::lock_guard lk(background_mutex_);
    if (--finishing_ == 0) idle.swap(finished_waiters_);
  }
  for (auto& wake : idle) wake();
}

// The running action stops where it is (md's MD_RECOVERY_INTR): a resync
// resumes from there, a recovering device keeps its recovery_offset.
Task<void> RaidTarget::stop_action() {
  if (!job_) co_return;
  co_await job_->stop();
  const SyncAction action = action_;
  const uint64_t pos = position_;
  ++job_generation_;
  if ((action == SyncAction::resync || action == SyncAction::repair) &&
      recovery_cp_ != format::kMaxSector && pos > recovery_cp_)
    recovery_cp_ = pos;
  if (action == SyncAction::recover)
    for (auto& d : devs_)
      if (d->usable() && !d->in_sync && d->recovery_offset < pos) d->recovery_offset = pos;
  action_ = SyncAction::idle;
  job_.reset();
}

}  // namespace dmnbd::raid
