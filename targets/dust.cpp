// dust <dev> <offset> <blksz>: linear onto dev, with a list of bad blocks
// (blksz bytes each, numbered on dev, so the offset counts) that fail reads
// with EIO once enabled, the way a disk with unreadable sectors does. A write
// to a bad block "remaps" it: the block leaves the list and the write goes
// through, unless the block was added with a write-fail count, in which case
// that many writes fail first. Messages (answers and errors are the kernel's):
//   addbadblock <blk> [wr_fail_cnt], removebadblock <blk>, queryblock <blk>,
//   countbadblocks, clearbadblocks, listbadblocks, enable, disable, quiet
#include <spdlog/spdlog.h>

#include <atomic>
#include <bit>
#include <map>
#include <mutex>
#include <string_view>

#include "dmnbd/target.hpp"

namespace dmnbd {
namespace {

constexpr uint64_t kMaxBlockSectors = 2097152;  // 1 GiB

class DustTarget final : public Target {
 public:
  DustTarget(const TargetContext& ctx, TargetArgs args) {
    if (args.size() != 3) throw TargetError("Invalid argument count");
    if (!parse_u32(args[2], blksz_) || blksz_ == 0)
      throw TargetError("Invalid block size parameter");
    if (blksz_ < 512) throw TargetError("Block size must be at least 512");
    if (!std::has_single_bit(blksz_)) throw TargetError("Block size must be a power of 2");
    if ((blksz_ >> kSectorShift) > std::min(ctx.length, kMaxBlockSectors))
      throw TargetError("Block size is too large");
    sect_per_block_ = blksz_ >> kSectorShift;
    block_shift_ = std::countr_zero(sect_per_block_);
    start_ = parse_sector(args[1], "Invalid device offset sector");
    dev_name_ = args[0];
    dev_ = ctx.get_device(dev_name_);
    length_ = ctx.length;
  }

  Task<Status> map(Bio bio) override {
    // The kernel also runs empty flushes through the write path below, where
    // they would find the block of sector `offset`; a flush has no sectors, so
    // here it only reaches the device.
    if (bio.op == BioOp::flush) co_return co_await dev_->submit(bio);
    const uint64_t sector = start_ + bio.sector;
    if (enabled_.load()) {
      // One bio never crosses a block of the target (max_io_len); like the
      // kernel, only the block of its first sector counts.
      const uint64_t block = sector >> block_shift_;
      std::lock_guard lk(mutex_);
      auto it = badblocks_.find(block);
      if (bio.op == BioOp::read) {
        if (it != badblocks_.end()) co_return errno_status(EIO);
      } else if (it != badblocks_.end()) {
        if (it->second > 0) {
          --it->second;
          co_return errno_status(EIO);
        }
        badblocks_.erase(it);
        if (!quiet_) spdlog::info("dust: block {} removed from badblocklist by write", block);
      }
    }
    co_return co_await dev_->submit(bio.at(sector));
  }

  Task<Status> block_status(uint64_t sector, uint64_t count, ExtentList& out) override {
    co_return co_await dev_->block_status(start_ + sector, count, out);
  }

  Task<std::string> message(std::vector<std::string> words) override { co_return handle(words); }

  std::string table() const override {
    return dev_name_ + " " + std::to_string(start_) + " " + std::to_string(blksz_);
  }

  std::string status() const override {
    std::lock_guard lk(mutex_);
    return dev_name_ + (enabled_.load() ? " fail_read_on_bad_block" : " bypass") +
           (quiet_ ? " quiet" : " verbose");
  }

  uint64_t max_io_len() const override { return sect_per_block_; }
  std::vector<DeviceArea> device_areas() const override { return {{dev_, start_, length_}}; }

