// mirror <log type> <#log args> <log args...> <#mirrors> (<dev> <offset>)...
//        [<#features> <feature>...]: the kernel's dm-raid1 (target 1.14.0).
//
// Every write goes to every leg, inside one region (max_io_len), after the
// region's clean bit is cleared on the log; when the region's writes are
// done its bit is set again, after the legs were flushed (dirty_log.hpp).
// Out-of-sync regions are recovered in the background from the default leg
// (leg 0 unless it failed), one region at a time, lowest first; writes to
// them go to the default leg only until then. Reads go to the default leg
// (no read balancing) and fall back to another in-sync leg on an error.
//
// Leg errors, as the kernel handles them:
//  - without handle_errors a write that failed on some legs succeeds, and
//    its region goes out of sync (resynced at the next resume);
//  - with handle_errors the leg's first error of each kind raises an event,
//    a failed default leg is replaced by an error-free one, and a write that
//    failed on a leg is held until the mirror is suspended, for userspace to
//    reconfigure it, as dmeventd does: then it fails with EIO, or after a
//    `suspend --noflush` it is sent again to the table resumed next;
//  - with keep_log too such writes succeed and their regions stay out of sync.
// All legs failed: EIO.
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "dirty_log.hpp"
#include "dmnbd/background_job.hpp"
#include "dmnbd/deferred_pass.hpp"
#include "dmnbd/dm_io.hpp"
#include "dmnbd/kcopyd.hpp"
#include "dmnbd/park.hpp"
#include "dmnbd/target.hpp"
#include "dmnbd/when_all.hpp"
#include "region_hash.hpp"

namespace dmnbd::mirror {
namespace {

constexpr unsigned kMaxLegs = Kcopyd::kMaxDestinations + 1;  // MAX_NR_MIRRORS
constexpr std::chrono::milliseconds kCleanDelay{100};

// enum dm_raid1_error: bits of Leg::error_type.
enum LegError : uint32_t { kWriteError = 0, kFlushError, kSyncError, kReadError };

struct Leg {
  std::string name;
  uint64_t offset = 0;
  std::shared_ptr<BlockDevice> dev;
  std::atomic<unsigned> error_count = 0;
  std::atomic<uint32_t> error_type = 0;

  Bio remap(const Bio& bio) const { return bio.at(offset + bio.sector); }
  // device_status_char(): the most severe error seen.
  char status_char() const {
    if (error_count.load() == 0) return 'A';
    const uint32_t t = error_type.load();
    if (t & (1u << kFlushError)) return 'F';
    if (t & (1u << kWriteError)) return 'D';
    if (t & (1u << kSyncError)) return 'S';
    if (t & (1u << kReadError)) return 'R';
    return 'U';
  }
};

class MirrorTarget final : public Target {
 public:
  MirrorTarget(const TargetContext& ctx, TargetArgs args)
      : length_(ctx.length),
        raise_event_(ctx.raise_event),
        noflush_suspending_(ctx.noflush_suspending) {
    parse_log(ctx, args);
    rh_ = std::make_unique<RegionHash>(*log_);
    TargetArgs rest = args.subspan(log_args_used_);
    uint32_t legs = 0;
    if (rest.empty() || !scan_u32(rest[0], legs) || legs < 2 || legs > kMaxLegs)
      throw TargetError("Invalid number of mirrors");
    rest = rest.subspan(1);
    if (rest.size() < size_t(legs) * 2) throw TargetError("Too few mirror arguments");
    for (uint32_t i = 0; i < legs; ++i) {
      auto leg = std::make_unique<Leg>();
      if (!scan_u64(rest[1], leg->offset)) throw TargetError("Invalid offset");
      leg->name = rest[0];
      leg->dev = ctx.get_device(leg->name);
      legs_.push_back(std::move(leg));
      rest = rest.subspan(2);
    }
    parse_features(rest);
    log_->set_legs_flush([this]() -> Task<Status> { co_return co_await flush_legs(); });
  }

