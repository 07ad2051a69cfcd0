// snapshot-origin <origin>
// The origin device with its snapshots kept: before a write changes a chunk
// that a snapshot of <origin> has not copied yet, the chunk is copied to
// that snapshot's COW (once per chunk; other writes to it wait for that
// copy), and the write is only acknowledged once the copy is on disk.
// Reads pass through. Like the kernel's, the line must start at sector 0.
#include "dmnbd/target.hpp"
#include "origin_writes.hpp"
#include "origins.hpp"

namespace dmnbd::snapshot {
namespace {

class OriginTarget final : public Target {
 public:
  OriginTarget(const TargetContext& ctx, TargetArgs args) : length_(ctx.length) {
    if (args.size() != 1) throw TargetError("origin: incorrect number of arguments");
    dev_name_ = args[0];
    try {
      dev_ = ctx.get_device(dev_name_);
    } catch (const TargetError& e) {
      throw TargetError(std::string("Cannot get target device (") + e.what() + ")");
    }
    writes_ = OriginWrites::of(dev_->identity());
  }

  Task<Status> map(Bio bio) override {
    switch (bio.op) {
      case BioOp::read:
      case BioOp::flush:
        break;
      case BioOp::discard:
        // The kernel's origin takes no discards: one that arrives anyway
        // changes nothing, so no snapshot loses the chunk.
        co_return ok();
      case BioOp::write:
      case BioOp::write_zeroes: {
        // Counted until it reaches the origin: a snapshot resuming meanwhile waits for it.
        const OriginWrites::Guard in_flight(writes_);
        co_await copy_out_to_snapshots(dev_->identity(), bio.sector, bio.sectors);
        co_return co_await dev_->submit(bio);
      }
    }
    co_return co_await dev_->submit(bio);
  }

  Task<Status> block_status(uint64_t sector, uint64_t count, ExtentList& out) override {
    co_return co_await dev_->block_status(sector, count, out);
  }

  // Reads in place; writes never, as each must copy out first.
  Task<Status> direct_access(uint64_t sector, uint64_t count, const DirectAccess& how) override {
    if (how.write) co_return errno_status(EOPNOTSUPP);
    co_return co_await dev_->direct_access(sector, count, how);
  }

  std::string table() const override { return dev_name_; }
  std::vector<DeviceArea> device_areas() const override { return {{dev_, 0, length_}}; }

 private:
  const uint64_t length_;
  std::string dev_name_;
  std::shared_ptr<BlockDevice> dev_;
  std::shared_ptr<OriginWrites> writes_;
};

}  // namespace

DMNBD_REGISTER_TARGET("snapshot-origin", OriginTarget, 1, 9, 0);

}  // namespace dmnbd::snapshot