 private:
  // dust_message(): the kernel logs its reasons and returns EINVAL; here the
  // reason is the error's text ("Invalid argument" where the kernel says nothing).
  std::string handle(const std::vector<std::string>& argv) {
    const auto fail = [](const std::string& why) -> std::string { throw TargetError(why); };
    const auto silent = [] { return std::string("Invalid argument"); };
    if (argv.size() == 1) {
      const std::string& cmd = argv[0];
      if (same_word(cmd, "addbadblock") || same_word(cmd, "removebadblock") ||
          same_word(cmd, "queryblock"))
        return fail(cmd + " requires an additional argument");
      std::lock_guard lk(mutex_);
      if (same_word(cmd, "disable")) {
        spdlog::info("dust: disabling read failures on bad sectors");
        enabled_ = false;
        return {};
      }
      if (same_word(cmd, "enable")) {
        spdlog::info("dust: enabling read failures on bad sectors");
        enabled_ = true;
        return {};
      }
      if (same_word(cmd, "countbadblocks"))
        return "countbadblocks: " + std::to_string(badblocks_.size()) + " badblock(s) found";
      if (same_word(cmd, "clearbadblocks")) {
        const bool any = !badblocks_.empty();
        badblocks_.clear();
        return any ? "dust_clear_badblocks: badblocks cleared"
                   : "dust_clear_badblocks: no badblocks found";
      }
      if (same_word(cmd, "quiet")) {
        quiet_ = !quiet_;
        return {};
      }
      if (same_word(cmd, "listbadblocks")) {
        if (badblocks_.empty()) return "No blocks in badblocklist";
        std::string out;
        for (const auto& [block, count] : badblocks_) out += std::to_string(block) + "\n";
        return out;
      }
      return fail("unrecognized message '" + cmd + "' received");
    }
    if (argv.size() == 2 || argv.size() == 3) {
      const std::string& cmd = argv[0];
      uint64_t block = 0;
      if (!scan_u64(argv[1], block)) return fail(silent());
      uint32_t wr_fail_cnt = 0;
      if (argv.size() == 3) {
        if (!scan_u32(argv[2], wr_fail_cnt)) return fail(silent());
        if (wr_fail_cnt > 255) return fail("selected write fail count out of range");
      }
      // As in the kernel, the last block number accepted is the device's block count.
      if (block > dev_->sectors() / sect_per_block_)
        return fail("selected block value out of range");
      std::lock_guard lk(mutex_);
      if (same_word(cmd, "addbadblock")) {
        if (!badblocks_.emplace(block, static_cast<uint8_t>(wr_fail_cnt)).second)
          return fail(quiet_ ? silent()
                             : "dust_add_block: block " + std::to_string(block) +
                                   " already in badblocklist");
        if (!quiet_)
          spdlog::info("dust: dust_add_block: badblock added at block {} with write fail count {}",
                       block, wr_fail_cnt);
        return {};
      }
      if (argv.size() == 2 && same_word(cmd, "removebadblock")) {
        if (!badblocks_.erase(block))
          return fail(quiet_ ? silent()
                             : "dust_remove_block: block " + std::to_string(block) +
                                   " not found in badblocklist");
        if (!quiet_) spdlog::info("dust: dust_remove_block: badblock removed at block {}", block);
        return {};
      }
      if (argv.size() == 2 && same_word(cmd, "queryblock"))
        return "dust_query_block: block " + std::to_string(block) +
               (badblocks_.count(block) ? " found in badblocklist" : " not found in badblocklist");
      return fail("unrecognized message '" + cmd + "' received");
    }
    return fail("invalid number of arguments '" + std::to_string(argv.size()) + "'");
  }

  std::string dev_name_;
  uint64_t start_ = 0;
  uint64_t length_ = 0;
  uint32_t blksz_ = 0;
  uint64_t sect_per_block_ = 0;
  int block_shift_ = 0;
  std::shared_ptr<BlockDevice> dev_;
  mutable std::mutex mutex_;               // badblocks_ and quiet_
  std::map<uint64_t, uint8_t> badblocks_;  // block -> writes that still fail
  std::atomic<bool> enabled_ = false;      // fail_read_on_bb
  bool quiet_ = false;
};

}  // namespace

DMNBD_REGISTER_TARGET("dust", DustTarget, 1, 0, 0);

}  // namespace dmnbd
