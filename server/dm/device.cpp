#include "dm/device.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>

namespace dmnbd {
namespace {

// The table's logical block (Target::logical_block_size, 512 bytes unless a
// target asks for more): requests that are not whole blocks are read aside
// or read-modify-written, so targets only ever see whole blocks.
struct Blocks {
  uint64_t size;
  explicit Blocks(const Table& table) : size(table.logical_block_size()) {}
  bool aligned(uint64_t v) const { return (v & (size - 1)) == 0; }
  uint64_t down(uint64_t v) const { return v & ~(size - 1); }
  uint64_t up(uint64_t v) const { return (v + size - 1) & ~(size - 1); }
};

}  // namespace

Device::Device(std::string name, std::string description, bool read_only, unsigned minor)
    : name_(std::move(name)),
      description_(std::move(description)),
      read_only_(read_only),
      minor_(minor) {}

std::string Device::name() const {
  std::lock_guard lk(mutex_);
  return name_;
}

void Device::rename(std::string name) {
  std::lock_guard lk(mutex_);
  name_ = std::move(name);
}

uint64_t Device::sectors() const {
  auto table = live_table();
  return table ? table->sectors() : 0;
}

std::shared_ptr<Table> Device::inactive_table() const {
  std::lock_guard lk(mutex_);
  return inactive_;
}

Task<void> Device::load(std::shared_ptr<Table> table) {
  std::shared_ptr<Table> replaced;
  {
    std::lock_guard lk(mutex_);
    replaced = std::exchange(inactive_, std::move(table));
  }
  if (replaced) co_await replaced->teardown();
}

Task<bool> Device::clear() {
  std::shared_ptr<Table> dropped;
  {
    std::lock_guard lk(mutex_);
    dropped = std::exchange(inactive_, nullptr);
  }
  if (dropped) co_await dropped->teardown();
  co_return dropped != nullptr;
}

Task<void> Device::drop_tables() {
  std::shared_ptr<Table> live = live_.exchange(nullptr);
  std::shared_ptr<Table> inactive;
  {
    std::lock_guard lk(mutex_);
    inactive = std::exchange(inactive_, nullptr);
  }
  if (live) co_await live->teardown();
  if (inactive) co_await inactive->teardown();
}

std::function<void()> Device::event_callback() {
  return [weak = weak_from_this()] {
    if (auto device = weak.lock()) device->raise_event();
  };
}

std::function<bool()> Device::noflush_callback() {
  return [weak = weak_from_this()] {
    auto device = weak.lock();
    return device && device->noflush_suspending_.load();
  };
}

// dm's order: presuspend hooks, hold back new I/O, drain what is in flight,
// flush the backing devices, postsuspend hooks.
Task<Status> Device::suspend(bool noflush) {
  if (gate_.suspended()) co_return ok();
  noflush_suspending_ = noflush;
  std::shared_ptr<Table> table = live_table();
  if (table)
    for (const auto& e : table->entries()) co_await e.target->presuspend();
  co_await gate_.suspend();
  // Flush the backing devices themselves, not through the targets: a target
  // that fails I/O on purpose (flakey down, error) must not fail a suspend,
  // and log-writes must not log a flush the client never sent.
  if (table && !noflush)
    for (const auto& dev : dependencies(false))
      if (Status st = co_await dev->submit(flush_bio()))
        spdlog::warn("device {}: flushing {} while suspending failed: {}", name(), dev->name(),
                     st.message());
  if (table)
    for (const auto& e : table->entries()) co_await e.target->postsuspend();
  co_return ok();
}

Task<Status> Device::resume() {
  std::shared_ptr<Table> next = inactive_table();
  if (!next && !gate_.suspended()) co_return ok();
  if (next && !gate_.suspended())
    if (Status st = co_await suspend(false)) co_return st;
  std::shared_ptr<Table> going_live = next ? next : live_table();
  if (going_live)
    for (const auto& e : going_live->entries())
      if (Status st = co_await e.target->preresume()) co_return st;
  std::shared_ptr<Table> replaced;
  if (next) {
    replaced = live_.exchange(next);
    std::lock_guard lk(mutex_);
    if (inactive_ == next) inactive_.reset();
  }
  noflush_suspending_ = false;
  if (going_live)
    for (const auto& e : going_live->entries()) co_await e.target->resume();
  gate_.resume();
  // Nothing can reach the old table any more: I/O in flight drained before
  // the swap, and new I/O finds the new one.
  if (replaced) co_await replaced->teardown();
  co_return ok();
}

Task<void> Device::quiesce_for_shutdown() {
  co_await suspend(false);
  gate_.resume();
}

std::vector<std::shared_ptr<BlockDevice>> Device::dependencies(bool include_inactive) const {
  std::vector<std::shared_ptr<BlockDevice>> deps;
  auto add_from = [&deps](const std::shared_ptr<Table>& table) {
    if (!table) return;
    for (const auto& e : table->entries())
      for (const DeviceArea& area : e.target->device_areas()) {
        const std::shared_ptr<BlockDevice>& dev = area.device;
        bool seen = false;
        for (const auto& d : deps) seen = seen || d->identity() == dev->identity();
        if (!seen) deps.push_back(dev);
      }
  };
  add_from(live_table());
  if (include_inactive) add_from(inactive_table());
  return deps;
}

bool Device::depends_on(const BlockDevice& other) const {
  for (const auto& dep : dependencies(true)) {
    if (dep->identity() == other.identity()) return true;
    auto* mapped = dynamic_cast<const Device*>(dep->identity());
    if (mapped && mapped->depends_on(other)) return true;
  }
  return false;
}

uint32_t Device::logical_block_size() const {
  std::shared_ptr<Table> table = live_table();
  return table ? table->logical_block_size() : kSectorSize;
}

Status Device::check_range(const Table* table, uint64_t offset, uint64_t length,
                           bool writes) const {
  if (writes && read_only_) return errno_status(EPERM);
  if (!table) return errno_status(writes ? ENOSPC : EINVAL);  // created, never resumed
  const uint64_t size = table->sectors() << kSectorShift;
  if (offset > size || length > size - offset) return errno_status(writes ? ENOSPC : EINVAL);
  return ok();
}

// The part of [sector, sector + left) that one target takes: up to its end
// and to its next max_io_len boundary; `rel` is target-relative.
struct Device::Part {
  const Table::Entry& entry;
  uint64_t rel, count;
};

Device::Part Device::part_at(const Table& table, uint64_t sector, uint64_t left) {
  const Table::Entry& entry = table.find(sector);
  const uint64_t rel = sector - entry.begin;
  uint64_t count = std::min(left, entry.end() - sector);
  if (uint64_t max = entry.target->max_io_len()) count = std::min(count, max - rel % max);
  return {entry, rel, count};
}

// Splits the bio at target boundaries and at each target's max_io_len, and
// hands each piece to its target with the sector made target-relative. With
// `view`, each part of a read that its target can answer in place goes into
// the view instead (direct_access); the others are read as usual.
Task<Status> Device::route(const Table& table, Bio bio, std::vector<ZeroRun>* zero_runs,
                           MappedView* view) {
  bool all_zero = true;
  for (uint64_t done = 0; done < bio.sectors;) {
    const auto [entry, rel, count] = part_at(table, bio.sector + done, bio.sectors - done);
    if (view) {
      const DirectAccess how{.view = view, .view_offset = done << kSectorShift};
      if (!co_await entry.target->direct_access(rel, count, how)) {
        all_zero = false;
        done += count;
        continue;
      }
    }
    bool piece_zero = false;
    Bio piece = bio.part(done, count).at(rel);
    piece.reads_zero = bio.op == BioOp::read ? &piece_zero : nullptr;
    if (Status st = co_await entry.target->map(piece)) co_return st;
    if (piece_zero && zero_runs) {
      if (!zero_runs->empty() && zero_runs->back().sector + zero_runs->back().sectors == done)
        zero_runs->back().sectors += count;
      else
        zero_runs->push_back({done, count});
    }
    all_zero = all_zero && piece_zero;
    done += count;
  }
  if (bio.reads_zero && all_zero) *bio.reads_zero = true;
  co_return ok();
}

// dm sends an empty flush to every target; each passes it to its devices.
Task<Status> Device::flush_table(const Table& table) {
  Status first_error;
  for (const auto& entry : table.entries()) {
    Status st = co_await entry.target->flush();
    if (st && !first_error) first_error = st;
  }
  co_return first_error;
}

// Every part of [sector, sector + count) in place, or none: on failure the
// pieces (and holds) added for earlier parts are taken back.
Task<Status> Device::direct_access_in(const Table& table, uint64_t sector, uint64_t count,
                                      const DirectAccess& how) {
  const ViewMark mark = mark_view(*how.view);
  for (uint64_t done = 0; done < count;) {
    const auto [entry, rel, n] = part_at(table, sector + done, count - done);
    DirectAccess part = how;
    part.view_offset += done << kSectorShift;
    if (Status st = co_await entry.target->direct_access(rel, n, part)) {
      rewind_view(*how.view, mark);
      co_return st;
    }
    done += n;
  }
  co_return ok();
}

// Every I/O entry point passes the suspend gate first, then holds on to the
// live table it started with, so a table swap never pulls targets from under it.
// Writes and flushes a target requeued (a noflush suspend) go round again,
// after the resume, through the table live then.
Task<Status> Device::submit(Bio bio) {
  for (bool requeued = false;; requeued = true) {
    auto pass = co_await enter_gate(requeued);
    Status st = co_await submit_in(bio);
    if (!is_requeue(st)) co_return st;
  }
}

Task<Status> Device::submit_in(Bio bio) {
  std::shared_ptr<Table> table = live_table();
  if (!table) co_return errno_status(EIO);
  if (bio.op == BioOp::flush) co_return co_await flush_table(*table);
  if (bio.op != BioOp::read && read_only_) co_return errno_status(EPERM);
  if (bio.end() > table->sectors() || bio.end() < bio.sector) co_return errno_status(EIO);
  const Blocks blocks(*table);
  if (!blocks.aligned(bio.sector << kSectorShift) || !blocks.aligned(bio.bytes()))
    co_return co_await submit_unaligned(*table, bio);
  co_return co_await route(*table, bio, nullptr);
}

// A bio from a device stacked on this one that is not whole blocks of this
// table (the kernel would have stacked the block size upwards): read aside,
// read-modify-write, or trimmed to whole blocks.
Task<Status> Device::submit_unaligned(const Table& table, Bio bio) {
  const Blocks blocks(table);
  const uint64_t offset = bio.sector << kSectorShift, end = offset + bio.bytes();
  switch (bio.op) {
    case BioOp::read:
      co_return co_await read_aside(table, offset, bio.data);
    case BioOp::write:
      co_return co_await write_unaligned(table, offset, bio.data, bio.flags);
    case BioOp::write_zeroes:  // the whole blocks as write-zeroes, the ends as zero bytes
      co_return co_await write_zeroes_in(offset, bio.bytes(), bio.flags);
    default: {  // discard: advisory, only the whole blocks inside
      if (blocks.down(end) <= blocks.up(offset)) co_return ok();
      Bio inside = bio;
      inside.sector = blocks.up(offset) >> kSectorShift;
      inside.sectors = (blocks.down(end) - blocks.up(offset)) >> kSectorShift;
      co_return co_await route(table, inside, nullptr);
    }
  }
}

Task<SuspendGate::Pass> Device::enter_gate(bool requeued) {
  if (requeued) co_return co_await gate_.enter_after_resume();
  co_return co_await gate_.enter();
}

// A stacked device answers in place through its own table. It never waits: a
// suspended device says no, and the caller takes the usual path, which does
// wait. The view holds this device in flight until its bytes have moved.
Task<Status> Device::direct_access(uint64_t sector, uint64_t count, const DirectAccess& how) {
  if (!gate_.try_enter()) co_return errno_status(EAGAIN);
  SuspendGate::Pass pass(&gate_);
  std::shared_ptr<Table> table = live_table();
  if (!table || sector + count > table->sectors() || sector + count < sector)
    co_return errno_status(EIO);
  if (how.write && read_only_) co_return errno_status(EPERM);
  Status st = co_await direct_access_in(*table, sector, count, how);
  if (!st) how.view->holds.push_back(std::move(pass));
  co_return st;
}

Task<Status> Device::block_status(uint64_t sector, uint64_t count, ExtentList& out) {
  auto pass = co_await gate_.enter();
  std::shared_ptr<Table> table = live_table();
  if (!table || sector + count > table->sectors()) co_return errno_status(EIO);
  co_return co_await block_status_in(*table, sector, count, out);
}

Task<Status> Device::block_status_in(const Table& table, uint64_t sector, uint64_t count,
                                     ExtentList& out) {
  for (uint64_t done = 0; done < count;) {
    const Table::Entry& entry = table.find(sector + done);
    const uint64_t rel = sector + done - entry.begin;
    const uint64_t want = std::min(count - done, entry.length - rel);
    ExtentList piece;
    if (Status st = co_await entry.target->block_status(rel, want, piece)) co_return st;
    const uint64_t got = std::min(piece.total_sectors(), want);
    uint64_t left = got;
    for (const Extent& e : piece.extents()) {
      uint64_t n = std::min(e.sectors, left);
      out.append(n, e.flags);
      left -= n;
      if (left == 0) break;
    }
    done += got;
    if (got < want) break;  // the target answered for less; the caller asks again
  }
  co_return ok();
}

Task<Status> Device::read(uint64_t offset, std::span<std::byte> buf,
                          std::vector<ZeroRun>* zero_runs, MappedView* view) {
  auto pass = co_await gate_.enter();
  std::shared_ptr<Table> table = live_table();
  if (Status st = check_range(table.get(), offset, buf.size(), false)) co_return st;
  const Blocks blocks(*table);
  if (blocks.aligned(offset) && blocks.aligned(buf.size())) {
    Bio bio{.op = BioOp::read,
            .sector = offset >> kSectorShift,
            .sectors = buf.size() >> kSectorShift,
            .data = buf};
    const size_t pieces_before = view ? view->pieces.size() : 0;
    Status st = co_await route(*table, bio, zero_runs, view);
    // Bytes answered in place move later: the device stays in flight until then.
    if (view && view->pieces.size() > pieces_before) view->holds.push_back(std::move(pass));
    co_return st;
  }
  // A client that ignored the advertised block size.
  co_return co_await read_aside(*table, offset, buf);
}

// Reads the whole blocks around [offset, offset + buf.size()) aside and
// copies out the part asked for.
Task<Status> Device::read_aside(const Table& table, uint64_t offset, std::span<std::byte> buf) {
  const Blocks blocks(table);
  const uint64_t first = blocks.down(offset);
  std::vector<std::byte> whole(blocks.up(offset + buf.size()) - first);
  Bio bio{.op = BioOp::read,
          .sector = first >> kSectorShift,
          .sectors = whole.size() >> kSectorShift,
          .data = whole};
  if (Status st = co_await route(table, bio, nullptr)) co_return st;
  std::memcpy(buf.data(), whole.data() + (offset - first), buf.size());
  co_return ok();
}

Task<Status> Device::map_write(uint64_t offset, uint64_t length, MappedView& view) {
  if (!gate_.try_enter()) co_return errno_status(EAGAIN);  // suspended: no waiting here
  SuspendGate::Pass pass(&gate_);
  std::shared_ptr<Table> table = live_table();
  if (Status st = check_range(table.get(), offset, length, true)) co_return st;
  const Blocks blocks(*table);
  if (!blocks.aligned(offset) || !blocks.aligned(length) || length == 0)
    co_return errno_status(EAGAIN);
  const DirectAccess how{.write = true, .view = &view};
  Status st =
      co_await direct_access_in(*table, offset >> kSectorShift, length >> kSectorShift, how);
  if (st) {
    view.release();
    co_return errno_status(EAGAIN);  // some part is not in memory
  }
  view.holds.push_back(std::move(pass));
  co_return ok();
}

Task<Status> Device::write(uint64_t offset, std::span<std::byte> buf, uint32_t flags) {
  for (bool requeued = false;; requeued = true) {
    auto pass = co_await enter_gate(requeued);
    Status st = co_await write_in(offset, buf, flags);
    if (!is_requeue(st)) co_return st;
  }
}

Task<Status> Device::write_in(uint64_t offset, std::span<std::byte> buf, uint32_t flags) {
  std::shared_ptr<Table> table = live_table();
  if (Status st = check_range(table.get(), offset, buf.size(), true)) co_return st;
  const Blocks blocks(*table);
  if (!blocks.aligned(offset) || !blocks.aligned(buf.size()))
    co_return co_await write_unaligned(*table, offset, buf, flags);
  Bio bio{.op = BioOp::write,
          .sector = offset >> kSectorShift,
          .sectors = buf.size() >> kSectorShift,
          .data = buf,
          .flags = flags & kBioFua};
  co_return co_await route(*table, bio, nullptr);
}

// Read-modify-write of the partial sectors at either end; targets only ever
// see whole sectors.
Task<Status> Device::write_unaligned(const Table& table, uint64_t offset, std::span<std::byte> buf,
                                     uint32_t flags) {
  auto guard = co_await rmw_mutex_.lock();
  const Blocks blocks(table);
  const uint64_t first = blocks.down(offset);
  const uint64_t last = blocks.up(offset + buf.size());
  std::vector<std::byte> whole(last - first);
  auto read_block = [&](uint64_t byte_pos) -> Task<Status> {
    Bio rd{.op = BioOp::read,
           .sector = byte_pos >> kSectorShift,
           .sectors = blocks.size >> kSectorShift,
           .data = std::span(whole).subspan(byte_pos - first, blocks.size)};
    co_return co_await route(table, rd, nullptr);
  };
  if (!blocks.aligned(offset))
    if (Status st = co_await read_block(first)) co_return st;
  if (!blocks.aligned(offset + buf.size()) &&
      (last - blocks.size != first || blocks.aligned(offset)))
    if (Status st = co_await read_block(last - blocks.size)) co_return st;
  std::memcpy(whole.data() + (offset - first), buf.data(), buf.size());
  Bio wr{.op = BioOp::write,
         .sector = first >> kSectorShift,
         .sectors = whole.size() >> kSectorShift,
         .data = whole,
         .flags = flags & kBioFua};
  co_return co_await route(table, wr, nullptr);
}

// Discard is advisory: only the whole sectors inside the range are discarded.
Task<Status> Device::discard(uint64_t offset, uint64_t length, uint32_t flags) {
  auto pass = co_await gate_.enter();
  std::shared_ptr<Table> table = live_table();
  if (read_only_) co_return errno_status(EPERM);
  if (Status st = check_range(table.get(), offset, length, false)) co_return st;
  const Blocks blocks(*table);
  const uint64_t first = blocks.up(offset), last = blocks.down(offset + length);
  if (last <= first) co_return ok();
  Bio bio{.op = BioOp::discard,
          .sector = first >> kSectorShift,
          .sectors = (last - first) >> kSectorShift,
          .flags = flags & kBioFua};
  co_return co_await route(*table, bio, nullptr);
}

Task<Status> Device::write_zeroes(uint64_t offset, uint64_t length, uint32_t flags) {
  for (bool requeued = false;; requeued = true) {
    auto pass = co_await enter_gate(requeued);
    Status st = co_await write_zeroes_in(offset, length, flags);
    if (!is_requeue(st)) co_return st;
  }
}

Task<Status> Device::write_zeroes_in(uint64_t offset, uint64_t length, uint32_t flags) {
  std::shared_ptr<Table> table = live_table();
  if (Status st = check_range(table.get(), offset, length, true)) co_return st;
  const Blocks blocks(*table);
  const uint64_t first = blocks.up(offset), last = blocks.down(offset + length);
  if (first >= last || !blocks.aligned(offset) || !blocks.aligned(offset + length)) {
    // Partial blocks are written as zero bytes, which is never fast.
    if (flags & kBioFastZero) co_return errno_status(ENOTSUP);
  }
  if (first < last) {
    Bio bio{.op = BioOp::write_zeroes,
            .sector = first >> kSectorShift,
            .sectors = (last - first) >> kSectorShift,
            .flags = flags};
    if (Status st = co_await route(*table, bio, nullptr)) co_return st;
  }
  auto zero_bytes = [&](uint64_t from, uint64_t to) -> Task<Status> {
    std::vector<std::byte> zeroes(to - from);
    co_return co_await write_unaligned(*table, from, zeroes, flags);
  };
  if (first >= last) co_return co_await zero_bytes(offset, offset + length);
  if (offset < first)
    if (Status st = co_await zero_bytes(offset, first)) co_return st;
  if (last < offset + length)
    if (Status st = co_await zero_bytes(last, offset + length)) co_return st;
  co_return ok();
}

Task<Status> Device::flush() {
  for (bool requeued = false;; requeued = true) {
    auto pass = co_await enter_gate(requeued);
    Status st = co_await flush_in();
    if (!is_requeue(st)) co_return st;
  }
}

Task<Status> Device::flush_in() {
  std::shared_ptr<Table> table = live_table();
  if (!table) co_return ok();
  co_return co_await flush_table(*table);
}

Task<Status> Device::block_status_bytes(uint64_t offset, uint64_t length, size_t max_extents,
                                        std::vector<ByteExtent>& out) {
  auto pass = co_await gate_.enter();
  std::shared_ptr<Table> table = live_table();
  if (Status st = check_range(table.get(), offset, length, false)) co_return st;
  const uint64_t first = offset >> kSectorShift;
  const uint64_t count = ((offset + length + kSectorSize - 1) >> kSectorShift) - first;
  ExtentList sectors;
  if (Status st = co_await block_status_in(*table, first, count, sectors)) co_return st;
  uint64_t skip = offset - (first << kSectorShift);  // an unaligned start trims the first extent
  for (const Extent& e : sectors.extents()) {
    uint64_t bytes = (e.sectors << kSectorShift) - skip;
    skip = 0;
    out.push_back({bytes, e.flags});
    if (out.size() >= max_extents) break;
  }
  co_return ok();
}

}  // namespace dmnbd
