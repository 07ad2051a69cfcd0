#include "pool.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/steady_timer.hpp>
#include <cstring>

#include "dmnbd/dm_io.hpp"

namespace dmnbd::thin {
namespace {

// __set_metadata_reserve(): min(4096, blocks / 10).
uint64_t reserve_of(uint64_t metadata_blocks) {
  return std::min<uint64_t>(4096, metadata_blocks / 10);
}

// The kernel's no_space_timeout module parameter (seconds; 0 = forever).
constexpr auto kNoSpaceTimeout = std::chrono::seconds(60);
constexpr auto kCommitPeriod = std::chrono::milliseconds(1000);  // COMMIT_PERIOD
constexpr auto kSpacePoll = std::chrono::milliseconds(100);

std::mutex registry_mutex;
std::vector<std::weak_ptr<Pool>> registry;  // few pools: scans are fine

const char* mode_name(PoolMode m) {
  switch (m) {
    case PoolMode::write:
      return "write";
    case PoolMode::out_of_data_space:
      return "out-of-data-space";
    case PoolMode::out_of_metadata_space:
    case PoolMode::read_only:
      return "read-only";
    case PoolMode::fail:
      return "fail";
  }
  return "?";
}

// A cell per (device, virtual block): device ids have 24 bits.
uint64_t cell_key(uint32_t id, uint64_t vblock) {
  return (uint64_t{id} << 40) ^ vblock;
}

Task<void> sleep_for(std::chrono::milliseconds ms) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  timer.expires_after(ms);
  co_await timer.async_wait(asio::use_awaitable);
}

}  // namespace

Pool::Pool(const BlockDevice* mapped_device, std::shared_ptr<BlockDevice> metadata,
           std::shared_ptr<BlockDevice> data, uint32_t block_sectors)
    : mapped_device_(mapped_device),
      metadata_dev_(std::move(metadata)),
      data_(std::move(data)),
      block_sectors_(block_sectors),
      commits_([this]() -> Task<Status> { co_return co_await commit(); }) {}

Pool::~Pool() = default;

std::shared_ptr<Pool> Pool::find_or_create(const BlockDevice* mapped_device,
                                           std::shared_ptr<BlockDevice> metadata,
                                           std::shared_ptr<BlockDevice> data,
                                           uint32_t block_sectors, bool& created) {
  std::lock_guard lk(registry_mutex);
  std::erase_if(registry, [](const std::weak_ptr<Pool>& p) { return p.expired(); });
  for (const auto& weak : registry) {
    auto pool = weak.lock();
    if (!pool || pool->metadata_dev_->identity() != metadata->identity()) continue;
    if (pool->mapped_device_ != mapped_device)
      throw TargetError("metadata device already in use by a pool");
    if (pool->data_->identity() != data->identity())
      throw TargetError("data device already in use by a pool");
    created = false;
    return pool;
  }
  for (const auto& weak : registry) {
    auto pool = weak.lock();
    if (!pool || !mapped_device || pool->mapped_device_ != mapped_device) continue;
    throw TargetError("different pool cannot replace a pool");
  }
  std::shared_ptr<Pool> pool(
      new Pool(mapped_device, std::move(metadata), std::move(data), block_sectors));
  registry.push_back(pool);
  created = true;
  return pool;
}

std::shared_ptr<Pool> Pool::of_device(const BlockDevice* mapped_device) {
  std::lock_guard lk(registry_mutex);
  for (const auto& weak : registry)
    if (auto pool = weak.lock(); pool && mapped_device && pool->mapped_device_ == mapped_device)
      return pool;
  return nullptr;
}

bool Pool::metadata_open() const {
  return pmd_ != nullptr;
}

Task<void> Pool::open_metadata(bool read_only) {
  auto guard = co_await lock_metadata();
  if (pmd_) co_return;
  std::string error;
  Status st = co_await PoolMetadata::open(metadata_dev_, block_sectors_, read_only, pmd_, error);
  if (st) {
    spdlog::error("thin metadata: {}", error);
    throw TargetError("Error creating metadata object");
  }
  // metadata_pre_commit_callback(): the data a commit's mappings point at is
  // durable before they are.
  pmd_->set_pre_commit([this]() -> Task<Status> { co_return co_await flush_device(*data_); });
}

void Pool::hold() {
  std::lock_guard lk(state_mutex_);
  ++holders_;
}