  Task<Status> map(Bio bio) override {
    switch (bio.op) {
      case BioOp::read:
        co_return co_await read(bio);
      case BioOp::flush:
        co_return co_await flush();
      case BioOp::discard:
        co_return co_await discard(bio);
      default:
        co_return co_await write(bio);
    }
  }

  // A flush goes to every leg (no region accounting); a leg that fails it
  // counts as a failed write.
  Task<Status> flush() override {
    if (log_failure_ && handle_errors_) co_return co_await write_failed(flush_bio(), 0);
    const uint32_t failed = co_await submit_to_legs(flush_bio());
    if (!failed) co_return ok();
    fail_legs(failed, kWriteError);
    co_return co_await write_failed(flush_bio(), 0);
  }

  // What a read returns is the default leg's (reads of every region go
  // there while it works), so its allocation is the mirror's.
  Task<Status> block_status(uint64_t sector, uint64_t count, ExtentList& out) override {
    Leg& leg = default_leg();
    co_return co_await leg.dev->block_status(leg.offset + sector, count, out);
  }

  std::string table() const override {
    std::string out = log_->table() + std::to_string(legs_.size());
    for (const auto& leg : legs_) out += " " + leg->name + " " + std::to_string(leg->offset);
    const unsigned features = unsigned(handle_errors_) + unsigned(keep_log_);
    if (features) {
      out += " " + std::to_string(features);
      if (handle_errors_) out += " handle_errors";
      if (keep_log_) out += " keep_log";
    }
    return out;
  }

  std::string status() const override {
    std::string out = std::to_string(legs_.size()) + " ";
    std::string chars;
    for (const auto& leg : legs_) {
      out += leg->name + " ";
      chars += leg->status_char();
    }
    return out + std::to_string(log_->sync_count()) + "/" + std::to_string(log_->region_count()) +
           " 1 " + chars + " " + log_->status();
  }

  Task<void> presuspend() override {
    release_held_writes(true);
    if (recovery_) co_await recovery_->stop();
  }

  Task<void> postsuspend() override { co_await write_clean_regions(); }

  Task<void> resume() override {
    release_held_writes(false);
    co_await log_->resume();
    auto executor = co_await asio::this_coro::executor;
    clear_pass_.start(executor);
    if (!recovery_) {
      BackgroundJob::Options options;
      options.total = log_->region_count();
      recovery_ = std::make_unique<BackgroundJob>(
          [this](uint64_t, const CancelToken& cancel) { return recover_one(cancel); }, options);
    }
    recovery_->start(executor);
  }

  Task<void> teardown() override {
    release_held_writes(true);
    if (recovery_) co_await recovery_->stop();
    co_await clear_pass_.stop();
    co_await kcopyd_.drain();
    // A table can go without a suspend first (a server stopping with no
    // client): what a suspend writes is written here then.
    co_await write_clean_regions();
  }

  uint64_t max_io_len() const override { return log_->region_size(); }

  // The legs, and the log device as far as the log uses it, as dm_get_device()
  // counts them (dmsetup deps lists the log too).
  std::vector<DeviceArea> device_areas() const override {
    std::vector<DeviceArea> areas;
    for (const auto& leg : legs_) areas.push_back({leg->dev, leg->offset, length_});
    if (log_->is_disk()) areas.push_back({log_->device(), 0, log_->device()->sectors()});
    return areas;
  }

 private:
  // The last clean regions reach the log (the kernel's last kmirrord pass
  // and the log's postsuspend flush).
  Task<void> write_clean_regions() {
    rh_->clear_clean_regions();
    Status st = co_await log_->flush();
    if (st) spdlog::warn("mirror: log postsuspend failed: {}", st.message());
  }

  // ---- Constructor parts (create_dirty_log(), parse_features()).
  void parse_log(const TargetContext& ctx, TargetArgs args) {
    uint32_t params = 0;
    if (args.size() < 2) throw TargetError("Insufficient mirror log arguments");
    if (!scan_u32(args[1], params)) throw TargetError("Invalid mirror log argument count");
    if (params > args.size() - 2) throw TargetError("Insufficient mirror log arguments");
    log_ = DirtyLog::create(ctx, args[0], args.subspan(2, params));
    log_args_used_ = 2 + params;
  }

