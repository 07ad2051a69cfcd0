// log-writes <dev> <logdev>: I/O goes to dev, and every write is also logged to
// logdev in the kernel's format (log_writes/format.hpp), in the order the data
// became durable on dev, so that `dmnbd replay-log` (or xfstests' replay-log)
// can rebuild dev as it was at any point:
// - a write is logged only once a flush that was sent after it completed: the
//   flush's entry follows the writes that completed before the flush was sent;
// - a FUA write is logged as soon as it completes;
// - discards are ordered like writes and carry no data; write-zeroes, which
//   the kernel's target leaves to the block layer as writes of zeroes, are
//   logged as writes of zeroes;
// - `message ... mark <word>` logs a mark; the super block (entry count) is
//   rewritten after each FUA write and each mark;
// - when the target goes away, the writes no flush covered yet and the mark
//   "dm-log-writes-end" are logged;
// - the flush dmnbd's suspend sends (the kernel's sends none) is not logged;
// - once logdev is full (or a log write fails) logging stops for good and the
//   status line says logging_disabled.
// The kernel keeps the mapped device's sector in both dev and the log, so the
// target belongs at table start 0 (a later start maps the way the kernel's does).
#include <spdlog/spdlog.h>

#include <atomic>
#include <deque>
#include <mutex>
#include <vector>

#include "dmnbd/async_mutex.hpp"
#include "dmnbd/target.hpp"
#include "log_writes/format.hpp"

namespace dmnbd {
namespace {

namespace lw = logwrites;

// The logical block size of dev; the log counts in these units. dmnbd's
// devices all have 512-byte sectors.
constexpr uint32_t kLogSectorSize = kSectorSize;

class LogWritesTarget final : public Target {
 public:
  LogWritesTarget(const TargetContext& ctx, TargetArgs args) : begin_(ctx.begin) {
    if (args.size() < 2) throw TargetError("Invalid argument count");
    dev_name_ = args[0];
    dev_ = ctx.get_device(dev_name_);
    length_ = ctx.length;
    log_name_ = args[1];
    try {
      log_ = ctx.resolver.open(log_name_, ctx.read_only);
    } catch (const TargetError& e) {
      throw TargetError(std::string("Log device lookup failed (") + e.what() + ")");
    }
    end_sector_ = log_->sectors();
  }

  // log_writes_dtr(): what no flush covered yet, then the end mark. (A
  // table that fails to build is dropped without a teardown, so a log-writes
  // line of it writes no end mark, where the kernel's dtr would.)
  Task<void> teardown() override {
    {
      std::lock_guard lk(mutex_);
      for (Block& b : unflushed_) logging_.push_back(std::move(b));
      unflushed_.clear();
      logging_.push_back(mark_block(lw::kEndMark));
    }
    try {
      co_await drain();
    } catch (const std::exception& e) {
      spdlog::error("log-writes: writing the end of the log failed: {}", e.what());
    }
  }

  Task<Status> map(Bio bio) override {
    Bio out = bio;
    if (bio.op != BioOp::flush) out.sector = begin_ + bio.sector;
    if (bio.op == BioOp::read || !enabled_.load()) co_return co_await dev_->submit(out);
    // dmnbd's suspend flushes through the targets; the kernel's sends no flush,
    // so its log has no entry for it and the writes stay unflushed.
    if (bio.op == BioOp::flush && suspending_.load()) co_return co_await dev_->submit(out);
    // No write-zeroes in the kernel's target: the block layer writes zeroes, never fast.
    if (bio.op == BioOp::write_zeroes && (bio.flags & kBioFastZero))
      co_return errno_status(ENOTSUP);

    Block block;
    block.sector = out.sector;  // kLogSectorSize is the bio's sector size
    block.nr_sectors = bio.sectors;
    if (bio.op == BioOp::flush) block.flags |= lw::kFlagFlush;
    if (bio.flags & kBioFua) block.flags |= lw::kFlagFua;
    if (bio.op == BioOp::discard) block.flags |= lw::kFlagDiscard;
    if (bio.op == BioOp::write) block.data.assign(bio.data.begin(), bio.data.end());
    block.zeroes = bio.op == BioOp::write_zeroes;

    // A flush covers the writes that completed before it was sent.
    std::vector<Block> covered;
    if (bio.op == BioOp::flush) {
      std::lock_guard lk(mutex_);
      covered.swap(unflushed_);
    }
    const Status st = co_await dev_->submit(out);
    // normal_end_io(): the kernel logs the bio whatever its outcome.
    if (bio.op == BioOp::flush) {
      covered.push_back(std::move(block));
      co_await commit(covered);
    } else if (block.flags & lw::kFlagFua) {
      std::vector<Block> one;
      one.push_back(std::move(block));
      co_await commit(one);
    } else {
      std::lock_guard lk(mutex_);
      unflushed_.push_back(std::move(block));
    }
    co_return st;
  }

  Task<void> presuspend() override {
    suspending_ = true;
    co_return;
  }
  Task<void> resume() override {
    suspending_ = false;
    co_return;
  }

  Task<Status> block_status(uint64_t sector, uint64_t count, ExtentList& out) override {
    co_return co_await dev_->block_status(begin_ + sector, count, out);
  }