Task<void> Pool::release() {
  {
    std::lock_guard lk(state_mutex_);
    if (--holders_ > 0) co_return;
  }
  if (waker_) co_await waker_->stop();
  co_await kcopyd_.drain();
  // dm_pool_metadata_close(): the last commit.
  if (pmd_ && mode() < PoolMode::out_of_metadata_space) (void)co_await commit();
}

std::string Pool::name() const {
  return mapped_device_ ? mapped_device_->name() : "pool";
}

// ---- modes ----

void Pool::set_mode(PoolMode new_mode) {
  const PoolMode old_mode = mode_.load();
  if (new_mode == PoolMode::write && pmd_ && pmd_->needs_check()) {
    spdlog::error("thin: {}: unable to switch pool to write mode until repaired.", name());
    new_mode = old_mode != new_mode ? old_mode : PoolMode::read_only;
  }
  if (old_mode == PoolMode::fail) new_mode = old_mode;
  bool error_io = false;
  {
    std::lock_guard lk(state_mutex_);
    if (new_mode == PoolMode::write) pf_.error_if_no_space = requested_.error_if_no_space;
    if (new_mode == PoolMode::out_of_data_space && old_mode != new_mode)
      out_of_space_since_ = std::chrono::steady_clock::now();
    pf_.mode = new_mode;
    error_io = pf_.error_if_no_space;
  }
  mode_ = new_mode;
  if (old_mode == new_mode) return;
  const bool oods = new_mode == PoolMode::out_of_data_space;
  spdlog::info("thin: {}: switching pool to {}{} mode", name(), mode_name(new_mode),
               !oods      ? ""
               : error_io ? " (error IO)"
                          : " (queue IO)");
  fire_event();
  if (new_mode == PoolMode::write) wake_space_waiters();
}

// metadata_operation_failed() and abort_transaction(): back to the last
// commit, needs_check set, read-only; fail mode if even that fails.
Task<void> Pool::metadata_failed(const char* op, Status st) {
  const std::string pool = name();
  spdlog::error("thin: {}: metadata operation '{}' failed: error = {}", pool, op, -st.value());
  spdlog::error("thin: {}: aborting current metadata transaction", pool);
  pmd_.reset();
  changed_.clear();
  std::string error;
  Status reopen = co_await PoolMetadata::open(metadata_dev_, block_sectors_, false, pmd_, error);
  if (reopen) {
    spdlog::error("thin: {}: failed to abort metadata transaction", pool);
    set_mode(PoolMode::fail);
    co_return;
  }
  pmd_->set_pre_commit([this]() -> Task<Status> { co_return co_await flush_device(*data_); });
  if (co_await pmd_->set_needs_check()) {
    spdlog::error("thin: {}: failed to set 'needs_check' flag in metadata", pool);
    set_mode(PoolMode::fail);
    co_return;
  }
  set_mode(PoolMode::read_only);
}

// __set_metadata_reserve(): blocks kept back for the commit that turns a
// full pool read-only (under meta_lock_).
uint64_t Pool::metadata_reserve() const {
  return reserve_of(pmd_->usage().metadata_total);
}

// Free metadata blocks below which no more data is provisioned: the
// kernel's reserve, and what a commit of ours takes besides (it writes the
// space maps' changed bitmaps at the commit, where the kernel moves them as
// they change), with room for the mapping inserts of the writes in flight.
// A pool turns read-only that much earlier than the kernel's (under meta_lock_).
uint64_t Pool::metadata_headroom() const {
  constexpr uint64_t kInsertsInFlight = 32;
  return metadata_reserve() + pmd_->commit_blocks() + kInsertsInFlight;
}

uint64_t Pool::metadata_threshold() const {
  return std::min<uint64_t>(1024, std::min(metadata_dev_->sectors(),
                                           space_map::kMaxMetadataBlocks * kMetadataBlockSectors) /
                                      kMetadataBlockSectors / 4);
}

void Pool::check_low_water(uint64_t free_blocks) {
  bool fire = false;
  {
    std::lock_guard lk(state_mutex_);
    if (free_blocks <= low_water_blocks_ && !low_water_triggered_)
      fire = low_water_triggered_ = true;
  }
  if (!fire) return;
  spdlog::warn("thin: {}: reached low water mark for data device: sending event.", name());
  fire_event();
}

// ---- commits ----