  void parse_features(TargetArgs rest) {
    if (!rest.empty()) {
      uint32_t count = 0;
      if (!scan_u32(rest[0], count)) throw TargetError("Invalid number of features");
      rest = rest.subspan(1);
      if (count > rest.size()) throw TargetError("Not enough arguments to support feature count");
      for (uint32_t i = 0; i < count; ++i) {
        if (rest[0] == "handle_errors")
          handle_errors_ = true;
        else if (rest[0] == "keep_log")
          keep_log_ = true;
        else
          throw TargetError("Unrecognised feature requested");
        rest = rest.subspan(1);
      }
      if (!handle_errors_ && keep_log_)
        throw TargetError("keep_log feature requires the handle_errors feature");
    }
    if (!rest.empty()) throw TargetError("Too many mirror arguments");
  }

  // ---- Legs.
  Leg& default_leg() const { return *legs_[default_leg_.load()]; }
  bool default_ok() const { return default_leg().error_count.load() == 0; }
  // get_valid_mirror(): the first leg without errors.
  Leg* valid_leg() const {
    for (const auto& leg : legs_)
      if (leg->error_count.load() == 0) return leg.get();
    return nullptr;
  }
  // choose_mirror(): the default leg, else the next one down (wrapping)
  // without errors.
  Leg* choose_leg() const {
    const size_t first = default_leg_.load();
    for (size_t k = 0; k < legs_.size(); ++k) {
      Leg& leg = *legs_[(first + legs_.size() - k) % legs_.size()];
      if (leg.error_count.load() == 0) return &leg;
    }
    return nullptr;
  }

  // fail_mirror()
  void fail_leg(Leg& leg, LegError type) {
    leg_failure_ = true;
    ++leg.error_count;
    if (leg.error_type.fetch_or(1u << type) & (1u << type)) return;
    if (!handle_errors_) return;
    if (&leg == &default_leg()) {
      if (!in_sync_ && !keep_log_) {
        // Better to keep using the failing leg than to read stale data.
        spdlog::error("mirror: primary mirror ({}) failed while out-of-sync: reads may fail",
                      leg.name);
      } else if (Leg* other = valid_leg()) {
        for (size_t i = 0; i < legs_.size(); ++i)
          if (legs_[i].get() == other) default_leg_ = unsigned(i);
      } else {
        spdlog::warn("mirror: all sides of mirror have failed");
      }
    }
    raise_event_();
  }
  void fail_legs(uint32_t bits, LegError type) {
    for (size_t i = 0; i < legs_.size(); ++i)
      if (bits & (1u << i)) fail_leg(*legs_[i], type);
  }

  // The bio on every leg at once; bit i of the result: leg i failed.
  Task<uint32_t> submit_to_legs(Bio bio) {
    std::vector<Task<Status>> tasks;
    tasks.reserve(legs_.size());
    for (const auto& leg : legs_)
      tasks.push_back(leg->dev->submit(bio.op == BioOp::flush ? bio : leg->remap(bio)));
    const std::vector<Status> results = co_await when_all(tasks);
    uint32_t failed = 0;
    for (size_t i = 0; i < results.size(); ++i)
      if (results[i]) failed |= 1u << i;
    co_return failed;
  }

  // mirror_flush(): before clean bits go to the log.
  Task<Status> flush_legs() {
    const uint32_t failed = co_await submit_to_legs(flush_bio());
    if (!failed) co_return ok();
    fail_legs(failed, kFlushError);
    co_return errno_status(EIO);
  }

