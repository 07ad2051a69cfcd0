// linear <dev> <offset>: maps the target onto dev, starting at sector offset.
#include "dmnbd/target.hpp"

namespace dmnbd {
namespace {

class LinearTarget final : public Target {
 public:
  LinearTarget(const TargetContext& ctx, TargetArgs args) {
    if (args.size() != 2) throw TargetError("Invalid argument count");
    offset_ = parse_sector(args[1], "Invalid device sector");
    dev_name_ = args[0];
    dev_ = ctx.get_device(dev_name_);
    length_ = ctx.length;
  }

  Task<Status> map(Bio bio) override {
    co_return co_await dev_->submit(bio.at(offset_ + bio.sector));
  }

  Task<Status> block_status(uint64_t sector, uint64_t count, ExtentList& out) override {
    co_return co_await dev_->block_status(offset_ + sector, count, out);
  }

  Task<Status> direct_access(uint64_t sector, uint64_t count, const DirectAccess& how) override {
    co_return co_await dev_->direct_access(offset_ + sector, count, how);
  }

  std::string table() const override { return dev_name_ + " " + std::to_string(offset_); }
  std::vector<DeviceArea> device_areas() const override { return {{dev_, offset_, length_}}; }

 private:
  std::string dev_name_;
  uint64_t offset_ = 0;
  uint64_t length_ = 0;
  std::shared_ptr<BlockDevice> dev_;
};

}  // namespace

DMNBD_REGISTER_TARGET("linear", LinearTarget, 1, 4, 0);

}  // namespace dmnbd
