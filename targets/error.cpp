// error: every read, write and discard fails with EIO. Like current kernels it
// also accepts "<dev> <start>" (xfstests' dmerror uses it to inherit limits).
#include "dmnbd/target.hpp"

namespace dmnbd {
namespace {

class ErrorTarget final : public Target {
 public:
  ErrorTarget(const TargetContext& ctx, TargetArgs args) {
    if (args.size() == 2) {
      uint64_t start = parse_sector(args[1], "Invalid device sector");
      dev_ = ctx.get_device(args[0]);
      start_ = start;
      length_ = ctx.length;
      args_ = args[0] + " " + args[1];
    }
  }

  Task<Status> map(Bio bio) override { co_return errno_status(EIO); }
  // The kernel sends no flushes to this target, so a device-wide flush succeeds.
  Task<Status> flush() override { co_return ok(); }

  std::string table() const override { return args_; }
  std::vector<DeviceArea> device_areas() const override {
    if (dev_) return {{dev_, start_, length_}};
    return {};
  }

 private:
  std::string args_;
  std::shared_ptr<BlockDevice> dev_;
  uint64_t start_ = 0, length_ = 0;
};

}  // namespace

DMNBD_REGISTER_TARGET("error", ErrorTarget, 1, 7, 0);

}  // namespace dmnbd