  // ---- Reads.
  Task<Status> read(Bio bio) {
    const RegionId r = rh_->region_of(bio.sector);
    Status st = errno_status(EIO);
    // Each failed try marks an error-free leg, so this ends within a try per leg.
    for (size_t attempt = 0; attempt <= legs_.size(); ++attempt) {
      const bool in_sync = rh_->in_sync(r);
      Leg* leg = in_sync ? choose_leg() : default_ok() ? &default_leg() : nullptr;
      if (!leg) co_return errno_status(EIO);
      st = co_await leg->dev->submit(leg->remap(bio));
      if (!st || st == std::errc::operation_not_supported) co_return st;
      fail_leg(*leg, kReadError);
      const bool other = default_ok() || (rh_->in_sync(r) && choose_leg());
      if (!other) break;
      spdlog::warn("mirror: read failure on mirror device {}, trying alternative device",
                   leg->name);
    }
    spdlog::error("mirror: read failure on mirror device, failing I/O");
    co_return st;
  }

  // ---- Writes.
  Task<Status> write(Bio bio) {
    const RegionId r = rh_->region_of(bio.sector);
    const RegionHash::WriteStart start = co_await rh_->begin_write(r);
    Status st = co_await write_in_region(bio, r, start);
    if (rh_->end_write(r)) clear_pass_.schedule();
    co_return st;
  }

  // do_writes() and do_write() for one write.
  Task<Status> write_in_region(Bio bio, RegionId r, RegionHash::WriteStart start) {
    if (start.state == RegionState::nosync) {
      if (leg_failure_ && handle_errors_ && !keep_log_) co_return co_await write_failed(bio, r);
      Leg& leg = default_leg();
      co_return co_await leg.dev->submit(leg.remap(bio));
    }
    // The clean bit this write cleared must be on the log first.
    Status log_st = co_await log_->wait_durable(start.log_ticket);
    if (log_st) log_failure_ = true;
    if (log_failure_ && handle_errors_) co_return co_await write_failed(bio, r);
    const uint32_t failed = co_await submit_to_legs(bio);
    if (!failed) co_return ok();
    fail_legs(failed, kWriteError);
    co_return co_await write_failed(bio, r);
  }

  // do_failures() for one write: the region goes out of sync unless the log
  // failed; then the write fails, is held, or succeeds.
  Task<Status> write_failed(Bio bio, RegionId r) {
    if (!log_failure_) {
      in_sync_ = false;
      if (bio.op == BioOp::flush)
        rh_->flush_failed();
      else
        rh_->mark_nosync(r);
    }
    if (!valid_leg() || (keep_log_ && log_failure_)) co_return errno_status(EIO);
    if (handle_errors_ && !keep_log_) co_return co_await hold();
    co_return ok();
  }

  // Discards go to every leg without region accounting; one that fails is
  // reported as not supported and degrades nothing.
  Task<Status> discard(Bio bio) {
    const uint32_t failed = co_await submit_to_legs(bio);
    co_return failed ? errno_status(EOPNOTSUPP) : ok();
  }

  // hold_bio(): a write waits for the mirror to be reconfigured. The suspend
  // that comes first fails it, or with --noflush gives it back to the device,
  // which sends it again to the table resumed next (the reconfigured one).
  Task<Status> hold() {
    Status result;
    co_await park_until_woken([this, out = &result](std::function<void()> wake) {
      std::unique_lock lk(holds_mutex_);
      if (!suspending_) {
        holds_.push_back({std::move(wake), out});
        return;
      }
      *out = released_as();
      lk.unlock();
      wake();
    });
    co_return result;
  }
  Status released_as() const {
    return noflush_suspending_() ? requeue_status() : errno_status(EIO);
  }
  void release_held_writes(bool suspending) {
    std::vector<Held> held;
    {
      std::lock_guard lk(holds_mutex_);
      suspending_ = suspending;
      held.swap(holds_);
      for (Held& h : held) *h.result = released_as();
    }
    for (Held& h : held) h.wake();
  }

