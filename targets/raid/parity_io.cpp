// The raid target's reads and writes for raid4/5/6 (md's raid5.c): a row
// at a time (the Device splits requests at rows, max_io_len), under the
// row's stripe lock for anything that touches parity.
//
// Reads of a working leg go to it directly and never touch parity; a lost
// block is rebuilt from the rest of its row. Writes choose as md's
// handle_stripe_dirtying() does: a write of every data block of a row reads
// nothing; otherwise read-modify-write (old data and parity) or
// reconstruct-write (the other data), whichever reads less, a tie and a
// region not yet resynced going to reconstruct-write (its parity may be
// wrong, so it is rebuilt, not patched). With a leg lost, what a write needs
// of it is rebuilt first, and every leg left ends up holding the new data
// and the parity of the new row, as md's do. Data and parity go out
// together; the bitmap bit set before them is what lets a resync after a
// crash recompute parity where a row may be torn.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include "dmnbd/dm_io.hpp"
#include "dmnbd/when_all.hpp"
#include "raid_target.hpp"

namespace dmnbd::raid {
// The part of a row a write covers, in one stretch of columns: device
// sectors [sector, sector + sectors) of every leg, written on some data
// devices (each with its new bytes).
struct WriteSegment {
  uint64_t sector = 0;
  uint64_t sectors = 0;
  std::vector<std::pair<unsigned, const std::byte*>> written;  // device, new bytes
};

bool RaidTarget::holds(unsigned dev, uint64_t sector, uint64_t sectors) const {
  const RaidDevice& d = *devs_[dev];
  return d.usable() && (d.in_sync || sector + sectors <= d.recovery_offset.load());
}

// A read lies in one row. Each data block's part comes from its leg; if a
// leg cannot serve (lost, not yet rebuilt there, or failing the read now),
// the row's columns the read covers are read from every leg that holds them
// once, under the row's lock, and the lost blocks rebuilt from them.
Task<Status> RaidTarget::parity_read(Bio bio) {
  const ParityGeometry& g = *parity_;
  struct Piece {
    ParityGeometry::Location at;
    uint64_t skip, sectors;  // within the bio
  };
  std::vector<Piece> pieces;
  bool all_held = true;
  for (uint64_t done = 0; done < bio.sectors;) {
    const ParityGeometry::Location at = g.locate(bio.sector + done);
    const uint64_t n = std::min<uint64_t>(g.chunk() - at.sector % g.chunk(), bio.sectors - done);
    pieces.push_back({at, done, n});
    all_held = all_held && holds(at.dev, at.sector, n);
    done += n;
  }
  if (all_held) {
    std::vector<Task<Status>> reads;
    for (const Piece& p : pieces) {
      const RaidDevice& d = *devs_[p.at.dev];
      reads.push_back(d.data->submit(bio.part(p.skip, p.sectors).at(d.data_offset + p.at.sector)));
    }
    const std::vector<Status> results = co_await when_all(reads);
    bool failed = false;
    for (size_t i = 0; i < pieces.size(); ++i) {
      if (!results[i]) continue;
      if (results[i] == std::errc::operation_not_supported) co_return results[i];
      spdlog::warn("raid: read error on {} (sector {}), rebuilding from the other legs",
                   devs_[pieces[i].at.dev]->data_name, pieces[i].at.sector);
      co_await fail_device(pieces[i].at.dev);
      failed = true;
    }
    if (!failed) co_return ok();
  }
  // The columns of the row the pieces cover, and the row's lock.
  const uint64_t c = g.chunk();
  uint64_t from = c, to = 0;
  for (const Piece& p : pieces) {
    from = std::min(from, p.at.sector % c);
    to = std::max(to, p.at.sector % c + p.sectors);
  }
  const uint64_t row_number = pieces[0].at.row, base = row_number * c;
  auto guard = co_await stripe_locks_.lock(row_number);
  const RowLayout layout = g.row(row_number);
  for (uint64_t col = from; col < to;) {
    const uint64_t n = std::min(kColumnSectors, to - col);
    RowBuffers row(devs_.size(), n);
    if (Status st = co_await read_row(layout, base + col, row)) co_return st;
    for (const Piece& p : pieces) {
      // The piece's part within columns [col, col + n).
      const uint64_t first = std::max(col, p.at.sector % c);
      const uint64_t last = std::min(col + n, p.at.sector % c + p.sectors);
      if (first >= last) continue;
      std::memcpy(bio.data.data() + ((p.skip + first - p.at.sector % c) << kSectorShift),
                  row.blocks[p.at.dev] + ((first - col) << kSectorShift),
                  (last - first) << kSectorShift);
    }
    col += n;
  }
  co_return ok();
}

RaidTarget::RowBuffers::RowBuffers(size_t disks, uint64_t sectors_)
    : sectors(sectors_), bytes(sectors_ << kSectorShift), buffer(disks * bytes), blocks(disks) {
  for (size_t i = 0; i < disks; ++i) blocks[i] = buffer.data() + i * bytes;
}

// Reads [sector, +row.sectors) of every leg that holds it and rebuilds the
// others' blocks; a leg that fails a read is failed and rebuilt too. EIO
// when more legs are lost than the level survives.
Task<Status> RaidTarget::read_row(const RowLayout& layout, uint64_t sector, RowBuffers& row) {
  while (true) {
    std::vector<unsigned> readers, lost;
    for (unsigned dev = 0; dev < devs_.size(); ++dev)
      (holds(dev, sector, row.sectors) ? readers : lost).push_back(dev);
    if (lost.size() > parity_->parity_disks()) co_return errno_status(EIO);
    const std::vector<Status> results = co_await read_legs(readers, sector, row);
    bool failed = false;
    for (size_t i = 0; i < readers.size(); ++i) {
      if (!results[i]) continue;
      co_await fail_device(readers[i]);
      failed = true;
    }
    if (failed) continue;
    if (!lost.empty())
      parity::reconstruct(layout, row.blocks, row.bytes, lost[0],
                          lost.size() > 1 ? lost[1] : kNoDevice);
    co_return ok();
  }
}

Task<std::vector<Status>> RaidTarget::read_legs(const std::vector<unsigned>& devs, uint64_t sector,
                                                RowBuffers& row) {
  std::vector<Task<Status>> reads;
  for (unsigned dev : devs) {
    RaidDevice& d = *devs_[dev];
    reads.push_back(
        read_sectors(*d.data, d.data_offset + sector, std::span(row.blocks[dev], row.bytes)));
  }
  co_return co_await when_all(reads);
}

// Writes the blocks of `devs` (those of them still working); a leg that
// fails is failed. The legs that failed.
Task<std::vector<unsigned>> RaidTarget::write_legs(const std::vector<unsigned>& devs,
                                                   uint64_t sector, const RowBuffers& row,
                                                   uint32_t flags) {
  std::vector<Task<Status>> writes;
  std::vector<unsigned> targets;
  for (unsigned dev : devs) {
    RaidDevice& d = *devs_[dev];
    if (!d.usable()) continue;
    targets.push_back(dev);
    Bio bio{.op = BioOp::write,
            .sector = d.data_offset + sector,
            .sectors = row.sectors,
            .data = std::span(row.blocks[dev], row.bytes),
            .flags = flags & kBioFua};
    writes.push_back(d.data->submit(bio));
  }
  const std::vector<Status> results = co_await when_all(writes);
  std::vector<unsigned> failed;
  for (size_t i = 0; i < targets.size(); ++i) {
    if (!results[i]) continue;
    failed.push_back(targets[i]);
    co_await fail_device(targets[i]);
  }
  co_return failed;
}

Task<Status> RaidTarget::parity_write(Bio bio) {
  if (bio.op == BioOp::discard) co_return errno_status(EOPNOTSUPP);  // md: not safely
  std::vector<std::byte> zeroes;
  if (bio.op == BioOp::write_zeroes) {
    // md takes no write-zeroes; the block layer writes zero pages instead.
    if (bio.flags & kBioFastZero) co_return errno_status(EOPNOTSUPP);
    zeroes.resize(bio.bytes());
    bio.data = zeroes;
  }
  const ParityGeometry& g = *parity_;
  const uint64_t row = bio.sector / g.row_sectors();
  const uint64_t first = row * g.row_sectors();  // the row's first array sector
  const uint64_t base = row * g.chunk();         // and device sector
  const uint64_t region = base / region_sectors_;
  co_await barrier_.enter_write(region, region);
  if (bitmap_) {
    if (co_await bitmap_->start_write(region, region)) {
      bitmap_->end_write(region, region, true);
      barrier_.exit_write(region, region);
      co_return errno_status(EIO);
    }
  }
  bool degraded_write = false;
  std::vector<Status> results;
  {
    auto guard = co_await stripe_locks_.lock(row);
    const RowLayout layout = g.row(row);
    // Segments of columns in which the same data blocks are written: cut at
    // the request's first and last column, and into buffers' worth. They
    // share no sector of any leg, so they go at once.
    const uint64_t from = bio.sector - first, to = bio.end() - first;
    const uint64_t c = g.chunk();
    uint64_t cuts[] = {0, from % c, (to - 1) % c + 1, c};
    std::sort(std::begin(cuts), std::end(cuts));
    std::vector<WriteSegment> segments;
    for (size_t i = 0; i + 1 < std::size(cuts); ++i) {
      for (uint64_t u = cuts[i]; u < cuts[i + 1];) {
        WriteSegment seg;
        seg.sector = base + u;
        seg.sectors = std::min(kColumnSectors, cuts[i + 1] - u);
        for (unsigned k = unsigned(from / c); k <= (to - 1) / c; ++k) {
          const uint64_t x = uint64_t(k) * c + u;  // row-relative array sector
          if (x >= from && x < to)
            seg.written.emplace_back(layout.data[k],
                                     bio.data.data() + ((x - from) << kSectorShift));
        }
        u += seg.sectors;
        if (!seg.written.empty()) segments.push_back(std::move(seg));
      }
    }
    std::vector<Task<Status>> writes;
    for (const WriteSegment& seg : segments)
      writes.push_back(write_segment(layout, region, seg, bio.flags, &degraded_write));
    results = co_await when_all(writes);
  }
  if (bitmap_) {
    bitmap_->end_write(region, region, degraded_write || degraded());
    bitmap_daemon_.schedule();
  }
  barrier_.exit_write(region, region);
  for (const Status& st : results)
    if (st) co_return st;
  co_return ok();
}

// `segment` by reconstruct-write or read-modify-write (see the top).
Task<Status> RaidTarget::write_segment(const RowLayout& layout, uint64_t region,
                                       const WriteSegment& seg, uint32_t flags,
                                       bool* degraded_write) {
  const unsigned parity_disks = parity_->parity_disks();
  RowBuffers row(devs_.size(), seg.sectors);
  std::vector<bool> written(devs_.size());
  for (const auto& [dev, bytes] : seg.written) written[dev] = true;
  std::vector<unsigned> other_data, written_data, parity_devs;
  for (unsigned dev : layout.data) (written[dev] ? written_data : other_data).push_back(dev);
  for (unsigned dev = 0; dev < devs_.size(); ++dev)
    if (layout.is_parity(dev)) parity_devs.push_back(dev);
  while (true) {
    std::vector<unsigned> lost;
    for (unsigned dev = 0; dev < devs_.size(); ++dev)
      if (!holds(dev, seg.sector, seg.sectors)) lost.push_back(dev);
    if (lost.size() > parity_disks) {
      *degraded_write = true;
      co_return errno_status(EIO);
    }
    // A lost block that reconstruct-write needs (data not written) makes
    // the whole row be read and rebuilt first.
    bool rebuild = false;
    for (unsigned dev : lost) rebuild = rebuild || (!written[dev] && !layout.is_parity(dev));
    const bool unsynced =
        recovery_cp_.load() != format::kMaxSector && (!bitmap_ || bitmap_->needed(region));
    const bool use_rmw =
        lost.empty() && !unsynced && written_data.size() + parity_devs.size() < other_data.size();
    std::optional<RowBuffers> old;
    if (rebuild) {
      if (Status st = co_await read_row(layout, seg.sector, row)) {
        *degraded_write = true;
        co_return st;
      }
    } else if (use_rmw) {
      // The old data into buffers of their own: the row's blocks get the new.
      old.emplace(devs_.size(), seg.sectors);
      const std::vector<Status> r = co_await read_legs(written_data, seg.sector, *old);
      if (co_await failed_any(written_data, r)) continue;
      const std::vector<Status> p = co_await read_legs(parity_devs, seg.sector, row);
      if (co_await failed_any(parity_devs, p)) continue;
    } else {
      const std::vector<Status> r = co_await read_legs(other_data, seg.sector, row);
      if (co_await failed_any(other_data, r)) continue;
    }
    // The new data where ISA-L can read it: in place when it is aligned as
    // ISA-L asks, copied otherwise. (Only now: the reads above may use the
    // written devices' blocks for their old bytes.)
    for (const auto& [dev, bytes] : seg.written) {
      if (reinterpret_cast<uintptr_t>(bytes) % 32 == 0)
        row.blocks[dev] = const_cast<std::byte*>(bytes);  // only read from here on
      else
        std::memcpy(row.blocks[dev], bytes, row.bytes);
    }
    if (use_rmw) {
      for (const auto& [dev, bytes] : seg.written)
        parity::fold_change(layout, dev, old->blocks[dev], row.blocks[dev], row.blocks, row.bytes);
    } else {
      parity::compute(layout, row.blocks, row.bytes);
    }
    std::vector<unsigned> out = written_data;
    out.insert(out.end(), parity_devs.begin(), parity_devs.end());
    const std::vector<unsigned> failed = co_await write_legs(out, seg.sector, row, flags);
    if (!lost.empty() || !failed.empty()) *degraded_write = true;
    // The row is readable when no more legs are lost than the level
    // survives, counting those that just failed (a leg being rebuilt is
    // written, and may fail, though it was lost already).
    size_t gone = lost.size();
    for (unsigned dev : failed) gone += std::find(lost.begin(), lost.end(), dev) == lost.end();
    co_return gone <= parity_disks ? ok() : errno_status(EIO);
  }
}

// Fails the legs whose read failed; true if there were any.
Task<bool> RaidTarget::failed_any(const std::vector<unsigned>& devs,
                                  const std::vector<Status>& results) {
  bool any = false;
  for (size_t i = 0; i < devs.size(); ++i) {
    if (!results[i]) continue;
    co_await fail_device(devs[i]);
    any = true;
  }
  co_return any;
}

}  // namespace dmnbd::raid