Task<Status> Pool::commit_locked() {
  if (mode() >= PoolMode::out_of_metadata_space) co_return errno_status(EINVAL);
  Status st = co_await pmd_->commit();
  if (st) {
    co_await metadata_failed("dm_pool_commit_metadata", st);
    co_return st;
  }
  changed_.clear();
  // check_for_metadata_space() and check_for_data_space().
  const auto usage = pmd_->usage();
  if (usage.metadata_free <= metadata_headroom() && mode() < PoolMode::out_of_metadata_space) {
    spdlog::error("thin: No free metadata blocks");
    set_mode(PoolMode::out_of_metadata_space);
  }
  if (mode() == PoolMode::out_of_data_space && usage.data_free > 0) set_mode(PoolMode::write);
  co_return ok();
}

Task<Status> Pool::commit() {
  auto guard = co_await lock_metadata();
  if (!pmd_) co_return errno_status(EIO);
  co_return co_await commit_locked();
}

// A flush or FUA write to a device with changes since the last commit waits
// for a commit that holds them (many flushes share one).
Task<Status> Pool::commit_for(uint32_t id) {
  uint64_t ticket = 0;
  {
    auto guard = co_await meta_lock_.lock();  // reads only: status unchanged
    if (!changed_.count(id)) co_return ok();
    ticket = commits_.next();
  }
  co_return co_await commits_.wait(ticket);
}

// ---- the pool target's hooks ----

void Pool::bind(const PoolFeatures& requested, uint64_t low_water_blocks,
                std::function<void()> raise_event) {
  {
    std::lock_guard lk(state_mutex_);
    requested_ = requested;
    const PoolMode live = pf_.mode;
    pf_ = requested;
    pf_.mode = live;
    low_water_blocks_ = low_water_blocks;
    raise_event_ = std::move(raise_event);
  }
  set_mode(requested.mode);
}

Task<Status> Pool::preresume(uint64_t data_blocks, std::string& error) {
  auto guard = co_await lock_metadata();
  if (!pmd_) co_return errno_status(EIO);
  const std::string pool = name();
  bool grown = false;
  const uint64_t sb_data = pmd_->data_blocks();
  if (data_blocks < sb_data) {
    error = fmt::format("{}: pool target ({} blocks) too small: expected {}", pool, data_blocks,
                        sb_data);
    co_return errno_status(EINVAL);
  }
  if (data_blocks > sb_data) {
    if (pmd_->needs_check()) {
      spdlog::error("thin: {}: unable to grow the data device until repaired.", pool);
    } else {
      if (sb_data)
        spdlog::info("thin: {}: growing the data device from {} to {} blocks", pool, sb_data,
                     data_blocks);
      Status st = pmd_->resize_data(data_blocks);
      if (st) co_return st;
      grown = true;
    }
  }
  const uint64_t meta_blocks =
      std::min(metadata_dev_->sectors() / kMetadataBlockSectors, space_map::kMaxMetadataBlocks);
  const uint64_t sb_meta = pmd_->metadata_blocks();
  if (meta_blocks < sb_meta) {
    error = fmt::format("{}: metadata device ({} blocks) too small: expected {}", pool, meta_blocks,
                        sb_meta);
    co_return errno_status(EINVAL);
  }
  if (meta_blocks > sb_meta) {
    if (pmd_->needs_check()) {
      spdlog::error("thin: {}: unable to grow the metadata device until repaired.", pool);
    } else {
      spdlog::info("thin: {}: growing the metadata device from {} to {} blocks", pool, sb_meta,
                   meta_blocks);
      if (mode() == PoolMode::out_of_metadata_space) set_mode(PoolMode::write);
      Status st = pmd_->resize_metadata(meta_blocks);
      if (st) co_return st;
      grown = true;
    }
  }
  if (grown) (void)co_await commit_locked();
  co_return ok();
}

Task<void> Pool::resume() {
  {
    std::lock_guard lk(state_mutex_);
    low_water_triggered_ = false;
  }
  suspended_ = false;
  wake_space_waiters();
  if (!waker_) {
    BackgroundJob::Options options;
    options.pause_between_steps = kCommitPeriod;
    // do_waker(): a commit at least every second while anything changed.
    BackgroundJob::Step step = [this](uint64_t, const CancelToken&) -> Task<JobStep> {
      bool due = false;
      {
        auto guard = co_await meta_lock_.lock();  // reads only: status unchanged
        due = pmd_ && pmd_->changed() && mode() < PoolMode::out_of_metadata_space;
      }
      if (due) (void)co_await commits_.wait(commits_.next());
      co_return JobStep{ok(), 1};
    };
    waker_ = std::make_unique<BackgroundJob>(std::move(step), std::move(options));
    waker_->start(co_await asio::this_coro::executor);
  } else {
    waker_->resume();
  }
}