  // ---- Clean regions reach the log in the background (dm_rh_update_states()
  // at the next kmirrord pass), one pass at a time, on the loop the mirror
  // was resumed on, as its recovery. Unlike the kernel, which clears a region
  // as soon as its writes are done, a region is cleared once it has been idle
  // for kCleanDelay, as md's bitmap does: a region in steady use then costs
  // no log write per burst of writes (a mark, a legs' flush and a clear),
  // and the price is that a crash resyncs what was written in its last
  // moment. Suspend (and so reload and removal) clears every idle region, so
  // the log on disk then is the kernel's.
  Task<std::optional<DeferredPass::Clock::time_point>> clear_regions() {
    const RegionHash::Cleared cleared = rh_->clear_clean_regions(kCleanDelay);
    // A failed log write is the log's to report (status D, an event); the
    // next write's flush tries again.
    if (cleared.any) co_await log_->flush();
    co_return cleared.next;
  }

  // ---- Recovery: one region per step of the background job (do_recovery()
  // and recover()).
  Task<JobStep> recover_one(const CancelToken& cancel) {
    const std::optional<RegionId> r = rh_->begin_recovery();
    if (!r) {
      if (!in_sync_ && log_->sync_count() == log_->region_count()) {
        in_sync_ = true;
        for (const auto& leg : legs_) leg->error_count = 0, leg->error_type = 0;
        leg_failure_ = false;
        raise_event_();
      }
      co_return JobStep{ok(), 0};
    }
    const bool quiesced = co_await rh_->wait_quiesced(*r);
    if (!quiesced) co_return JobStep{ok(), 1};  // a write failed: it stays out of sync

    const uint64_t start = rh_->region_start(*r);
    const uint64_t count = std::min<uint64_t>(log_->region_size(), length_ - start);
    Leg& source = default_leg();
    ::dmnbd::Region to[Kcopyd::kMaxDestinations];
    Leg* targets[Kcopyd::kMaxDestinations];
    size_t n = 0;
    for (const auto& leg : legs_) {
      if (leg.get() == &source) continue;
      targets[n] = leg.get();
      to[n++] = {leg->dev.get(), leg->offset + start, count};
    }
    const ::dmnbd::Region from{source.dev.get(), source.offset + start, count};
    const uint32_t flags = handle_errors_ ? 0 : kKcopydIgnoreErrors;
    const CopyResult res = co_await kcopyd_.copy(from, std::span(to, n), &cancel, flags);
    if (res.read_error) {
      spdlog::error("mirror: unable to read primary mirror during recovery");
      fail_leg(source, kSyncError);
    }
    for (size_t i = 0; i < n; ++i)
      if (res.write_errors & (1u << i)) fail_leg(*targets[i], kSyncError);
    const bool stopped = res.status == std::errc::operation_canceled;
    const bool copied = !res.status;
    // A failed copy the mirror does not handle is declared in sync anyway.
    rh_->end_recovery(*r, copied || (!stopped && !handle_errors_), copied);
    co_await log_->flush();
    co_return JobStep{ok(), 1};
  }

  const uint64_t length_;
  const std::function<void()> raise_event_;
  const std::function<bool()> noflush_suspending_;
  std::unique_ptr<DirtyLog> log_;
  size_t log_args_used_ = 0;
  std::unique_ptr<RegionHash> rh_;
  std::vector<std::unique_ptr<Leg>> legs_;
  bool handle_errors_ = false;
  bool keep_log_ = false;

  std::atomic<unsigned> default_leg_ = 0;
  std::atomic<bool> in_sync_ = false;
  std::atomic<bool> log_failure_ = false;
  std::atomic<bool> leg_failure_ = false;

  Kcopyd kcopyd_;
  std::unique_ptr<BackgroundJob> recovery_;

  struct Held {
    std::function<void()> wake;
    Status* result;
  };
  std::mutex holds_mutex_;  // suspending_ and holds_
  bool suspending_ = false;
  std::vector<Held> holds_;

  DeferredPass clear_pass_{[this] { return clear_regions(); }};
};

}  // namespace
}  // namespace dmnbd::mirror

namespace dmnbd {
using mirror::MirrorTarget;
DMNBD_REGISTER_TARGET("mirror", MirrorTarget, 1, 14, 0);
}  // namespace dmnbd