  Task<std::string> message(std::vector<std::string> words) override {
    if (words.size() != 2)
      throw TargetError("Invalid log-writes message arguments, expect 2 arguments, got " +
                        std::to_string(words.size()));
    if (!same_word(words[0], "mark"))
      throw TargetError("Unrecognised log writes target message received: " + words[0]);
    std::vector<Block> one;
    one.push_back(mark_block(words[1]));
    co_await commit(one);
    co_return std::string();
  }

  std::string table() const override { return dev_name_ + " " + log_name_; }

  // "<entries logged> <last log sector in use>[ logging_disabled]".
  std::string status() const override {
    std::lock_guard lk(mutex_);
    return std::to_string(logged_entries_) + " " + std::to_string(next_sector_ - 1) +
           (enabled_.load() ? "" : " logging_disabled");
  }

  // Flushes go through map(): they are logged, in order with the writes.
  Task<Status> flush() override { return map(flush_bio()); }
  std::vector<DeviceArea> device_areas() const override {
    return {{dev_, 0, length_}, {log_, 0, log_->sectors()}};
  }

 private:
  struct Block {
    uint64_t flags = 0;
    uint64_t sector = 0, nr_sectors = 0;
    std::vector<std::byte> data;  // a write's data
    bool zeroes = false;          // a write of nr_sectors of zeroes
    std::string mark;
  };

  // log_mark(): the text is cut to what fits in the entry block with a NUL.
  static Block mark_block(std::string_view text) {
    Block b;
    b.flags = lw::kFlagMark;
    b.mark = std::string(text.substr(0, kLogSectorSize - lw::kEntryBytes - 1));
    b.mark.resize(strnlen(b.mark.c_str(), b.mark.size()));
    return b;
  }

  // Queues blocks for the log in order, and returns once they are written.
  // (Taken by reference: GCC 12 mishandles temporaries in co_await expressions.)
  Task<void> commit(std::vector<Block>& blocks) {
    {
      std::lock_guard lk(mutex_);
      for (Block& b : blocks) logging_.push_back(std::move(b));
    }
    co_await drain();
  }

  // The kernel's log kthread: one writer at a time takes the queue in order,
  // gives each block its place in the log and writes it.
  Task<void> drain() {
    auto guard = co_await log_mutex_.lock();
    for (;;) {
      Block block;
      uint64_t sector = 0;
      bool super = false;
      {
        std::lock_guard lk(mutex_);
        if (logging_.empty()) break;
        block = std::move(logging_.front());
        logging_.pop_front();
        if (!enabled_.load()) continue;
        sector = next_sector_;
        if (!(block.flags & lw::kFlagDiscard)) next_sector_ += block.nr_sectors;
        next_sector_ += 1;
        if (next_sector_ >= end_sector_) {
          spdlog::error("log-writes: Ran out of space on the logdev {}", log_name_);
          enabled_ = false;
          continue;
        }
        ++logged_entries_;
        super = block.flags & (lw::kFlagFua | lw::kFlagMark);
      }
      Status st = co_await write_block(block, sector);
      if (!st && super) st = co_await write_super();
      if (st) {
        spdlog::error("log-writes: Error writing log block to {}: {}", log_name_, st.message());
        enabled_ = false;
      }
    }
  }

  Task<Status> write_block(const Block& block, uint64_t sector) {
    const lw::Entry entry{.sector = block.sector,
                          .nr_sectors = block.nr_sectors,
                          .flags = block.flags,
                          .data_len = block.mark.size()};
    std::vector<std::byte> buf(kLogSectorSize + block.data.size());
    lw::encode_entry(entry, block.mark, std::span(buf).first(kLogSectorSize));
    if (!block.data.empty())  // an empty vector's data() may be null
      std::memcpy(buf.data() + kLogSectorSize, block.data.data(), block.data.size());
    Bio bio{.op = BioOp::write, .sector = sector, .sectors = buf.size() / kSectorSize, .data = buf};
    if (Status st = co_await log_->submit(bio)) co_return st;
    if (!block.zeroes || block.nr_sectors == 0) co_return ok();
    Bio zeroes{.op = BioOp::write_zeroes, .sector = sector + 1, .sectors = block.nr_sectors};
    co_return co_await log_->submit(zeroes);
  }

  Task<Status> write_super() {
    lw::Super super;
    {
      std::lock_guard lk(mutex_);
      super.nr_entries = logged_entries_;
    }
    super.sectorsize = kLogSectorSize;
    std::vector<std::byte> buf(kLogSectorSize);
    lw::encode_super(super, buf);
    Bio bio{.op = BioOp::write, .sector = 0, .sectors = 1, .data = buf};
    co_return co_await log_->submit(bio);
  }

  const uint64_t begin_;
  std::string dev_name_, log_name_;
  std::shared_ptr<BlockDevice> dev_, log_;
  uint64_t length_ = 0;

  AsyncMutex log_mutex_;      // one log writer at a time
  mutable std::mutex mutex_;  // everything below
  std::atomic<bool> enabled_ = true;
  std::atomic<bool> suspending_ = false;  // from presuspend to resume
  std::vector<Block> unflushed_;          // completed, waiting for a flush
  std::deque<Block> logging_;             // to be written to the log, in this order
  uint64_t next_sector_ = kLogSectorSize >> kSectorShift;  // the super is sector 0
  uint64_t end_sector_ = 0;
  uint64_t logged_entries_ = 0;
};

}  // namespace

DMNBD_REGISTER_TARGET("log-writes", LogWritesTarget, 1, 1, 0);

}  // namespace dmnbd