Task<void> Pool::postsuspend() {
  if (waker_) co_await waker_->pause();
  (void)co_await commit();
}

// ---- status and messages ----

Task<Pool::MetaGuard> Pool::lock_metadata() {
  auto guard = co_await meta_lock_.lock();
  co_return MetaGuard(this, std::move(guard));
}

// dm_table_event() of the pool's table, as bound at the last preresume.
void Pool::fire_event() {
  std::function<void()> raise;
  {
    std::lock_guard lk(state_mutex_);
    raise = raise_event_;
  }
  raise();
}

// sm-metadata's check_threshold(): one event when free metadata blocks
// fall to the threshold, again only after they rose above it.
void Pool::metadata_changed() {
  snapshot_status();
  if (!pmd_) return;
  const bool low = pmd_->usage().metadata_free <= metadata_threshold();
  if (low && !metadata_low_) {
    spdlog::warn("thin: {}: reached low water mark for metadata device: sending event.", name());
    fire_event();
  }
  metadata_low_ = low;
}

void Pool::snapshot_status() {
  std::lock_guard lk(shown_mutex_);
  if (!pmd_) {
    shown_.valid = false;
    return;
  }
  shown_ = {true, pmd_->transaction_id(), pmd_->usage(), pmd_->held_root(), pmd_->needs_check()};
  // Only the devices this section touched: I/O to one of many open thins
  // costs the same as to the only one.
  for (uint32_t id : shown_stale_) {
    auto h = highest_.find(id);
    if (h == highest_.end())
      shown_thins_.erase(id);
    else
      shown_thins_[id] = {pmd_->mapped_blocks(id), h->second};
  }
  shown_stale_.clear();
}

PoolFeatures Pool::features() const {
  std::lock_guard lk(state_mutex_);
  return pf_;
}

std::string Pool::status() const {
  if (mode() == PoolMode::fail) return "Fail";
  Shown s;
  {
    std::lock_guard lk(shown_mutex_);
    s = shown_;
  }
  if (!s.valid) return "Error";
  const auto& u = s.usage;
  const uint64_t reserve = reserve_of(u.metadata_total);
  const uint64_t meta_free = u.metadata_free > reserve ? u.metadata_free - reserve : 0;
  std::string out = fmt::format("{} {}/{} {}/{} ", s.transaction_id, u.metadata_total - meta_free,
                                u.metadata_total, u.data_total - u.data_free, u.data_total);
  out += s.held_root ? fmt::format("{} ", s.held_root) : "- ";
  const PoolMode m = mode();
  out += m == PoolMode::out_of_data_space ? "out_of_data_space "
         : m == PoolMode::write           ? "rw "
                                          : "ro ";
  const PoolFeatures f = features();
  out += !f.discard_enabled   ? "ignore_discard "
         : f.discard_passdown ? "discard_passdown "
                              : "no_discard_passdown ";
  out += f.error_if_no_space ? "error_if_no_space " : "queue_if_no_space ";
  out += s.needs_check ? "needs_check " : "- ";
  out += fmt::format("{} ", metadata_threshold());
  return out;
}

namespace {

// read_dev_id(): decimal (kstrtoull), at most MAX_DEV_ID.
bool read_dev_id(const std::string& arg, uint32_t& id, bool warn) {
  uint64_t v = 0;
  if (parse_u64(arg, v) && v <= kMaxDevId) {
    id = static_cast<uint32_t>(v);
    return true;
  }
  if (warn) spdlog::warn("thin: Message received with invalid device id: {}", arg);
  return false;
}

void check_arg_count(const std::vector<std::string>& words, size_t required) {
  if (words.size() == required) return;
  spdlog::warn("thin: Message received with {} arguments instead of {}.", words.size(), required);
  throw TargetErrno(EINVAL);
}

}  // namespace

