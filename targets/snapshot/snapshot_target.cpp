// snapshot <origin> <COW> <P|PO|N> <chunk sectors> [<#features> <feature>...]
//   features: discard_zeroes_cow, discard_passdown_origin (needs the first)
// A view of <origin> as it was when the snapshot was made: reads come from
// the COW where the chunk was copied there, else from the origin; writes go
// to the COW, copying the chunk first unless they cover it. The origin's
// writes must go through a snapshot-origin line on the same device, which
// copies each chunk out before changing it. Like the kernel's, the line must
// start at sector 0 and be alone in its table.
#include <spdlog/spdlog.h>

#include "dmnbd/arg_set.hpp"
#include "dmnbd/target.hpp"
#include "exception_store.hpp"
#include "origins.hpp"
#include "snapshot.hpp"

namespace dmnbd::snapshot {
namespace {

class SnapshotTarget final : public Target {
 public:
  SnapshotTarget(const TargetContext& ctx, TargetArgs args)
      : length_(ctx.length), raise_event_(ctx.raise_event) {
    if (args.size() < 4) throw TargetError("requires 4 or more arguments");
    ArgSet as(args);
    as.consume(4);
    parse_features(as);

    origin_name_ = args[0];
    cow_name_ = args[1];
    origin_ = open_device(ctx, origin_name_, "Cannot get origin device");
    // Only the kernel's check by device number: the same file under two
    // names is still caught below, once both are open.
    if (cow_name_ == origin_name_)
      throw TargetError("COW device cannot be the same as origin device");
    cow_ = open_device(ctx, cow_name_, "Cannot get COW device");
    if (cow_->identity() == origin_->identity())
      throw TargetError("COW device cannot be the same as origin device");

    std::unique_ptr<ExceptionStore> store;
    try {
      store = make_exception_store(args[2], args[3], cow_);
    } catch (const StoreError& e) {
      // The kernel answers with its ctr words only; the store's say why.
      throw TargetError(std::string(e.ctr_error()) + " (" + e.what() + ")");
    }
    // A live snapshot with this COW is taken over, not read again: its
    // exceptions and copies in flight are the truth (the kernel's handover).
    snapshot_ = Origins::instance().sharing_cow(origin_->identity(), cow_->identity());
    if (!snapshot_) {
      snapshot_ = std::make_shared<Snapshot>(origin_, cow_, std::move(store), raise_event_);
      must_load_ = true;
    }
  }

  Task<void> open() override {
    if (must_load_) co_await snapshot_->load();
  }

  Task<Status> map(Bio bio) override {
    switch (bio.op) {
      case BioOp::read:
        co_return co_await snapshot_->read(bio);
      case BioOp::write:
      case BioOp::write_zeroes:
        co_return co_await snapshot_->write(bio);
      case BioOp::discard:
        // Without discard_zeroes_cow the kernel's snapshot takes no discards;
        // one that arrives anyway changes nothing, as discards may.
        if (!discard_zeroes_cow_) co_return ok();
        co_return co_await snapshot_->discard(bio, true, discard_passdown_origin_);
      case BioOp::flush:
        break;
    }
    co_return co_await snapshot_->flush();
  }

  Task<Status> flush() override { co_return co_await snapshot_->flush(); }

  Task<void> resume() override {
    snapshot_->activate(length_);
    co_return;
  }

  Task<void> teardown() override { co_await snapshot_->drain(); }

  uint64_t max_io_len() const override { return snapshot_->chunk_sectors(); }

  std::string table() const override {
    std::string out = origin_name_ + " " + cow_name_ + " " + snapshot_->store().table_word() + " " +
                      std::to_string(snapshot_->chunk_sectors());
    const unsigned features = unsigned(discard_zeroes_cow_) + unsigned(discard_passdown_origin_);
    if (features) {
      out += " " + std::to_string(features);
      if (discard_zeroes_cow_) out += " discard_zeroes_cow";
      if (discard_passdown_origin_) out += " discard_passdown_origin";
    }
    return out;
  }

  std::string status() const override { return snapshot_->status(); }

  std::vector<DeviceArea> device_areas() const override {
    return {{origin_, 0, length_}, {cow_, 0, cow_->sectors()}};
  }

 private:
  // The kernel's ctr error, with the resolver's reason after it.
  static std::shared_ptr<BlockDevice> open_device(const TargetContext& ctx, const std::string& name,
                                                  const char* error) {
    try {
      return ctx.get_device(name);
    } catch (const TargetError& e) {
      throw TargetError(std::string(error) + " (" + e.what() + ")");
    }
  }

  // parse_snapshot_features()
  void parse_features(ArgSet& as) {
    if (as.left() == 0) return;
    uint32_t count = as.read_group(0, 2, "Invalid number of feature arguments");
    for (; count > 0; --count) {
      const std::string& word = *as.shift();
      if (same_word(word, "discard_zeroes_cow"))
        discard_zeroes_cow_ = true;
      else if (same_word(word, "discard_passdown_origin"))
        discard_passdown_origin_ = true;
      else
        throw TargetError("Unrecognised feature requested");
    }
    if (discard_passdown_origin_ && !discard_zeroes_cow_)
      throw TargetError("discard_passdown_origin feature depends on discard_zeroes_cow");
  }

  const uint64_t length_;
  const std::function<void()> raise_event_;
  std::string origin_name_, cow_name_;
  std::shared_ptr<BlockDevice> origin_, cow_;
  bool discard_zeroes_cow_ = false;
  bool discard_passdown_origin_ = false;
  std::shared_ptr<Snapshot> snapshot_;
  bool must_load_ = false;
};

}  // namespace

DMNBD_REGISTER_TARGET("snapshot", SnapshotTarget, 1, 16, 0);

}  // namespace dmnbd::snapshot
