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
      dev_ = ctx.get_device(args[0], start, ctx.length);
      args_ = args[0] + " " + args[1];
    }
  }

  // The kernel sends no flushes to this target, so a device-wide flush succeeds.
  Task<Status> map(Bio bio) override {
    co_return bio.op == BioOp::flush ? ok() : errno_status(EIO);
  }

  std::string table() const override { return args_; }
  std::vector<std::shared_ptr<BlockDevice>> devices() const override {
    if (dev_) return {dev_};
    return {};
  }

 private:
  std::string args_;
  std::shared_ptr<BlockDevice> dev_;
};

}  // namespace

DMNBD_REGISTER_TARGET("error", ErrorTarget, 1, 7, 0);

}  // namespace dmnbd
