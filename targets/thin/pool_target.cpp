// thin-pool <metadata dev> <data dev> <data block size> <low water mark>
//           [<#features> skip_block_zeroing ignore_discard no_discard_passdown
//            read_only error_if_no_space]
//
// The pool device itself is a window onto the data device; the pool's
// work is its metadata, its messages, and the thin devices on it
// (thin_target.cpp). The kernel's pool_ctr and its hooks, in dm-thin.c.
#include <spdlog/spdlog.h>

#include "pool.hpp"

namespace dmnbd::thin {
namespace {

constexpr uint64_t kMinBlockSectors = 128;      // DATA_DEV_BLOCK_SIZE_MIN_SECTORS
constexpr uint64_t kMaxBlockSectors = 2097152;  // DATA_DEV_BLOCK_SIZE_MAX_SECTORS

// parse_pool_features(): a count (dm_read_arg_group, at most 4, and no more
// than there are words), then that many keywords; words past them are ignored.
PoolFeatures parse_features(TargetArgs args) {
  PoolFeatures pf;
  if (args.empty()) return pf;
  uint32_t count = 0;
  if (!scan_u32(args[0], count) || count > 4 || count > args.size() - 1)
    throw TargetError("Invalid number of pool feature arguments");
  for (uint32_t i = 1; i <= count; ++i) {
    const std::string& word = args[i];
    if (same_word(word, "skip_block_zeroing"))
      pf.zero_new_blocks = false;
    else if (same_word(word, "ignore_discard"))
      pf.discard_enabled = false;
    else if (same_word(word, "no_discard_passdown"))
      pf.discard_passdown = false;
    else if (same_word(word, "read_only"))
      pf.mode = PoolMode::read_only;
    else if (same_word(word, "error_if_no_space"))
      pf.error_if_no_space = true;
    else
      throw TargetError("Unrecognised pool feature requested");
  }
  return pf;
}

// emit_flags(): the requested features, their count first, each followed by a space.
std::string feature_words(const PoolFeatures& pf) {
  std::string words;
  unsigned count = 0;
  auto add = [&](bool on, const char* word) {
    if (!on) return;
    words += word;
    words += ' ';
    ++count;
  };
  add(!pf.zero_new_blocks, "skip_block_zeroing");
  add(!pf.discard_enabled, "ignore_discard");
  add(!pf.discard_passdown, "no_discard_passdown");
  add(pf.mode == PoolMode::read_only, "read_only");
  add(pf.error_if_no_space, "error_if_no_space");
  return std::to_string(count) + " " + words;
}

std::shared_ptr<BlockDevice> open_device(const TargetContext& ctx, const std::string& name,
                                         bool read_only, const char* error) {
  try {
    return ctx.resolver.open(name, read_only);
  } catch (const TargetError& e) {
    spdlog::error("thin: {}: {}", name, e.what());
    throw TargetError(error);
  }
}

class PoolTarget final : public Target {
 public:
  PoolTarget(const TargetContext& ctx, TargetArgs args) : length_(ctx.length) {
    if (args.size() < 4) throw TargetError("Invalid argument count");
    if (args[0] == args[1]) throw TargetError("Error setting metadata or data device");
    requested_ = parse_features(args.subspan(4));
    meta_name_ = args[0];
    data_name_ = args[1];
    metadata_ = open_device(ctx, args[0], requested_.mode == PoolMode::read_only,
                            "Error opening metadata block device");
    data_ = open_device(ctx, args[1], false, "Error getting data device");
    uint64_t block = 0;
    if (!parse_u64(args[2], block) || block < kMinBlockSectors || block > kMaxBlockSectors ||
        (block & (kMinBlockSectors - 1)))
      throw TargetError("Invalid block size");
    if (!parse_u64(args[3], low_water_blocks_)) throw TargetError("Invalid low water mark");
    bool created = false;
    pool_ = Pool::find_or_create(ctx.mapped_device, metadata_, data_, static_cast<uint32_t>(block),
                                 created);
    if (!created && requested_.discard_enabled != pool_->features().discard_enabled)
      throw TargetError("Discard support cannot be disabled once enabled");
    pool_->hold();
    raise_event_ = ctx.raise_event;
  }

  Task<void> open() override {
    co_await pool_->open_metadata(requested_.mode == PoolMode::read_only);
  }

  // The pool device reads and writes the data device as it is.
  Task<Status> map(Bio bio) override { co_return co_await data_->submit(bio); }
  Task<Status> direct_access(uint64_t sector, uint64_t count, const DirectAccess& how) override {
    co_return co_await data_->direct_access(sector, count, how);
  }
  Task<Status> block_status(uint64_t sector, uint64_t count, ExtentList& out) override {
    co_return co_await data_->block_status(sector, count, out);
  }

  std::string table() const override {
    return meta_name_ + " " + data_name_ + " " + std::to_string(pool_->block_sectors()) + " " +
           std::to_string(low_water_blocks_) + " " + feature_words(requested_);
  }
  std::string status() const override { return pool_->status(); }
  Task<std::string> message(std::vector<std::string> words) override {
    co_return co_await pool_->message(std::move(words));
  }

  Task<void> presuspend() override {
    pool_->presuspend();
    co_return;
  }
  Task<void> postsuspend() override { co_await pool_->postsuspend(); }
  Task<Status> preresume() override {
    pool_->bind(requested_, low_water_blocks_, raise_event_);
    std::string error;
    Status st = co_await pool_->preresume(length_ / pool_->block_sectors(), error);
    if (st && !error.empty()) spdlog::error("thin: {}", error);
    co_return st;
  }
  Task<void> resume() override { co_await pool_->resume(); }
  Task<void> teardown() override { co_await pool_->release(); }

  std::vector<DeviceArea> device_areas() const override {
    return {{data_, 0, length_}, {metadata_, 0, metadata_->sectors()}};
  }

 private:
  const uint64_t length_;
  std::string meta_name_, data_name_;
  PoolFeatures requested_;
  uint64_t low_water_blocks_ = 0;
  std::shared_ptr<BlockDevice> metadata_, data_;
  std::shared_ptr<Pool> pool_;
  std::function<void()> raise_event_;
};

}  // namespace

DMNBD_REGISTER_TARGET("thin-pool", PoolTarget, 1, 22, 0);

}  // namespace dmnbd::thin
