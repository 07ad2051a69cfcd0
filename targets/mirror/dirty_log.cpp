#include "dirty_log.hpp"

#include <spdlog/spdlog.h>

#include "disk_log_format.hpp"
#include "dmnbd/dm_io.hpp"

namespace dmnbd::mirror {
namespace {

// Every log constructor error reaches the table as the mirror's ti->error,
// with the log's own warning in brackets (the kernel prints that one apart).
[[noreturn]] void log_error(const std::string& why) {
  throw TargetError("Error creating mirror dirty log (" + why + ")");
}

}  // namespace

std::unique_ptr<DirtyLog> DirtyLog::create(const TargetContext& ctx, const std::string& type,
                                           TargetArgs args) {
  if (type == "core") return std::unique_ptr<DirtyLog>(new DirtyLog(ctx, nullptr, {}, args));
  if (type != "disk") log_error("unknown dirty log type " + type);
  if (args.size() < 2 || args.size() > 3)
    log_error("wrong number of arguments to disk dirty region log");
  std::shared_ptr<BlockDevice> device;
  try {
    device = ctx.get_device(args[0]);
  } catch (const TargetError& e) {
    log_error(e.what());
  }
  return std::unique_ptr<DirtyLog>(new DirtyLog(ctx, device, args[0], args.subspan(1)));
}

// create_log_context()
DirtyLog::DirtyLog(const TargetContext& ctx, std::shared_ptr<BlockDevice> device,
                   std::string device_name, TargetArgs args)
    : device_(std::move(device)),
      device_name_(std::move(device_name)),
      raise_event_(ctx.raise_event) {
  if (args.empty() || args.size() > 2) log_error("wrong number of arguments to dirty region log");
  if (args.size() > 1) {
    if (args[1] == "sync")
      sync_ = Sync::force;
    else if (args[1] == "nosync")
      sync_ = Sync::nosync;
    else
      log_error("unrecognised sync argument to dirty region log: " + args[1]);
  }
  if (!scan_u32(args[0], region_size_) || region_size_ < 2 || region_size_ > ctx.length ||
      (region_size_ & (region_size_ - 1)) != 0)
    log_error("invalid region size " + args[0]);
  region_count_ = (ctx.length + region_size_ - 1) / region_size_;
  if (region_count_ > UINT32_MAX) log_error("region count exceeds limit of 4294967295");

  const uint64_t bitmap = disk_log::bitmap_bytes(region_count_);
  if (device_) {
    const uint64_t need = disk_log::image_bytes(region_count_);
    if (need > device_->sectors() << kSectorShift)
      log_error("log device " + device_name_ + " too small: need " + std::to_string(need) +
                " bytes");
    image_.resize(need);
    bitmap_at_ = disk_log::kBitmapOffset;
  } else {
    image_.resize(bitmap);
  }
  sync_storage_.resize(bitmap);
  recovering_storage_.resize(bitmap);
  clean_ = RegionBits(std::span(image_).subspan(bitmap_at_, bitmap));
  sync_bits_ = RegionBits(sync_storage_);
  recovering_ = RegionBits(recovering_storage_);
  clean_.fill(true);
  sync_bits_.fill(sync_ == Sync::nosync);
  sync_count_ = sync_ == Sync::nosync ? region_count_ : 0;
}

DirtyLog::~DirtyLog() = default;

bool DirtyLog::in_sync(RegionId r) const {
  std::lock_guard lk(mutex_);
  return sync_bits_.test(r);
}

uint64_t DirtyLog::mark_region(RegionId r) {
  std::lock_guard lk(mutex_);
  touched_dirtied_ = true;
  if (!clean_.test(r)) return 0;
  clean_.clear(r);
  return device_ ? commits_.next() : 0;
}

void DirtyLog::clear_region(RegionId r) {
  std::lock_guard lk(mutex_);
  if (flush_failed_) return;
  clean_.set(r);
  touched_cleaned_ = true;
}

std::optional<RegionId> DirtyLog::get_resync_work() {
  std::lock_guard lk(mutex_);
  while (sync_search_ < region_count_) {
    const RegionId r = sync_bits_.find_zero(sync_search_, region_count_);
    sync_search_ = r + 1;
    if (r >= region_count_) break;
    if (recovering_.test(r)) continue;
    recovering_.set(r);
    return r;
  }
  return std::nullopt;
}

void DirtyLog::set_region_sync(RegionId r, bool in_sync) {
  std::lock_guard lk(mutex_);
  recovering_.clear(r);
  if (in_sync) {
    // The kernel counts again a region already in sync (a failed recovery
    // declared good): the bit is set once, so the count stays the bits'.
    if (!sync_bits_.test(r)) ++sync_count_;
    sync_bits_.set(r);
  } else if (sync_bits_.test(r)) {
    --sync_count_;
    sync_bits_.clear(r);
  }
}

uint64_t DirtyLog::sync_count() const {
  std::lock_guard lk(mutex_);
  return sync_count_;
}

Task<Status> DirtyLog::flush() {
  uint64_t ticket = 0;
  {
    std::lock_guard lk(mutex_);
    if (!device_) co_return ok();
    if (touched_cleaned_ || touched_dirtied_)
      ticket = commits_.next();
    else if (commits_.in_flight())
      ticket = commits_.newest_started();  // the one in flight has every change so far
    else
      co_return ok();
  }
  co_return co_await commits_.wait(ticket);
}

Task<Status> DirtyLog::wait_durable(uint64_t ticket) {
  co_return co_await commits_.wait(ticket);
}

Task<Status> DirtyLog::run_flush() {
  std::vector<std::byte> image;
  bool cleaned = false, dirtied = false;
  {
    std::lock_guard lk(mutex_);
    image = image_;
    cleaned = std::exchange(touched_cleaned_, false);
    dirtied = std::exchange(touched_dirtied_, false);
  }
  if (cleaned && legs_flush_) {
    Status legs = co_await legs_flush_();
    if (legs) {
      // Which regions reached the legs is unknown now: all are dirty, and
      // none goes clean again until the mirror is reloaded.
      std::lock_guard lk(mutex_);
      flush_failed_ = true;
      for (RegionId r = 0; r < region_count_; ++r) clean_.clear(r);
      touched_dirtied_ = true;
      image = image_;
      dirtied = true;
    }
  }
  Status st = co_await write_sectors(*device_, 0, image);
  if (!st && dirtied) {
    st = co_await flush_device(*device_);
    if (st) {
      std::lock_guard lk(mutex_);
      device_flush_failed_ = true;
    }
  }
  if (st) {
    // Nothing of it is known to be on disk: the next flush writes again.
    std::lock_guard lk(mutex_);
    touched_cleaned_ = touched_cleaned_ || cleaned;
    touched_dirtied_ = touched_dirtied_ || dirtied;
  }
  if (st) fail_device();
  co_return st;
}

void DirtyLog::fail_device() {
  {
    std::lock_guard lk(mutex_);
    if (std::exchange(device_failed_, true)) return;
  }
  spdlog::warn("mirror: the dirty region log on {} failed", device_name_);
  raise_event_();
}

Task<void> DirtyLog::resume() {
  if (!device_) {
    std::lock_guard lk(mutex_);
    sync_search_ = 0;
    co_return;
  }
  std::vector<std::byte> image(image_.size());
  Status st = co_await read_sectors(*device_, 0, image);
  disk_log::Header header = disk_log::decode_header(image);
  if (!st) {
    if (sync_ != Sync::use_log || header.magic != disk_log::kMagic)
      header = {disk_log::kMagic, disk_log::kVersion, 0};
    if (header.version == 1) header.version = disk_log::kVersion;  // little-endian host
    if (header.version != disk_log::kVersion) {
      spdlog::warn("mirror: incompatible disk log version on {}", device_name_);
      st = errno_status(EINVAL);
    }
  }
  if (st) {
    // An unreadable log: every region is out of sync (unless nosync).
    spdlog::warn("mirror: {}: Failed to read header on dirty region log device", device_name_);
    fail_device();
    header.nr_regions = 0;
    if (header.magic != disk_log::kMagic) header = {disk_log::kMagic, disk_log::kVersion, 0};
  }
  std::vector<std::byte> out;
  {
    std::lock_guard lk(mutex_);
    if (!st) std::copy(image.begin(), image.end(), image_.begin());
    // Regions the log did not know (all of them in a new log).
    for (RegionId r = header.nr_regions; r < region_count_; ++r)
      sync_ == Sync::nosync ? clean_.set(r) : clean_.clear(r);
    for (RegionId r = region_count_; r < clean_.size(); ++r) clean_.clear(r);
    std::copy_n(image_.begin() + std::ptrdiff_t(bitmap_at_), sync_storage_.size(),
                sync_storage_.begin());
    sync_count_ = sync_bits_.count();
    sync_search_ = 0;
    header.nr_regions = region_count_;
    disk_log::encode_header(header, image_);
    touched_cleaned_ = touched_dirtied_ = false;
    out = image_;
  }
  st = co_await write_sectors(*device_, 0, out);
  if (!st) {
    st = co_await flush_device(*device_);
    if (st) {
      std::lock_guard lk(mutex_);
      device_flush_failed_ = true;
    }
  }
  if (st) {
    spdlog::warn("mirror: {}: Failed to write header on dirty region log device", device_name_);
    fail_device();
  }
}

std::string DirtyLog::status() const {
  if (!device_) return "1 core";
  std::lock_guard lk(mutex_);
  const char state = device_flush_failed_ ? 'F' : device_failed_ ? 'D' : 'A';
  return "3 disk " + device_name_ + " " + state;
}

std::string DirtyLog::table() const {
  const bool given = sync_ != Sync::use_log;
  std::string out = device_ ? "disk " + std::to_string(given ? 3 : 2) + " " + device_name_ + " "
                            : "core " + std::to_string(given ? 2 : 1) + " ";
  out += std::to_string(region_size_) + " ";
  if (given) out += sync_ == Sync::nosync ? "nosync " : "sync ";
  return out;
}

}  // namespace dmnbd::mirror