Task<std::string> Pool::message(std::vector<std::string> words) {
  if (mode() >= PoolMode::out_of_metadata_space) {
    spdlog::error("thin: {}: unable to service pool target messages in READ_ONLY or FAIL mode",
                  name());
    throw TargetErrno(EOPNOTSUPP);
  }
  const std::string& verb = words.at(0);
  // The failure's words are logged as the kernel's DMWARN; the caller sees errno's.
  std::string failed;
  Status st;
  {
    auto guard = co_await lock_metadata();
    if (!pmd_) throw TargetErrno(EIO);
    uint32_t id = 0, origin = 0;
    if (same_word(verb, "create_thin")) {
      check_arg_count(words, 2);
      if (!read_dev_id(words[1], id, true)) throw TargetErrno(EINVAL);
      st = co_await pmd_->create_thin(id);
      if (st)
        failed =
            fmt::format("Creation of new thinly-provisioned device with id {} failed.", words[1]);
    } else if (same_word(verb, "create_snap")) {
      check_arg_count(words, 3);
      if (!read_dev_id(words[1], id, true) || !read_dev_id(words[2], origin, true))
        throw TargetErrno(EINVAL);
      st = co_await pmd_->create_snap(id, origin);
      if (st)
        failed =
            fmt::format("Creation of new snapshot {} of device {} failed.", words[1], words[2]);
    } else if (same_word(verb, "delete")) {
      check_arg_count(words, 2);
      if (!read_dev_id(words[1], id, true)) throw TargetErrno(EINVAL);
      if (open_thins_.count(id) && pmd_->device_exists(id))
        st = errno_status(EBUSY);
      else
        st = co_await pmd_->delete_device(id);
      if (st) failed = fmt::format("Deletion of thin device {} failed.", words[1]);
    } else if (same_word(verb, "set_transaction_id")) {
      check_arg_count(words, 3);
      uint64_t current = 0, next = 0;
      if (!parse_u64(words[1], current)) {
        spdlog::warn("thin: set_transaction_id message: Unrecognised id {}.", words[1]);
        throw TargetErrno(EINVAL);
      }
      if (!parse_u64(words[2], next)) {
        spdlog::warn("thin: set_transaction_id message: Unrecognised new id {}.", words[2]);
        throw TargetErrno(EINVAL);
      }
      st = pmd_->set_transaction_id(current, next);
      if (st) {
        spdlog::error("thin metadata: mismatched transaction id");
        failed = fmt::format("Failed to change transaction id from {} to {}.", words[1], words[2]);
      }
    } else if (same_word(verb, "reserve_metadata_snap")) {
      check_arg_count(words, 1);
      if (pmd_->held_root())
        spdlog::warn(
            "thin metadata: Pool metadata snapshot already exists: release this before taking "
            "another.");
      st = co_await pmd_->reserve_metadata_snap();
      if (st) failed = "reserve_metadata_snap message failed.";
    } else if (same_word(verb, "release_metadata_snap")) {
      check_arg_count(words, 1);
      if (!pmd_->held_root())
        spdlog::warn("thin metadata: No pool metadata snapshot found: nothing to release.");
      st = co_await pmd_->release_metadata_snap();
      if (st) failed = "release_metadata_snap message failed.";
    } else {
      spdlog::warn("thin: Unrecognised thin pool target message received: {}", verb);
      throw TargetErrno(EINVAL);
    }
    if (!st) (void)co_await commit_locked();
  }
  if (st) {
    spdlog::warn("thin: {}", failed);
    throw TargetErrno(st.value());
  }
  co_return std::string();
}

// ---- thin devices ----

Status Pool::open_thin(uint32_t id) {
  // No metadata lock: the set of devices changes only on this (the
  // control) thread, and the answer comes from memory.
  if (!pmd_ || !pmd_->device_exists(id)) return errno_status(ENODATA);
  ++open_thins_[id];
  return ok();
}

Task<void> Pool::load_thin(uint32_t id) {
  auto guard = co_await lock_metadata();
  std::optional<uint64_t> highest;
  if (pmd_ && !co_await pmd_->highest_mapped(id, highest)) highest_[id] = highest;
  shown_stale_.insert(id);
}

void Pool::close_thin(uint32_t id) {
  auto it = open_thins_.find(id);
  if (it != open_thins_.end() && --it->second == 0) open_thins_.erase(it);
}

Task<void> Pool::unload_thin(uint32_t id) {
  auto guard = co_await lock_metadata();
  if (open_thins_.count(id)) co_return;  // another line still has it
  highest_.erase(id);
  shown_stale_.insert(id);
}

void Pool::wake_space_waiters() {
  std::vector<std::function<void()>> waiters;
  {
    std::lock_guard lk(state_mutex_);
    waiters.swap(space_waiters_);
  }
  for (auto& w : waiters) w();
}

