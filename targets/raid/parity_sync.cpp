// The sync actions for raid4/5/6, a row at a time over device sectors
// (raid5_sync_request(), handle_parity_checks5/6()):
//   resync/repair  parity recomputed from the data, and written where it
//                  differs; data is never rewritten;
//   check          the same comparison, writing nothing;
//   recover        the blocks of legs being recovered rebuilt from the
//                  others and written; with parity to spare (raid6 and one
//                  leg) the remaining parity is checked, and rewritten if wrong.
// mismatch_cnt counts as md does: 8 sectors for every 4 KiB of a leg's rows
// (md's stripe) in which P or Q was wrong.
#include <spdlog/spdlog.h>

#include <cstring>

#include "dmnbd/dm_io.hpp"
#include "raid_target.hpp"

namespace dmnbd::raid {
namespace {

constexpr uint64_t kStripeSectors = 8;  // RAID5_STRIPE_SECTORS

}  // namespace

bool RaidTarget::parity_sync_impossible() const {
  unsigned lost = 0;
  for (const auto& d : devs_) lost += !d->usable() || !d->in_sync;
  return lost >= parity_->parity_disks();
}

Task<bool> RaidTarget::parity_sync_span(uint64_t start, uint64_t end, RowSync how,
                                        const CancelToken& cancel) {
  const uint64_t c = parity_->chunk();
  for (uint64_t s = start; s < end && !cancel.cancelled();) {
    const uint64_t n = std::min(std::min(kColumnSectors, c - s % c), end - s);
    if (!co_await sync_row(s / c, s, n, how)) co_return false;
    s += n;
  }
  co_return true;
}

// recover_step() for raid4/5/6: rows of [s, s + count), skipping regions a
// re-added leg did not miss.
Task<bool> RaidTarget::parity_recover_step(uint64_t s, uint64_t count, const CancelToken& cancel) {
  for (uint64_t at = s; at < s + count && !cancel.cancelled();) {
    const uint64_t r = at / region_sectors_;
    const uint64_t end = std::min(s + count, (r + 1) * region_sectors_);
    if (!recover_partial_ || !bitmap_ || bitmap_->needed(r)) {
      co_await barrier_.lock_sync(r);
      const bool done = co_await parity_sync_span(at, end, RowSync::recover, cancel);
      barrier_.unlock_sync(r);
      if (!done) co_return false;
    }
    at = end;
  }
  co_return true;
}

// Device sectors [sector, +sectors) of `row`. False when the row cannot be
// read (more legs lost than the level survives).
Task<bool> RaidTarget::sync_row(uint64_t row_number, uint64_t sector, uint64_t sectors,
                                RowSync how) {
  auto guard = co_await stripe_locks_.lock(row_number);
  const RowLayout layout = parity_->row(row_number);
  RowBuffers row(devs_.size(), sectors);
  if (co_await read_row(layout, sector, row)) co_return false;
  // read_row() rebuilt what the legs that do not hold these sectors lack;
  // those still working are the ones being recovered.
  std::vector<unsigned> rebuilt, checked;
  for (unsigned dev = 0; dev < devs_.size(); ++dev) {
    if (!holds(dev, sector, sectors)) {
      if (devs_[dev]->usable() && how == RowSync::recover) rebuilt.push_back(dev);
    } else if (layout.is_parity(dev)) {
      checked.push_back(dev);
    }
  }
  // A parity block read_row() rebuilt is right by construction; one read
  // from its leg is compared with what the data makes of it.
  if (!checked.empty()) {
    RowBuffers fresh(2, sectors);
    parity::compute_into(layout, row.blocks, row.bytes, fresh.blocks[0], fresh.blocks[1]);
    std::vector<std::pair<unsigned, uint64_t>> rewrites;  // device, stripe
    for (uint64_t stripe = 0; stripe < sectors / kStripeSectors; ++stripe) {
      const size_t off = stripe * kStripeSectors << kSectorShift;
      const size_t len = kStripeSectors << kSectorShift;
      bool wrong = false;
      for (unsigned dev : checked) {
        const std::byte* want = fresh.blocks[dev == layout.p ? 0 : 1] + off;
        if (std::memcmp(row.blocks[dev] + off, want, len) == 0) continue;
        wrong = true;
        std::memcpy(row.blocks[dev] + off, want, len);
        rewrites.emplace_back(dev, stripe);
      }
      if (wrong) mismatches_ += kStripeSectors;
    }
    if (how != RowSync::check) {
      for (const auto& [dev, stripe] : rewrites) {
        RaidDevice& d = *devs_[dev];
        const uint64_t at = sector + stripe * kStripeSectors;
        std::span<std::byte> bytes(row.blocks[dev] + (stripe * kStripeSectors << kSectorShift),
                                   kStripeSectors << kSectorShift);
        if (co_await write_sectors(*d.data, d.data_offset + at, bytes)) co_await fail_device(dev);
      }
    }
  }
  // A leg that fails here is failed, and the recovery goes on without it.
  if (!rebuilt.empty()) co_await write_legs(rebuilt, sector, row, 0);
  co_return true;
}

}  // namespace dmnbd::raid
