// The raid target's reads and writes.
#include <spdlog/spdlog.h>

#include "dmnbd/dm_io.hpp"
#include "dmnbd/when_all.hpp"
#include "raid_target.hpp"

namespace dmnbd::raid {

Task<Status> RaidTarget::map(Bio bio) {
  if (bio.end() > geometry_.array_sectors()) co_return errno_status(EIO);
  switch (bio.op) {
    case BioOp::read:
      if (parity_) co_return co_await parity_read(bio);
      co_return co_await read(bio);
    case BioOp::flush:
      co_return co_await flush();
    default:
      if (parity_) co_return co_await parity_write(bio);
      co_return co_await write(bio);
  }
}

// A read is a remap onto the copy read_balance() picks (raid4/5/6: the
// data block's leg), so it may be served in place (zero copy) as linear's
// is; a write never: it has every copy (or parity) and the bitmap to see to.
Task<Status> RaidTarget::direct_access(uint64_t sector, uint64_t count, const DirectAccess& how) {
  if (how.write || sector + count > geometry_.array_sectors()) co_return errno_status(EOPNOTSUPP);
  if (parity_) {
    // Each data block's part from its leg, if every leg holds its part and
    // can give it in place; otherwise none.
    const ViewMark mark = mark_view(*how.view);
    for (uint64_t done = 0; done < count;) {
      const ParityGeometry::Location at = parity_->locate(sector + done);
      const uint64_t n =
          std::min<uint64_t>(parity_->chunk() - at.sector % parity_->chunk(), count - done);
      const RaidDevice& d = *devs_[at.dev];
      DirectAccess part = how;
      part.view_offset += done << kSectorShift;
      Status st = holds(at.dev, at.sector, n) ? ok() : errno_status(EOPNOTSUPP);
      if (!st) st = co_await d.data->direct_access(d.data_offset + at.sector, n, part);
      if (st) {
        rewind_view(*how.view, mark);
        co_return st;
      }
      done += n;
    }
    co_return ok();
  }
  const Copies copies = geometry_.copies(sector);
  const std::optional<DeviceSector> c = choose_read_copy(copies, count, sector);
  if (!c) co_return errno_status(EOPNOTSUPP);
  const RaidDevice& d = *devs_[c->dev];
  co_return co_await d.data->direct_access(d.data_offset + c->sector, count, how);
}

Bio RaidTarget::on_device(const Bio& bio, const DeviceSector& c) const {
  return bio.at(devs_[c.dev]->data_offset + c.sector);
}

// A copy can serve a read when its device works and holds those sectors: in
// sync, or recovered past them.
bool RaidTarget::readable(const DeviceSector& c, uint64_t sectors) const {
  const RaidDevice& d = *devs_[c.dev];
  return d.usable() && (d.in_sync || c.sector + sectors <= d.recovery_offset.load());
}

// read_balance() for devices without heads to move (raid1.c, raid10.c):
// the copy with the fewest requests in flight, the lowest first on a tie;
// raid1 reads a write-mostly leg only when nothing else can serve. A region
// still to be resynced is read from the first copy, so that every read of
// it returns the same bytes until the resync has made the copies agree.
std::optional<DeviceSector> RaidTarget::choose_read_copy(const Copies& copies, uint64_t sectors,
                                                         uint64_t array_sector) const {
  const bool unsynced = recovery_cp_.load() != format::kMaxSector &&
                        (!bitmap_ || bitmap_->needed(bitmap_->region_of(array_sector)));
  std::optional<DeviceSector> best, write_mostly;
  unsigned best_load = 0;
  for (const DeviceSector& c : copies) {
    if (!readable(c, sectors)) continue;
    const RaidDevice& d = *devs_[c.dev];
    if (d.write_mostly) {
      if (!write_mostly) write_mostly = c;
      continue;
    }
    if (unsynced) return c;
    const unsigned load = d.in_flight.load();
    if (!best || load < best_load) {
      best = c;
      best_load = load;
    }
  }
  return best ? best : write_mostly;
}

// A read that fails on a copy fails that device (md_error) and is tried on
// the next; with none left, EIO.
Task<Status> RaidTarget::read(Bio bio) {
  const Copies copies = geometry_.copies(bio.sector);
  Status st = errno_status(EIO);
  for (size_t attempt = 0; attempt < copies.size(); ++attempt) {
    const std::optional<DeviceSector> c = choose_read_copy(copies, bio.sectors, bio.sector);
    if (!c) break;
    RaidDevice& d = *devs_[c->dev];
    ++d.in_flight;
    st = co_await d.data->submit(on_device(bio, *c));
    --d.in_flight;
    if (!st || st == std::errc::operation_not_supported) co_return st;
    if (params_.type->level == 0) co_return st;  // raid0 passes errors up
    spdlog::warn("raid: read error on {} (sector {}), trying another copy", d.data_name, c->sector);
    co_await fail_device(c->dev);
  }
  co_return st;
}

// Every working copy gets the write, recovering ones too, after the bitmap
// has the regions dirty on disk. The write succeeds when a copy on a device
// in sync took it; a device that failed it is failed before the write
// completes; regions a device missed stay dirty for its recovery.
Task<Status> RaidTarget::write(Bio bio) {
  const Copies copies = geometry_.copies(bio.sector);
  // Regions as the bitmap has them (without one, the table's region size):
  // a sync step holds its region against the writes to it.
  const bool redundant = params_.type->level != 0;
  const uint64_t first = redundant ? bio.sector / region_sectors_ : 0;
  const uint64_t last = redundant ? (bio.end() - 1) / region_sectors_ : 0;
  if (redundant) co_await barrier_.enter_write(first, last);
  if (bitmap_) {
    Status st = co_await bitmap_->start_write(first, last);
    if (st) {
      bitmap_->end_write(first, last, true);
      barrier_.exit_write(first, last);
      co_return errno_status(EIO);
    }
  }
  std::vector<Task<Status>> tasks;
  std::vector<unsigned> targets;
  bool degraded_write = false;
  for (const DeviceSector& c : copies) {
    RaidDevice& d = *devs_[c.dev];
    if (!d.usable()) {
      degraded_write = true;
      continue;
    }
    targets.push_back(c.dev);
    ++d.in_flight;
    tasks.push_back(d.data->submit(on_device(bio, c)));
  }
  const std::vector<Status> results = co_await when_all(tasks);
  bool done_in_sync = false;
  Status failure = errno_status(EIO);
  for (size_t k = 0; k < results.size(); ++k) {
    RaidDevice& d = *devs_[targets[k]];
    --d.in_flight;
    if (!results[k]) {
      done_in_sync = done_in_sync || d.in_sync;
      continue;
    }
    failure = results[k];
    if (results[k] == std::errc::operation_not_supported) continue;  // a discard it cannot do
    degraded_write = true;
    if (params_.type->level != 0) co_await fail_device(targets[k]);
  }
  if (bitmap_) {
    bitmap_->end_write(first, last, degraded_write || degraded());
    bitmap_daemon_.schedule();
  }
  if (redundant) barrier_.exit_write(first, last);
  co_return done_in_sync ? ok() : failure;
}

// Before cleared bits reach the bitmap, what the legs hold is made durable.
Task<Status> RaidTarget::legs_flush() {
  std::vector<std::shared_ptr<BlockDevice>> legs;
  for (const auto& d : devs_)
    if (d->usable()) legs.push_back(d->data);
  co_return co_await flush_all(legs);
}

// ---- The bitmap daemon: bits of regions idle for two daemon periods are
// cleared (none while the set is degraded), on the loop the array was
// resumed on.
Task<std::optional<DeferredPass::Clock::time_point>> RaidTarget::clear_bitmap_bits() {
  const WriteIntentBitmap::Cleared cleared = bitmap_->clear_idle(2 * daemon_period_, degraded());
  if (cleared.any) {
    Status st = co_await bitmap_->flush();
    if (st) spdlog::warn("raid: clearing bitmap bits failed: {}", st.message());
  }
  co_return cleared.next;
}

}  // namespace dmnbd::raid
