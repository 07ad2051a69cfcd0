// unstriped <N> <chunk> <stripe#> <dev> <offset>: one leg of a RAID0 built
// over `dev`, as a device of its own. Sectors are the target's own, as in
// kernels with the 2026 fix "dm-unstripe: fix mapping bug when there are
// multiple targets in a table" (older ones used the mapped device's sector,
// which only matters for a line that does not start at sector 0).
#include <charconv>
#include <string_view>

#include "dmnbd/target.hpp"

namespace dmnbd {
namespace {

class UnstripedTarget final : public Target {
 public:
  UnstripedTarget(const TargetContext& ctx, TargetArgs args) {
    if (args.size() != 5) throw TargetError("Invalid number of arguments");
    if (!parse_u32(args[0], stripes_) || stripes_ == 0) throw TargetError("Invalid stripe count");
    if (!parse_u32(args[1], chunk_) || chunk_ == 0) throw TargetError("Invalid chunk_size");
    if (!parse_u32(args[2], stripe_)) throw TargetError("Invalid stripe number");
    // The kernel's test: stripe == N passes, and with one stripe any number does.
    if (stripe_ > stripes_ && stripes_ > 1)
      throw TargetError("Please provide stripe between [0, # of stripes]");
    dev_name_ = args[3];
    try {
      dev_ = ctx.resolver.open(dev_name_, ctx.read_only);
    } catch (const TargetError& e) {
      throw TargetError(std::string("Couldn't get striped device (") + e.what() + ")");
    }
    start_ = parse_sector(args[4], "Invalid striped device offset");
    if (ctx.length % chunk_) throw TargetError("Target length not divisible by chunk size");
    length_ = ctx.length;
  }

  Task<Status> map(Bio bio) override {
    // Nor discards: its devices cannot be trimmed, so a discard changes nothing.
    if (bio.op == BioOp::discard) co_return ok();
    const uint64_t mapped = map_sector(bio.sector);
    if (mapped + bio.sectors > dev_->sectors()) co_return errno_status(EIO);  // past the end
    co_return co_await dev_->submit(bio.at(mapped));
  }

  Task<Status> block_status(uint64_t sector, uint64_t count, ExtentList& out) override {
    const uint64_t want = std::min(count, chunk_ - sector % chunk_);
    const uint64_t mapped = map_sector(sector);
    if (mapped + want > dev_->sectors()) {
      out.append(want, 0);
      co_return ok();
    }
    co_return co_await dev_->block_status(mapped, want, out);
  }

  std::string table() const override {
    return std::to_string(stripes_) + " " + std::to_string(chunk_) + " " + std::to_string(stripe_) +
           " " + dev_name_ + " " + std::to_string(start_);
  }

  uint64_t max_io_len() const override { return chunk_; }
  Task<Status> direct_access(uint64_t sector, uint64_t count, const DirectAccess& how) override {
    const uint64_t mapped = map_sector(sector);
    if (mapped + count > dev_->sectors()) co_return errno_status(EIO);  // past the end
    co_return co_await dev_->direct_access(mapped, count, how);
  }
  // The kernel sends this target no flushes (num_flush_bios is 0); the default
  // flush still reaches its device, keeping dmnbd's promise that a FLUSH syncs
  // every backing file. Its area is (offset, target length), as iterate_devices says.
  std::vector<DeviceArea> device_areas() const override { return {{dev_, start_, length_}}; }

 private:
  // map_to_core(): skip the other legs' chunks of every earlier row, then the
  // earlier legs' chunks of this row.
  uint64_t map_sector(uint64_t sector) const {
    const uint64_t row = sector / chunk_;
    return start_ + sector + uint64_t{stripes_ - 1} * chunk_ * row + uint64_t{stripe_} * chunk_;
  }

  uint32_t stripes_ = 0, chunk_ = 0, stripe_ = 0;
  std::string dev_name_;
  uint64_t start_ = 0;
  uint64_t length_ = 0;
  std::shared_ptr<BlockDevice> dev_;
};

}  // namespace

DMNBD_REGISTER_TARGET("unstriped", UnstripedTarget, 1, 1, 0);

}  // namespace dmnbd