// A write that needs a new block while the data device is full: an error at
// once with error_if_no_space, else it waits for space (a grown pool
// resumed) for up to no_space_timeout, then fails as the kernel's timer
// makes it (and the pool errors from then on, until it has space again).
Task<Status> Pool::wait_for_space(const std::function<bool()>* noflush_suspending) {
  for (;;) {
    if (mode() != PoolMode::out_of_data_space) co_return ok();
    // thin_presuspend() with noflush: the write waits in the device instead,
    // for the table live after the resume (the pool grown, maybe).
    if (noflush_suspending && (*noflush_suspending)()) co_return requeue_status();
    bool timed_out = false;
    {
      std::lock_guard lk(state_mutex_);
      if (pf_.error_if_no_space) co_return errno_status(ENOSPC);
      timed_out = std::chrono::steady_clock::now() - out_of_space_since_ >= kNoSpaceTimeout;
      if (timed_out) pf_.error_if_no_space = true;
    }
    if (timed_out) {
      spdlog::info("thin: {}: switching pool to out-of-data-space (error IO) mode", name());
      fire_event();
      co_return errno_status(ENOSPC);
    }
    co_await sleep_for(kSpacePoll);
  }
}

// alloc_data_block(): the low water event, a commit when the space map
// looks full (blocks freed this transaction come back), then out of space.
Task<Status> Pool::alloc_data_block(uint64_t& out,
                                    const std::function<bool()>* noflush_suspending) {
  for (;;) {
    Status st;
    {
      auto guard = co_await lock_metadata();
      // "Let's commit before we use up the metadata reserve": the commit
      // then finds only the headroom left and turns the pool read-only.
      if (mode() == PoolMode::write && pmd_->usage().metadata_free <= metadata_headroom()) {
        st = co_await commit_locked();
        if (st) co_return st;
      }
      if (mode() != PoolMode::write) {
        st = errno_status(ENOSPC);
      } else {
        uint64_t free_blocks = pmd_->usage().data_free;
        check_low_water(free_blocks);
        if (free_blocks > 0) st = pmd_->alloc_data_block(out);
        if (free_blocks == 0 || st) {
          st = co_await commit_locked();
          if (st) co_return st;
          st = pmd_->alloc_data_block(out);
          if (st) set_mode(PoolMode::out_of_data_space);
        }
      }
    }
    if (!st) co_return ok();
    if (mode() >= PoolMode::out_of_metadata_space) co_return errno_status(EIO);
    st = co_await wait_for_space(noflush_suspending);
    if (st) co_return st;
  }
}

Task<Status> Pool::write_unserviceable(const std::function<bool()>* noflush_suspending) {
  const PoolMode m = mode();
  if (m == PoolMode::out_of_data_space) co_return co_await wait_for_space(noflush_suspending);
  co_return errno_status(EIO);
}

// The new block's sectors outside the write: the old block's (breaking
// sharing) or the external origin's (zeroes past its end), else zeroes
// unless skip_block_zeroing leaves them as they are.
Task<Status> Pool::fill_around(const Bio& bio, uint64_t vblock, uint64_t data_block,
                               std::optional<uint64_t> old, BlockDevice* origin,
                               uint64_t origin_sectors) {
  const uint64_t block_start = vblock * block_sectors_;
  const uint64_t dest = data_block * block_sectors_;
  const uint64_t in_block = bio.sector - block_start;
  struct Piece {
    uint64_t offset, count;
  };
  const Piece pieces[2] = {{0, in_block},
                           {in_block + bio.sectors, block_sectors_ - in_block - bio.sectors}};
  for (const Piece& p : pieces) {
    if (p.count == 0) continue;
    uint64_t copied = 0;
    if (old) {
      const Region from{data_.get(), *old * block_sectors_ + p.offset, p.count};
      const Region to{data_.get(), dest + p.offset, p.count};
      CopyResult r = co_await kcopyd_.copy(from, std::span<const Region>(&to, 1));
      if (r) co_return r.status;
      copied = p.count;
    } else if (origin && block_start + p.offset < origin_sectors) {
      copied = std::min(p.count, origin_sectors - (block_start + p.offset));
      const Region from{origin, block_start + p.offset, copied};
      const Region to{data_.get(), dest + p.offset, copied};
      CopyResult r = co_await kcopyd_.copy(from, std::span<const Region>(&to, 1));
      if (r) co_return r.status;
    }
    if (copied < p.count && (features().zero_new_blocks || old || origin)) {
      const Region to{data_.get(), dest + p.offset + copied, p.count - copied};
      CopyResult r = co_await kcopyd_.zero(std::span<const Region>(&to, 1));
      if (r) co_return r.status;
    }
  }
  co_return ok();
}

