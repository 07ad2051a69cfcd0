// thin <pool dev> <dev id> [<external origin dev>]
//
// A thin device of the pool on <pool dev> (a thin-pool table's device):
// its I/O is the pool's (pool.cpp). The kernel's thin_ctr and thin_status.
#include <spdlog/spdlog.h>

#include "pool.hpp"

namespace dmnbd::thin {
namespace {

class ThinTarget final : public Target {
 public:
  ThinTarget(const TargetContext& ctx, TargetArgs args) : noflush_(ctx.noflush_suspending) {
    if (args.size() != 2 && args.size() != 3) throw TargetError("Invalid argument count");
    if (args.size() == 3) {
      if (args[0] == args[2]) throw TargetError("Error setting origin device");
      origin_name_ = args[2];
      try {
        origin_ = ctx.resolver.open(args[2], true);
      } catch (const TargetError& e) {
        spdlog::error("thin: {}: {}", args[2], e.what());
        throw TargetError("Error opening origin device");
      }
    }
    pool_name_ = args[0];
    try {
      pool_dev_ = ctx.resolver.open(args[0], ctx.read_only);
    } catch (const TargetError& e) {
      spdlog::error("thin: {}: {}", args[0], e.what());
      throw TargetError("Error opening pool device");
    }
    uint64_t id = 0;
    if (!parse_u64(args[1], id) || id > kMaxDevId) throw TargetError("Invalid device id");
    id_ = static_cast<uint32_t>(id);
    pool_ = Pool::of_device(pool_dev_->identity());
    if (!pool_) throw TargetError("Couldn't find pool object");
    if (pool_->mode() == PoolMode::fail)
      throw TargetError("Couldn't open thin device, Pool is in fail mode");
    if (pool_->open_thin(id_)) throw TargetError("Couldn't open thin internal device");
    if (pool_->suspended()) {
      pool_->close_thin(id_);
      throw TargetError("Unable to activate thin device while pool is suspended");
    }
    pool_->hold();
  }

  Task<void> open() override { co_await pool_->load_thin(id_); }

  Task<Status> map(Bio bio) override {
    co_return co_await pool_->thin_io(id_, bio, origin_.get(), origin_ ? origin_->sectors() : 0,
                                      &noflush_);
  }
  Task<Status> flush() override { co_return co_await pool_->thin_flush(id_); }
  Task<Status> block_status(uint64_t sector, uint64_t count, ExtentList& out) override {
    co_return co_await pool_->thin_block_status(id_, sector, count, out);
  }
  // dm core splits bios at block boundaries (ti->max_io_len).
  uint64_t max_io_len() const override { return pool_->block_sectors(); }

  std::string table() const override {
    return pool_name_ + " " + std::to_string(id_) + (origin_ ? " " + origin_name_ : "");
  }
  std::string status() const override { return pool_->thin_status(id_); }

  Task<void> teardown() override {
    pool_->close_thin(id_);
    co_await pool_->unload_thin(id_);
    co_await pool_->release();
  }

  std::vector<DeviceArea> device_areas() const override {
    std::vector<DeviceArea> areas;
    areas.push_back({pool_dev_, 0, 0});
    if (origin_) areas.push_back({origin_, 0, 0});
    return areas;
  }

 private:
  std::string pool_name_, origin_name_;
  uint32_t id_ = 0;
  std::shared_ptr<BlockDevice> pool_dev_, origin_;
  std::shared_ptr<Pool> pool_;
  const std::function<bool()> noflush_;
};

}  // namespace

DMNBD_REGISTER_TARGET("thin", ThinTarget, 1, 22, 0);

}  // namespace dmnbd::thin
