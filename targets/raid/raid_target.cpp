#include "raid_target.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "dmnbd/dm_io.hpp"
#include "dmnbd/park.hpp"

namespace dmnbd::raid {
namespace {

// md counts daemon_sleep in jiffies; Debian's kernels tick at HZ=250.
constexpr std::chrono::milliseconds kJiffy{4};
constexpr uint64_t kMinRaid456JournalSpace = 4 * 2048;  // MIN_RAID456_JOURNAL_SPACE

// FEATURE_FLAG_SUPPORTS_V190 is the only compatible feature there is.
bool known_compat_features(const format::Superblock& sb) {
  return sb.compat_features == 0 || sb.compat_features == format::kFeatureV190;
}

}  // namespace

RaidTarget::RaidTarget(const TargetContext& ctx, TargetArgs args)
    : raise_event_(ctx.raise_event), params_(parse_raid_table(args, ctx.length)) {
  layout_ = params_.layout;
  open_devices(ctx);
  if (params_.has(kJournalDev)) open_journal(ctx);
  set_sizes(ctx.length);
  has_metadata_ = params_.any_metadata();
  if (params_.has(kDaemonSleep) && params_.daemon_sleep)
    daemon_period_ = params_.daemon_sleep * kJiffy;
}

RaidTarget::~RaidTarget() = default;

// parse_dev_params()'s lookups: the kernel's words, and the reason after them.
void RaidTarget::open_devices(const TargetContext& ctx) {
  for (unsigned i = 0; i < params_.disks(); ++i) {
    auto dev = std::make_unique<RaidDevice>();
    const DevicePair& pair = params_.devices[i];
    dev->data_name = pair.data;
    dev->write_mostly = params_.write_mostly[i];
    auto open = [&](const std::string& name, const char* error) {
      try {
        return ctx.get_device(name);
      } catch (const TargetError& e) {
        throw TargetError(std::string(error) + " (" + e.what() + ")");
      }
    };
    if (!pair.meta.empty()) dev->meta = open(pair.meta, "RAID metadata device lookup failure");
    if (!pair.data.empty()) dev->data = open(pair.data, "RAID device lookup failure");
    if (params_.rebuild[i]) {
      dev->in_sync = false;
      dev->recovery_offset = 0;
    }
    devs_.push_back(std::move(dev));
  }
}

// The raid4/5/6 journal (md's raid5-cache) is checked as the kernel does,
// and then refused: its log is md's own format, which dm-raid cannot even
// find again after a reload (the superblock has no place for its tail).
void RaidTarget::open_journal(const TargetContext& ctx) {
  std::shared_ptr<BlockDevice> journal;
  try {
    journal = ctx.get_device(params_.journal_dev);
  } catch (const TargetError& e) {
    throw TargetError(std::string("raid4/5/6 journal device lookup failure (") + e.what() + ")");
  }
  if (journal->sectors() < kMinRaid456JournalSpace)
    throw TargetError("No space for raid4/5/6 journal");
  throw TargetError(
      "raid4/5/6 journal devices are not supported by dmnbd (md's raid5-cache log); "
      "leave journal_dev out");
}

// rs_set_dev_and_array_sectors() and md's own rounding (raid_layout.hpp).
void RaidTarget::set_sizes(uint64_t length) {
  const unsigned disks = params_.disks();
  const unsigned data_stripes = disks - params_.type->parity_devs;
  dev_sectors_ = array_sectors_ = length;
  const char* not_divisible = "Target length not divisible by number of data devices";
  switch (params_.type->level) {
    case 1:
      geometry_ = Geometry::raid1(disks, dev_sectors_);
      break;
    case 10: {
      const uint32_t copies = params_.raid10_copies;
      if (copies < 2 || params_.delta_disks < 0)
        throw TargetError("Bogus raid10 data copies or delta disks");
      if ((length * copies) % data_stripes) throw TargetError(not_divisible);
      dev_sectors_ = length * copies / data_stripes;
      if ((uint64_t(data_stripes) * dev_sectors_) % copies) throw TargetError(not_divisible);
      array_sectors_ = uint64_t(data_stripes) * dev_sectors_ / copies;
      geometry_ =
          Geometry::raid10(disks, params_.chunk, Raid10Layout::from_md(layout_), dev_sectors_);
      break;
    }
    default:
      if (length % data_stripes) throw TargetError(not_divisible);
      dev_sectors_ = length / data_stripes;
      array_sectors_ = dev_sectors_ * data_stripes;
      if (params_.type->level == 0) {
        geometry_ = Geometry::raid0(disks, params_.chunk, dev_sectors_);
        break;
      }
      parity_.emplace(params_.type->level, layout_, disks, params_.chunk, dev_sectors_);
      geometry_ = Geometry::raid0(data_stripes, params_.chunk, dev_sectors_);  // the array's size
      // raid5_run() rounds the legs down to whole chunks and sets the
      // array's size from that; the superblocks keep the legs' own size.
      array_sectors_ = parity_->array_sectors();
      break;
  }
  for (const auto& d : devs_)
    if (d->data && d->data->sectors() < dev_sectors_)
      throw TargetError("Component device(s) too small");
  // The kernel takes a raid4/5/6 table longer than its rows and holds I/O
  // to the tail for ever (raid_map() requeues it); here it fails.
  if (parity_ && parity_->array_sectors() < length) {
    spdlog::warn(
        "raid: sectors {} to {} are past md's array (whole chunks on each leg): "
        "I/O there fails",
        parity_->array_sectors(), length);
    return;
  }
  // md rounds each device down to whole chunks: a tail past the array could
  // never be read or written (the kernel requeues such bios for ever).
  if (geometry_.array_sectors() < length)
    throw TargetError(
        "Target length " + std::to_string(length) + " exceeds the " +
        std::to_string(geometry_.array_sectors()) +
        " sectors md can map: use a multiple of the chunk size times the data devices");
}

Task<void> RaidTarget::open() {
  co_await analyse_superblocks();
  // md_run(): what the personalities refuse.
  const unsigned level = params_.type->level;
  unsigned working = 0;
  for (const auto& d : devs_) working += d->usable();
  if (level == 10 && !has_metadata_) {
    // Without a superblock md never learns the layout (raid10: "unsupported raid10 layout: 0x 0").
    spdlog::error("raid: md/raid10: unsupported raid10 layout without metadata devices");
    throw TargetError("Failed to run raid array");
  }
  if ((level == 0 && working < devs_.size()) || working == 0) {
    spdlog::error("raid: too few working devices ({} of {})", working, devs_.size());
    throw TargetError("Failed to run raid array");
  }
  if (parity_) co_await run_parity_checks();
  if (bitmap_ == nullptr && has_metadata_ && level != 0) co_await load_bitmap();
  if (region_sectors_ == 0) region_sectors_ = params_.region_size;
}

// raid5_run()'s refusals, and the stripe cache dm-raid sets after it
// (rs_set_raid456_stripe_cache(): at least one chunk's stripes, and md's
// raid5_set_cache_size() range). dmnbd keeps no stripe cache of its own;
// the value is kept for the table line.
Task<void> RaidTarget::run_parity_checks() {
  const unsigned disks = params_.disks();
  if (params_.type->level == 6 && disks < 4) {
    spdlog::error("raid: md/raid:mdX: not enough configured devices ({}, minimum 4)", disks);
    throw TargetError("Failed to run raid array");
  }
  // md's degraded count: legs missing, failed, or not yet rebuilt.
  unsigned in_sync = 0;
  for (const auto& d : devs_) in_sync += d->usable() && d->in_sync;
  if (in_sync + parity_->parity_disks() < disks) {
    spdlog::error("raid: md/raid:mdX: not enough operational devices ({}/{} failed)",
                  disks - in_sync, disks);
    throw TargetError("Failed to run raid array");
  }
  if (degraded() && recovery_cp_ != format::kMaxSector) {
    spdlog::error("raid: md/raid:mdX: cannot start dirty degraded array.");
    throw TargetError("Failed to run raid array");
  }
  const uint32_t min_stripes = params_.chunk / 2;
  if (params_.stripe_cache < min_stripes) {
    spdlog::info("raid: Adjusting requested {} stripe cache entries to {} to suit stripe size",
                 params_.stripe_cache, min_stripes);
    params_.stripe_cache = min_stripes;
  }
  if (params_.stripe_cache <= 16 || params_.stripe_cache > 32768)
    throw TargetError("Failed to set raid4/5/6 stripe cache size");
  co_return;
}

// analyse_superblocks(), super_load(), super_init_validation(), super_validate().
Task<void> RaidTarget::analyse_superblocks() {
  if (!has_metadata_) {
    // No superblock, no bitmap: the legs are taken as they are, in sync.
    recovery_cp_ = format::kMaxSector;
    co_return;
  }
  std::optional<unsigned> freshest;
  for (unsigned i = 0; i < devs_.size(); ++i) {
    RaidDevice& d = *devs_[i];
    if (!d.meta || !d.data) continue;
    if (params_.has(kSync)) {
      // "sync": the set is initialised again as though it were new.
      d.first_use = true;
      continue;
    }
    std::vector<std::byte> block(format::kLogicalBlock);
    if (co_await read_sectors(*d.meta, 0, block)) {
      spdlog::error("raid: Failed to read superblock of device at position {}", i);
      d.faulty = true;
      continue;
    }
    d.sb = format::decode_superblock(block);
    if (d.sb.magic != format::kSuperblockMagic || params_.rebuild[i]) {
      d.first_use = true;
      if (!freshest) freshest = i;  // any superblock is better than none
      continue;
    }
    if (!freshest || devs_[*freshest]->first_use || d.sb.events > devs_[*freshest]->sb.events)
      freshest = i;
  }
  unsigned new_devs = 0;
  for (const auto& d : devs_) new_devs += d->data && d->first_use;
  if (new_devs == devs_.size()) {
    // Superblocks created for a new raid set: resync unless nosync.
    new_array_ = true;
    recovery_cp_ = params_.has(kNosync) || params_.type->level == 0 ? format::kMaxSector : 0;
    events_ = 0;
    co_return;
  }
  const char* invalid = "Unable to assemble array: Invalid superblocks";
  if (!freshest) {
    spdlog::error("raid: no superblock could be read");
    throw TargetError(invalid);
  }
  if (devs_[*freshest]->first_use) {
    // Only new superblocks, but not on every device: the others were never
    // part of a set that could be assembled.
    spdlog::error(
        "raid: New device injected into existing raid set without 'delta_disks' or "
        "'rebuild' parameter specified");
    throw TargetError(invalid);
  }
  validate_freshest(devs_[*freshest]->sb);
  validate_redundancy();
  for (unsigned i = 0; i < devs_.size(); ++i) {
    RaidDevice& d = *devs_[i];
    if (!d.meta || !d.data || d.first_use) continue;
    if (!known_compat_features(d.sb))
      throw TargetError("Unable to assemble array: Unknown flag(s) in compatible feature flags");
    if (d.sb.incompat_features)
      throw TargetError("Unable to assemble array: No incompatible feature flags supported yet");
    d.recovery_offset = d.sb.disk_recovery_offset;
    d.in_sync = d.sb.disk_recovery_offset == format::kMaxSector;
    d.data_offset = d.sb.data_offset;
  }
  // Devices the freshest superblock names as failed come back for a
  // recovery of what they missed (the bitmap's dirty regions).
  const format::Superblock& fresh = devs_[*freshest]->sb;
  for (unsigned i = 0; i < devs_.size(); ++i) {
    RaidDevice& d = *devs_[i];
    if (!d.meta || !d.data || d.first_use || d.faulty) continue;
    if (fresh.failed(d.sb.array_position)) {
      d.in_sync = false;
      d.recovery_offset = 0;
      d.partial = true;
    }
  }
  for (auto& d : devs_)
    if (d->first_use) d->data_offset = fresh.data_offset;
}

void RaidTarget::validate_freshest(const format::Superblock& sb) {
  const char* invalid = "Unable to assemble array: Invalid superblocks";
  events_ = sb.events ? sb.events : 1;
  if (!known_compat_features(sb))
    throw TargetError("Unable to assemble array: Unknown flag(s) in compatible feature flags");
  if (sb.incompat_features)
    throw TargetError("Unable to assemble array: No incompatible feature flags supported yet");
  if (sb.level != params_.type->level) {
    spdlog::error("raid: the superblocks hold a level {} set; the table asks for {}", sb.level,
                  params_.type->name);
    throw TargetError("takeover not possible");
  }
  if ((sb.flags & format::kFlagReshapeActive) || sb.layout != layout_ ||
      sb.stripe_sectors != params_.chunk || sb.num_devices != devs_.size() || params_.delta_disks) {
    spdlog::error(
        "raid: superblocks: layout 0x{:x}, chunk {}, {} devices; table: layout 0x{:x}, "
        "chunk {}, {} devices (reshaping is not supported)",
        sb.layout, sb.stripe_sectors, sb.num_devices, layout_, params_.chunk, devs_.size());
    throw TargetError("Reshape not supported");
  }
  if (sb.sectors != dev_sectors_ || sb.array_sectors != array_sectors_) {
    spdlog::error("raid: superblocks: {} sectors per device, {} in the array; table: {} and {}",
                  sb.sectors, sb.array_sectors, dev_sectors_, array_sectors_);
    throw TargetError("Resizing a raid set is not supported");
  }
  if (!params_.has(kNosync)) recovery_cp_ = sb.array_resync_offset;

  unsigned new_devs = 0, rebuilds = 0, rebuild_and_new = 0;
  for (unsigned i = 0; i < devs_.size(); ++i) {
    const RaidDevice& d = *devs_[i];
    if (!d.data) continue;
    new_devs += d.first_use;
    if (params_.rebuild[i]) {
      spdlog::info("raid: Device {} specified for rebuild; clearing superblock", i);
      ++rebuilds;
      rebuild_and_new += d.first_use;
    }
  }
  if (!rebuilds) {
    if (new_devs) {
      spdlog::error(
          "raid: New device injected into existing raid set without 'delta_disks' or "
          "'rebuild' parameter specified");
      throw TargetError(invalid);
    }
  } else if (new_devs && new_devs != rebuilds) {
    spdlog::error(
        "raid: {} 'rebuild' devices cannot be injected into a raid set with {} other "
        "first-time devices",
        rebuilds, new_devs);
    throw TargetError(invalid);
  } else if (recovery_cp_ < dev_sectors_) {
    spdlog::error("raid: 'rebuild' specified while raid set is not in-sync (recovery_cp={})",
                  recovery_cp_.load());
    throw TargetError(invalid);
  }
  if (rebuilds) recovery_cp_ = format::kMaxSector;  // rs_setup_recovery(rs, MaxSector)

  // Device positions: raid1 may reorder its legs, raid10 and raid0 may not.
  for (unsigned i = 0; i < devs_.size(); ++i) {
    const RaidDevice& d = *devs_[i];
    if (!d.meta || !d.data || d.first_use || d.faulty) continue;
    if (d.sb.array_position != i) {
      if (params_.type->level != 1) throw TargetError("Cannot change device positions in raid set");
      spdlog::info("raid: raid device #{} now at position #{}", d.sb.array_position, i);
    }
  }
}

// validate_raid_redundancy(): devices without a superblock (or being
// rebuilt) are the ones that cannot help; each mirror group keeps one.
void RaidTarget::validate_redundancy() const {
  const auto lacking = [&](unsigned i) {
    const RaidDevice& d = *devs_[i];
    return !d.first_use && (!d.in_sync || !d.meta);
  };
  unsigned count = 0;
  for (unsigned i = 0; i < devs_.size(); ++i) count += lacking(i);
  const char* too_many = "Insufficient redundancy to activate array";
  if (params_.type->level == 1 && count >= devs_.size()) throw TargetError(too_many);
  if (parity_ && count > parity_->parity_disks()) throw TargetError(too_many);
  if (params_.type->level != 10) return;
  const Raid10Layout l = Raid10Layout::from_md(layout_);
  const unsigned copies = std::max(l.near, l.far);
  if (count < copies) return;
  const unsigned disks = unsigned(devs_.size());
  unsigned per_group = 0;
  if (l.near > 1 && !l.offset) {
    for (unsigned i = 0; i < disks; ++i) {
      if (i % copies == 0) per_group = 0;
      if (lacking(i) && ++per_group >= copies) throw TargetError(too_many);
    }
    return;
  }
  const unsigned group_size = disks / copies;
  const unsigned last_group_start = (disks / group_size - 1) * group_size;
  for (unsigned i = 0; i < disks; ++i) {
    if (i % copies == 0 && !(i > last_group_start)) per_group = 0;
    if (lacking(i) && ++per_group >= copies) throw TargetError(too_many);
  }
}

// md_bitmap_create() and md_bitmap_load(): the bitmap of the first working
// device in sync, or a new one.
Task<void> RaidTarget::load_bitmap() {
  std::vector<std::shared_ptr<BlockDevice>> metas;
  for (const auto& d : devs_) metas.push_back(d->data ? d->meta : nullptr);
  WriteIntentBitmap::Options options;
  options.sync_size = resync_max_sectors();
  options.region_sectors = params_.region_size;
  options.daemon_sleep_seconds = std::max<uint32_t>(1, uint32_t(daemon_period_.count() / 1000));
  options.write_behind = std::min<uint32_t>(params_.max_write_behind, 0x3fff / 2);
  bitmap_ = std::make_unique<WriteIntentBitmap>(std::move(metas), options);
  for (unsigned i = 0; i < devs_.size(); ++i)
    if (devs_[i]->faulty) bitmap_->set_device_active(i, false);
  if (new_array_) {
    bitmap_->create(recovery_cp_ == format::kMaxSector, events_);
    if (recovery_cp_ != format::kMaxSector) bitmap_->set_all_needed(0);
  } else {
    std::optional<unsigned> from;
    for (unsigned i = 0; i < devs_.size() && !from; ++i)
      if (devs_[i]->meta && devs_[i]->usable() && devs_[i]->in_sync) from = i;
    if (!from) throw TargetError("Failed to run raid array");
    const WriteIntentBitmap::Loaded loaded = co_await bitmap_->load(*from, events_);
    if (!loaded.ok) {
      spdlog::error("raid: md: bitmap: {}", loaded.error);
      throw TargetError("Failed to run raid array");
    }
    if (!params_.has(kDaemonSleep)) daemon_period_ = std::chrono::seconds(loaded.daemon_sleep);
    if (params_.has(kRegionSize) && (loaded.chunksize >> kSectorShift) != params_.region_size)
      bitmap_->resize(params_.region_size);
    // Regions written but not known clean: after a crash they are resynced
    // (the kernel only clears them again), for a returning leg recovered.
    if (loaded.stale || bitmap_->dirty_count()) {
      bitmap_->set_needed_where_dirty(0);
      if (!degraded() && !needs_recovery() && recovery_cp_ == format::kMaxSector) recovery_cp_ = 0;
    }
  }
  region_sectors_ = bitmap_->region_sectors();
  bitmap_->set_legs_flush([this]() -> Task<Status> { co_return co_await legs_flush(); });
  bitmap_->set_on_device_error([this](unsigned dev) { mark_faulty(dev); });
}

uint64_t RaidTarget::resync_max_sectors() const {
  if (parity_) return parity_->used_device_sectors();  // raid5_run()'s rounding
  return params_.type->level == 10 ? geometry_.array_sectors() : dev_sectors_;
}

bool RaidTarget::degraded() const {
  for (const auto& d : devs_)
    if (!d->usable() || !d->in_sync) return true;
  return false;
}

// super_sync() for one device.
format::Superblock RaidTarget::superblock_for(unsigned i) const {
  const RaidDevice& d = *devs_[i];
  format::Superblock sb;
  sb.magic = format::kSuperblockMagic;
  sb.compat_features = format::kFeatureV190;
  sb.num_devices = unsigned(devs_.size());
  sb.array_position = i;
  sb.events = events_;
  for (unsigned k = 0; k < devs_.size(); ++k)
    if (!devs_[k]->present() || devs_[k]->faulty) sb.set_failed(k);
  sb.disk_recovery_offset = d.in_sync ? format::kMaxSector : d.recovery_offset.load();
  sb.array_resync_offset = recovery_cp_;
  sb.level = params_.type->level;
  sb.layout = layout_;
  sb.stripe_sectors = params_.chunk;
  sb.new_level = sb.level;
  sb.new_layout = sb.layout;
  sb.new_stripe_sectors = sb.stripe_sectors;
  sb.array_sectors = array_sectors_;
  sb.data_offset = d.data_offset;
  sb.new_data_offset = params_.has(kDataOffset) ? params_.data_offset : d.data_offset;
  sb.sectors = dev_sectors_;
  return sb;
}

Task<Status> RaidTarget::commit_superblocks() {
  if (!has_metadata_) co_return ok();
  co_return co_await sb_commits_.wait(sb_commits_.next());
}

// md_update_sb(): events + 1, the bitmap header first (its events must not
// fall behind the superblocks'), then the superblock of every working device.
Task<Status> RaidTarget::write_superblocks() {
  std::vector<std::pair<unsigned, std::vector<std::byte>>> blocks;
  uint64_t events = 0;
  {
    std::lock_guard lk(mutex_);
    events = ++events_;
    for (unsigned i = 0; i < devs_.size(); ++i) {
      if (!devs_[i]->meta || !devs_[i]->usable()) continue;
      std::vector<std::byte> block(format::kLogicalBlock);
      format::encode_superblock(superblock_for(i), block);
      blocks.emplace_back(i, std::move(block));
    }
  }
  if (bitmap_) {
    bitmap_->set_events(events, !degraded());
    Status st = co_await bitmap_->flush();
    if (st) co_return st;
  }
  unsigned written = 0;
  for (auto& [i, block] : blocks) {
    Status st = co_await write_sectors(*devs_[i]->meta, 0, block, kBioFua);
    if (!st) {
      ++written;
      continue;
    }
    spdlog::warn("raid: writing the superblock of device {} failed: {}", i, st.message());
    mark_faulty(i);
  }
  co_return written || blocks.empty() ? ok() : errno_status(EIO);
}

void RaidTarget::mark_faulty(unsigned i) {
  RaidDevice& d = *devs_[i];
  {
    std::lock_guard lk(mutex_);
    if (d.faulty.exchange(true)) return;
    d.failure_ticket = has_metadata_ ? sb_commits_.next() : 0;
  }
  spdlog::error("raid: Disk failure on {}, disabling device", d.data_name);
  if (bitmap_) bitmap_->set_device_active(i, false);
  raise_event_();
}

// md_error(), and the wait md makes a failed write do for the superblocks.
Task<void> RaidTarget::fail_device(unsigned i) {
  mark_faulty(i);
  uint64_t ticket = 0;
  {
    std::lock_guard lk(mutex_);
    ticket = devs_[i]->failure_ticket;
  }
  Status st = co_await sb_commits_.wait(ticket);
  if (st) spdlog::error("raid: recording the failure of device {} failed: {}", i, st.message());
}

// ---- Suspend and resume (raid_preresume(), raid_resume(), raid_postsuspend()).

Task<Status> RaidTarget::preresume() {
  if (preresumed_.exchange(true)) co_return ok();
  // New superblocks (a new set, rebuilt or returning devices) reach the
  // disks before any I/O.
  Status st = co_await commit_superblocks();
  if (st) spdlog::error("raid: writing the superblocks failed: {}", st.message());
  co_return ok();
}

Task<void> RaidTarget::resume() {
  if (resumed_.exchange(true)) co_await attempt_restore_of_faulty_devices();
  auto executor = co_await asio::this_coro::executor;
  {
    std::lock_guard lk(background_mutex_);
    executor_ = executor;
  }
  if (bitmap_) bitmap_daemon_.start(executor);
  writes_stopped_ = false;
  start_needed_action();
  bitmap_daemon_.schedule();
}

// A resume after a suspend looks whether failed devices are back: one whose
// superblock reads again is re-added, to recover what it missed.
Task<void> RaidTarget::attempt_restore_of_faulty_devices() {
  bool revived = false;
  for (unsigned i = 0; i < devs_.size(); ++i) {
    RaidDevice& d = *devs_[i];
    if (!d.faulty || !d.meta || !d.data) continue;
    std::vector<std::byte> block(format::kLogicalBlock);
    if (co_await read_sectors(*d.meta, 0, block)) continue;
    spdlog::info("raid: Faulty {} device #{} has readable super block.  Attempting to revive it.",
                 params_.type->name, i);
    {
      std::lock_guard lk(mutex_);
      d.in_sync = false;
      d.recovery_offset = 0;
      d.partial = bitmap_ != nullptr;
      d.faulty = false;
    }
    if (bitmap_) bitmap_->set_device_active(i, true);
    revived = true;
  }
  if (revived) {
    Status st = co_await commit_superblocks();
    if (st) spdlog::error("raid: writing the superblocks failed: {}", st.message());
  }
}

Task<void> RaidTarget::presuspend() {
  co_await stop_action();
}

Task<void> RaidTarget::postsuspend() {
  co_await stop_writes();
}

// md_stop_writes(), at a suspend and when the table goes: the sync thread is
// stopped (where it got to is kept), every idle region's bit is cleared, and
// the superblocks record it all. Once until the next resume.
Task<void> RaidTarget::stop_writes() {
  co_await stop_action();
  co_await bitmap_daemon_.stop();
  if (std::exchange(writes_stopped_, true) || !preresumed_) co_return;
  if (bitmap_) {
    bitmap_->clear_idle(std::chrono::steady_clock::duration::zero(), degraded());
    Status st = co_await bitmap_->flush();
    if (st) spdlog::warn("raid: bitmap flush at suspend failed: {}", st.message());
  }
  Status st = co_await commit_superblocks();
  if (st) spdlog::warn("raid: superblock update at suspend failed: {}", st.message());
}

Task<void> RaidTarget::teardown() {
  co_await stop_writes();
  co_await park_until_woken([this](std::function<void()> wake) {
    std::unique_lock lk(background_mutex_);
    if (finishing_) {
      finished_waiters_.push_back(std::move(wake));
      return;
    }
    lk.unlock();
    wake();
  });
  co_await kcopyd_.drain();
}

// ---- The table and status lines, messages.

std::string RaidTarget::table() const {
  return params_.table(layout_, region_sectors_);
}

// raid_status(), STATUSTYPE_INFO, with rs_get_progress() and __raid_dev_status().
std::string RaidTarget::status() const {
  const RaidType* type = raid_type_of(params_.type->level, layout_);
  // md's dev_sectors before the resume: raid5_run() has rounded it already.
  const uint64_t total = preresumed_ || parity_ ? resync_max_sectors() : dev_sectors_;
  const SyncAction action = action_.load();
  // The kernel keeps a set frozen from its constructor to its first resume.
  const bool frozen = frozen_.load() || !resumed_.load();
  bool all_in_sync = false, resyncing = false;
  uint64_t progress = 0;
  if (params_.type->level == 0) {
    all_in_sync = true;
    progress = total;
  } else {
    progress = action == SyncAction::idle ? recovery_cp_.load() : position_.load();
    const bool running = !frozen && action != SyncAction::idle;
    if (running && (action == SyncAction::resync))
      resyncing = true;
    else if (running && (action == SyncAction::check || action == SyncAction::repair))
      all_in_sync = true;
    else if (!running || action != SyncAction::recover)
      all_in_sync = std::all_of(devs_.begin(), devs_.end(),
                                [](const auto& d) { return !d->present() || d->in_sync; });
  }
  std::string chars;
  for (const auto& d : devs_) {
    if (!d->present())
      chars += '-';
    else if (d->faulty)
      chars += 'D';
    else if (resyncing || (!all_in_sync && !d->in_sync))
      chars += 'a';
    else
      chars += 'A';
  }
  static const char* const kNames[] = {"idle", "resync", "recover", "check", "repair"};
  const char* state = frozen ? "frozen" : kNames[int(action)];
  std::string last;
  {
    std::lock_guard lk(mutex_);
    last = last_action_;
  }
  const uint64_t mismatches = last == "check" ? mismatches_.load() : 0;
  return std::string(type ? type->name : params_.type->name) + " " + std::to_string(devs_.size()) +
         " " + chars + " " + std::to_string(std::min(progress, total)) + "/" +
         std::to_string(total) + " " + state + " " + std::to_string(mismatches) + " " +
         std::to_string(devs_[0]->data_offset) + " -";
}

// raid_message()
Task<std::string> RaidTarget::message(std::vector<std::string> words) {
  if (params_.type->level == 0 || words.size() != 1) throw TargetError("Invalid argument");
  const std::string& word = words[0];
  const bool idle = same_word(word, "idle"), frozen = same_word(word, "frozen");
  std::optional<SyncAction> requested;
  if (!idle && !frozen) {
    if (same_word(word, "check"))
      requested = SyncAction::check;
    else if (same_word(word, "repair"))
      requested = SyncAction::repair;
    else if (!same_word(word, "resync") && !same_word(word, "recover"))
      throw TargetError("Invalid argument");
  }
  frozen_ = frozen;
  if (!idle && !frozen && action_ != SyncAction::idle) throw TargetError("Device or resource busy");
  if (idle || frozen) co_await stop_action();
  if (!frozen) start_needed_action(requested);
  co_return std::string();
}

// raid4/5/6 take a row at a time (the kernel's max_io_len is a chunk, and
// md's stripe cache gathers a row's chunks again: here they stay together).
uint64_t RaidTarget::max_io_len() const {
  if (parity_) return parity_->row_sectors();
  return params_.chunk ? params_.chunk : params_.region_size;
}

// The data devices as raid_iterate_devices() gives them, and the metadata
// devices as far as the superblock and bitmap reach.
std::vector<DeviceArea> RaidTarget::device_areas() const {
  std::vector<DeviceArea> areas;
  const uint64_t meta_sectors =
      (format::kBitmapOffset +
       format::bitmap_image_bytes((resync_max_sectors() + params_.region_size - 1) /
                                  std::max<uint32_t>(params_.region_size, 1))) >>
      kSectorShift;
  for (const auto& d : devs_) {
    if (d->data) areas.push_back({d->data, 0, dev_sectors_});
    if (d->meta && d->data) areas.push_back({d->meta, 0, params_.type->level ? meta_sectors : 1});
  }
  return areas;
}

}  // namespace dmnbd::raid

namespace dmnbd {
using raid::RaidTarget;
DMNBD_REGISTER_TARGET("raid", RaidTarget, 1, 15, 1);
}  // namespace dmnbd
