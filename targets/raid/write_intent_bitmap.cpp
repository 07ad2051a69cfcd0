#include "write_intent_bitmap.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <bit>

#include "dmnbd/dm_io.hpp"

namespace dmnbd::raid {
namespace {

constexpr uint64_t kBitmapSector = format::kBitmapOffset >> kSectorShift;
constexpr uint32_t kCounterMax = 0x3fff;

}  // namespace

WriteIntentBitmap::WriteIntentBitmap(std::vector<std::shared_ptr<BlockDevice>> metadata,
                                     Options options)
    : metadata_(std::move(metadata)), options_(options) {
  active_.resize(metadata_.size());
  for (size_t i = 0; i < metadata_.size(); ++i) active_[i] = metadata_[i] != nullptr;
  resize(options.region_sectors);
}

void WriteIntentBitmap::set_device_active(unsigned device, bool active) {
  std::lock_guard lk(mutex_);
  active_[device] = active && metadata_[device] != nullptr;
}

bool WriteIntentBitmap::bit(uint64_t r) const {
  return (uint8_t(image_[format::kBitmapHeaderBytes + (r >> 3)]) >> (r & 7)) & 1;
}

void WriteIntentBitmap::set_bit(uint64_t r, bool value) {
  std::byte& b = image_[format::kBitmapHeaderBytes + (r >> 3)];
  const std::byte mask{uint8_t(1u << (r & 7))};
  b = value ? (b | mask) : (b & ~mask);
  dirty_pages_[(format::kBitmapHeaderBytes + (r >> 3)) / format::kBitmapPage] = true;
}

void WriteIntentBitmap::encode_header() {
  header_.sync_size = options_.sync_size;
  header_.chunksize = options_.region_sectors << kSectorShift;
  header_.daemon_sleep = options_.daemon_sleep_seconds;
  header_.write_behind = options_.write_behind;
  format::encode_bitmap_header(header_, image_);
  dirty_pages_[0] = true;
}

// md_bitmap_resize(): bits of the old regions carried over to the new ones.
void WriteIntentBitmap::resize(uint32_t region_sectors) {
  std::lock_guard lk(mutex_);
  std::vector<bool> old_dirty;
  const unsigned old_shift = region_shift_;
  if (!image_.empty())
    for (uint64_t r = 0; r < regions_; ++r) old_dirty.push_back(bit(r));
  options_.region_sectors = region_sectors;
  region_shift_ = unsigned(std::countr_zero(region_sectors));
  regions_ = (options_.sync_size + region_sectors - 1) >> region_shift_;
  image_.assign(format::bitmap_image_bytes(regions_), std::byte{0});
  dirty_pages_.assign((image_.size() + format::kBitmapPage - 1) / format::kBitmapPage, true);
  needed_.assign(regions_, false);
  entries_.clear();
  const auto now = Clock::now();
  for (uint64_t old = 0; old < old_dirty.size(); ++old) {
    if (!old_dirty[old]) continue;
    const uint64_t r = (old << old_shift) >> region_shift_;
    if (r >= regions_) continue;
    set_bit(r, true);
    entries_[r].idle_since = now;
  }
  encode_header();
}

void WriteIntentBitmap::create(bool clean, uint64_t events) {
  std::lock_guard lk(mutex_);
  header_ = format::BitmapHeader{};
  header_.events = header_.events_cleared = events;
  const auto now = Clock::now();
  entries_.clear();
  for (uint64_t r = 0; r < regions_; ++r) {
    set_bit(r, !clean);
    if (!clean) entries_[r].idle_since = now;
  }
  encode_header();
}

Task<WriteIntentBitmap::Loaded> WriteIntentBitmap::load(unsigned from, uint64_t sb_events) {
  Loaded out;
  std::vector<std::byte> first(format::kLogicalBlock);
  if (co_await read_sectors(*metadata_[from], kBitmapSector, first)) {
    out.error = "failed to read the bitmap";
    co_return out;
  }
  const format::BitmapHeader h = format::decode_bitmap_header(first);
  if (h.magic != format::kBitmapMagic)
    out.error = "bad magic";
  else if (h.version < 3 || h.version > 5)
    out.error = "unrecognized superblock version";
  else if (h.chunksize < 512)
    out.error = "bitmap chunksize too small";
  else if (!std::has_single_bit(h.chunksize))
    out.error = "bitmap chunksize not a power of 2";
  else if (h.daemon_sleep < 1 || h.daemon_sleep > INT32_MAX / 1000)
    out.error = "daemon sleep period out of range";
  else if (h.write_behind > kCounterMax)
    out.error = "write-behind limit out of range (0 - 16383)";
  else if (std::any_of(h.uuid.begin(), h.uuid.end(), [](std::byte b) { return b != std::byte{0}; }))
    out.error = "bitmap superblock UUID mismatch";
  if (!out.error.empty()) co_return out;

  // The bits are laid out for the header's region size.
  if ((h.chunksize >> kSectorShift) != options_.region_sectors) resize(h.chunksize >> kSectorShift);
  std::vector<std::byte> image(image_.size());
  if (co_await read_sectors(*metadata_[from], kBitmapSector, image)) {
    out.error = "failed to read the bitmap";
    co_return out;
  }
  out.stale = h.events < sb_events || (h.state & format::kBitmapStale);
  if (h.events < sb_events)
    spdlog::warn("raid: bitmap file is out of date ({} < {}) -- forcing full recovery", h.events,
                 sb_events);
  std::lock_guard lk(mutex_);
  std::copy(image.begin() + format::kBitmapHeaderBytes, image.end(),
            image_.begin() + format::kBitmapHeaderBytes);
  header_ = h;
  header_.state = 0;
  const auto now = Clock::now();
  entries_.clear();
  for (uint64_t r = 0; r < regions_; ++r) {
    if (out.stale) set_bit(r, true);
    if (bit(r)) {
      entries_[r].idle_since = now;
      ++out.dirty;
    }
  }
  // Bits past the last region stay zero, as the kernel keeps them.
  for (uint64_t r = regions_; (format::kBitmapHeaderBytes + (r >> 3)) < image_.size(); ++r)
    set_bit(r, false);
  std::fill(dirty_pages_.begin(), dirty_pages_.end(), true);
  encode_header();
  out.ok = true;
  out.chunksize = h.chunksize;
  out.daemon_sleep = h.daemon_sleep;
  co_return out;
}

Task<Status> WriteIntentBitmap::start_write(uint64_t first, uint64_t last) {
  uint64_t ticket = 0;
  {
    std::lock_guard lk(mutex_);
    for (uint64_t r = first; r <= last && r < regions_; ++r) {
      Entry& e = entries_[r];
      if (!bit(r)) {
        set_bit(r, true);
        e.ticket = commits_.next();
      }
      ++e.pending;
      ticket = std::max(ticket, e.ticket);
    }
  }
  co_return co_await commits_.wait(ticket);
}

void WriteIntentBitmap::end_write(uint64_t first, uint64_t last, bool degraded) {
  std::lock_guard lk(mutex_);
  const auto now = Clock::now();
  for (uint64_t r = first; r <= last && r < regions_; ++r) {
    auto it = entries_.find(r);
    if (it == entries_.end()) continue;
    if (degraded) needed_[r] = true;
    if (--it->second.pending == 0) it->second.idle_since = now;
  }
}

WriteIntentBitmap::Cleared WriteIntentBitmap::clear_idle(Clock::duration min_idle,
                                                         bool keep_dirty) {
  Cleared out;
  if (keep_dirty) return out;
  std::lock_guard lk(mutex_);
  const auto now = Clock::now();
  for (auto it = entries_.begin(); it != entries_.end();) {
    const uint64_t r = it->first;
    const Entry& e = it->second;
    if (e.pending || needed_[r]) {
      ++it;
      continue;
    }
    const auto due = e.idle_since + min_idle;
    if (due <= now) {
      set_bit(r, false);
      cleared_since_commit_ = true;
      out.any = true;
      it = entries_.erase(it);
      continue;
    }
    if (!out.next || due < *out.next) out.next = due;
    ++it;
  }
  return out;
}

bool WriteIntentBitmap::needed(uint64_t r) const {
  std::lock_guard lk(mutex_);
  return r < regions_ && needed_[r];
}

void WriteIntentBitmap::set_needed_where_dirty(uint64_t from_region) {
  std::lock_guard lk(mutex_);
  for (uint64_t r = from_region; r < regions_; ++r)
    if (bit(r)) needed_[r] = true;
}

void WriteIntentBitmap::set_all_needed(uint64_t from_region) {
  std::lock_guard lk(mutex_);
  const auto now = Clock::now();
  for (uint64_t r = from_region; r < regions_; ++r) {
    needed_[r] = true;
    if (!bit(r)) {
      // md keeps the bit of a region being synced set until it is done.
      set_bit(r, true);
      entries_[r].idle_since = now;
    }
  }
}

uint64_t WriteIntentBitmap::next_needed(uint64_t from) const {
  std::lock_guard lk(mutex_);
  for (uint64_t r = from; r < regions_; ++r)
    if (needed_[r]) return r;
  return regions_;
}

void WriteIntentBitmap::end_sync(uint64_t r) {
  std::lock_guard lk(mutex_);
  if (r >= regions_) return;
  needed_[r] = false;
  if (auto it = entries_.find(r); it != entries_.end() && !it->second.pending)
    it->second.idle_since = Clock::now();
}

void WriteIntentBitmap::clear_needed() {
  std::lock_guard lk(mutex_);
  std::fill(needed_.begin(), needed_.end(), false);
}

uint64_t WriteIntentBitmap::dirty_count() const {
  std::lock_guard lk(mutex_);
  uint64_t n = 0;
  for (uint64_t r = 0; r < regions_; ++r) n += bit(r);
  return n;
}

void WriteIntentBitmap::set_events(uint64_t events, bool array_clean) {
  std::lock_guard lk(mutex_);
  header_.events = events;
  if (array_clean || header_.events_cleared > events) header_.events_cleared = events;
  encode_header();
}

Task<Status> WriteIntentBitmap::flush() {
  uint64_t ticket = 0;
  {
    std::lock_guard lk(mutex_);
    const bool changed =
        std::find(dirty_pages_.begin(), dirty_pages_.end(), true) != dirty_pages_.end();
    if (changed)
      ticket = commits_.next();
    else if (commits_.in_flight())
      ticket = commits_.newest_started();
  }
  co_return co_await commits_.wait(ticket);
}

// One commit: the pages changed since the last one, to every active metadata
// device, then a flush of each. A device that fails is reported and dropped;
// the commit fails only when no device took it.
Task<Status> WriteIntentBitmap::commit() {
  struct Page {
    uint64_t index;
    std::vector<std::byte> bytes;
  };
  std::vector<Page> pages;
  std::vector<unsigned> devices;
  bool cleaned = false;
  {
    std::lock_guard lk(mutex_);
    for (uint64_t p = 0; p < dirty_pages_.size(); ++p) {
      if (!dirty_pages_[p]) continue;
      dirty_pages_[p] = false;
      const uint64_t from = p * format::kBitmapPage;
      const uint64_t to = std::min<uint64_t>(from + format::kBitmapPage, image_.size());
      pages.push_back({p, std::vector<std::byte>(image_.begin() + std::ptrdiff_t(from),
                                                 image_.begin() + std::ptrdiff_t(to))});
    }
    cleaned = std::exchange(cleared_since_commit_, false);
    for (unsigned d = 0; d < active_.size(); ++d)
      if (active_[d]) devices.push_back(d);
  }
  auto give_back = [&] {
    std::lock_guard lk(mutex_);
    for (const Page& p : pages) dirty_pages_[p.index] = true;
    cleared_since_commit_ = cleared_since_commit_ || cleaned;
  };
  if (pages.empty()) co_return ok();
  if (cleaned && legs_flush_) {
    Status legs = co_await legs_flush_();
    if (legs) {
      give_back();
      co_return legs;
    }
  }
  unsigned written = 0;
  for (unsigned d : devices) {
    BlockDevice& dev = *metadata_[d];
    Status st;
    for (Page& p : pages) {
      st = co_await write_sectors(
          dev, kBitmapSector + p.index * (format::kBitmapPage >> kSectorShift), p.bytes);
      if (st) break;
    }
    if (!st) st = co_await flush_device(dev);
    if (!st) {
      ++written;
      continue;
    }
    spdlog::warn("raid: writing the bitmap to metadata device {} failed: {}", d, st.message());
    set_device_active(d, false);
    if (on_device_error_) on_device_error_(d);
  }
  if (written == 0 && !devices.empty()) {
    give_back();
    co_return errno_status(EIO);
  }
  co_return ok();
}

}  // namespace dmnbd::raid