// provision_block() and break_sharing(): a new block, what surrounds the
// write put in it, the write, then the mapping (durable at the next commit).
Task<Status> Pool::provision(uint32_t id, uint64_t vblock, const Bio& bio,
                             std::optional<uint64_t> old, BlockDevice* origin,
                             uint64_t origin_sectors,
                             const std::function<bool()>* noflush_suspending) {
  uint64_t data_block = 0;
  Status st = co_await alloc_data_block(data_block, noflush_suspending);
  if (st) co_return st;
  st = co_await fill_around(bio, vblock, data_block, old, origin, origin_sectors);
  if (!st) {
    Bio write = bio;
    write.sector = data_block * block_sectors_ + (bio.sector - vblock * block_sectors_);
    write.flags &= ~kBioFua;  // durable with the commit below, if asked for
    st = co_await data_->submit(write);
  }
  auto guard = co_await lock_metadata();
  if (!pmd_ || mode() == PoolMode::fail) co_return errno_status(EIO);
  if (st) {
    (void)pmd_->dec_data_block(data_block);  // the block goes back unused
    co_return st;
  }
  Status ins = co_await pmd_->insert_block(id, vblock, data_block);
  if (ins) {
    co_await metadata_failed("dm_thin_insert_block", ins);
    co_return errno_status(EIO);
  }
  changed_[id] = true;
  shown_stale_.insert(id);
  if (auto h = highest_.find(id); h != highest_.end() && (!h->second || *h->second < vblock))
    h->second = vblock;
  co_return ok();
}

Task<Status> Pool::thin_io(uint32_t id, Bio bio, BlockDevice* origin, uint64_t origin_sectors,
                           const std::function<bool()>* noflush_suspending) {
  if (mode() == PoolMode::fail) co_return errno_status(EIO);
  if (bio.op == BioOp::flush) co_return co_await thin_flush(id);
  if (bio.op == BioOp::discard) co_return co_await discard(id, bio);
  if (bio.op == BioOp::write_zeroes) co_return errno_status(EOPNOTSUPP);
  const uint64_t vblock = bio.sector / block_sectors_;
  const bool writing = bio.op == BioOp::write;
  auto cell = co_await cells_.lock(cell_key(id, vblock));
  std::optional<PoolMetadata::Mapping> mapping;
  {
    auto guard = co_await meta_lock_.lock();  // reads only: status unchanged
    if (!pmd_) co_return errno_status(EIO);
    Status st = co_await pmd_->find_block(id, vblock, mapping);
    if (st) {
      spdlog::error("thin: dm_thin_find_block() failed: error = {}", -st.value());
      co_return errno_status(EIO);
    }
  }
  const uint64_t offset = bio.sector - vblock * block_sectors_;
  if (mapping && !(writing && mapping->shared)) {
    if (writing && (bio.flags & kBioFua)) {
      // A FUA write to a device with uncommitted mappings goes after the commit.
      Status st = co_await commit_for(id);
      if (st) co_return st;
    }
    co_return co_await data_->submit(bio.at(mapping->data_block * block_sectors_ + offset));
  }
  if (!writing) {
    if (origin && bio.sector < origin_sectors) {
      const uint64_t inside = std::min(bio.sectors, origin_sectors - bio.sector);
      Status st = co_await origin->submit(bio.part(0, inside));
      if (st || inside == bio.sectors) co_return st;
      std::memset(bio.data.data() + (inside << kSectorShift), 0,
                  (bio.sectors - inside) << kSectorShift);
      co_return ok();
    }
    std::memset(bio.data.data(), 0, bio.bytes());
    if (bio.reads_zero) *bio.reads_zero = true;
    co_return ok();
  }
  for (;;) {
    const PoolMode m = mode();
    if (m == PoolMode::write) break;
    Status st = co_await write_unserviceable(noflush_suspending);
    if (st) co_return st;
  }
  std::optional<uint64_t> old;
  if (mapping) old = mapping->data_block;
  Status st = co_await provision(id, vblock, bio, old, origin, origin_sectors, noflush_suspending);
  if (st) co_return st;
  if (bio.flags & kBioFua) co_return co_await commit_for(id);
  co_return ok();
}

// An empty flush: a commit if the device changed (the pre-commit flushed
// the data device), else straight to the data device.
Task<Status> Pool::thin_flush(uint32_t id) {
  bool changed = false;
  {
    auto guard = co_await meta_lock_.lock();  // reads only: status unchanged
    changed = changed_.count(id) != 0;
  }
  if (!changed) co_return co_await flush_device(*data_);
  co_return co_await commit_for(id);
}

// process_discard_bio(): whole blocks only. Each mapped block is unmapped
// under its cell; with passdown, a block nobody else maps is discarded on
// the data device while held once more, so it cannot be handed out anew
// before the discard is done.
Task<Status> Pool::discard(uint32_t id, const Bio& bio) {
  if (!features().discard_enabled) co_return errno_status(EOPNOTSUPP);
  const PoolMode m = mode();
  if (m == PoolMode::out_of_metadata_space || m == PoolMode::read_only) co_return ok();
  const uint64_t begin = (bio.sector + block_sectors_ - 1) / block_sectors_;
  const uint64_t end = bio.end() / block_sectors_;
  for (uint64_t v = begin; v < end;) {
    uint64_t found = 0;
    std::optional<PoolMetadata::Mapping> mapping;
    {
      auto guard = co_await meta_lock_.lock();  // reads only: status unchanged
      if (!pmd_) co_return errno_status(EIO);
      Status st = co_await pmd_->next_mapped(id, v, found, mapping);
      if (st) co_return errno_status(EIO);
    }
    if (!mapping || found >= end) break;
    auto cell = co_await cells_.lock(cell_key(id, found));
    bool pass_down = false;
    uint64_t data_block = 0;
    {
      auto guard = co_await lock_metadata();
      if (!pmd_) co_return errno_status(EIO);
      std::optional<PoolMetadata::Mapping> now;
      Status st = co_await pmd_->find_block(id, found, now);
      if (!st && now) {
        data_block = now->data_block;
        st = pmd_->inc_data_block(data_block);
        uint64_t removed = 0;
        if (!st) st = co_await pmd_->remove_range(id, found, found + 1, removed);
        if (st) {
          co_await metadata_failed("dm_thin_remove_range", st);
          co_return errno_status(EIO);
        }
        changed_[id] = true;
        shown_stale_.insert(id);
        if (auto h = highest_.find(id); h != highest_.end() && h->second == found) {
          std::optional<uint64_t> highest;
          if (!co_await pmd_->highest_mapped(id, highest)) h->second = highest;
        }
        pass_down = features().discard_passdown && pmd_->data_block_count(data_block) == 1;
        if (!pass_down) (void)pmd_->dec_data_block(data_block);
      }
    }
    if (pass_down) {
      Bio d{.op = BioOp::discard, .sector = data_block * block_sectors_, .sectors = block_sectors_};
      (void)co_await data_->submit(d);  // errors are ignored, as the kernel's passdown does
      auto guard = co_await lock_metadata();
      if (pmd_) (void)pmd_->dec_data_block(data_block);
    }
    v = found + 1;
  }
  co_return ok();
}

std::string Pool::thin_status(uint32_t id) const {
  if (mode() == PoolMode::fail) return "Fail";
  std::lock_guard lk(shown_mutex_);
  auto it = shown_thins_.find(id);
  if (!shown_.valid || it == shown_thins_.end()) return "Error";
  std::string out = fmt::format("{} ", it->second.mapped_blocks * block_sectors_);
  out += it->second.highest ? std::to_string((*it->second.highest + 1) * block_sectors_ - 1) : "-";
  return out;
}

Task<Status> Pool::thin_block_status(uint32_t id, uint64_t sector, uint64_t count,
                                     ExtentList& out) {
  const uint64_t end = sector + count;
  uint64_t at = sector;
  while (at < end) {
    uint64_t found = 0;
    std::optional<PoolMetadata::Mapping> mapping;
    {
      auto guard = co_await meta_lock_.lock();  // reads only: status unchanged
      if (!pmd_) co_return errno_status(EIO);
      Status st = co_await pmd_->next_mapped(id, at / block_sectors_, found, mapping);
      if (st) co_return st;
    }
    const uint64_t mapped_start = mapping ? std::max(at, found * block_sectors_) : end;
    if (mapped_start >= end) {
      out.append(end - at, kExtentHole | kExtentZero);
      break;
    }
    if (mapped_start > at) out.append(mapped_start - at, kExtentHole | kExtentZero);
    const uint64_t mapped_end = std::min(end, (found + 1) * block_sectors_);
    out.append(mapped_end - mapped_start, 0);
    at = mapped_end;
  }
  co_return ok();
}

}  // namespace dmnbd::thin
