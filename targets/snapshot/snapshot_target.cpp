// snapshot <origin> <COW> <P|PO|N> <chunk sectors> [<#features> <feature>...]
//   features: discard_zeroes_cow, discard_passdown_origin (needs the first)
// snapshot-merge <origin> <COW> <P|PO> <chunk sectors> [<#features> <feature>...]
// A view of <origin> as it was when the snapshot was made: reads come from
// the COW where the chunk was copied there, else from the origin; writes go
// to the COW, copying the chunk first unless they cover it. The origin's
// writes must go through a snapshot-origin line on the same device, which
// copies each chunk out before changing it. Like the kernel's, the line must
// start at sector 0 and be alone in its table.
//
// snapshot-merge takes the origin device's place: it copies the COW's chunks
// back into <origin> in the background, newest first, and meanwhile reads
// and writes chunks not merged yet in the COW. Loaded over the COW of a live
// snapshot, it takes that snapshot over (which then reads as Invalid);
// loaded over a COW alone, it merges what the COW holds on disk, so a merge
// cut short by a restart goes on where it stopped.
#include <spdlog/spdlog.h>

#include <optional>

#include "dmnbd/arg_set.hpp"
#include "dmnbd/target.hpp"
#include "exception_store.hpp"
#include "origins.hpp"
#include "snapshot.hpp"

namespace dmnbd::snapshot {
namespace {

class SnapshotTarget : public Target {
 public:
  SnapshotTarget(const TargetContext& ctx, TargetArgs args, bool merge = false)
      : merge_(merge), length_(ctx.length), raise_event_(ctx.raise_event) {
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
    // Read-write even under a read-only table: origin writes copy out to it.
    cow_ = open_device(ctx, cow_name_, "Cannot get COW device", false);
    if (cow_->identity() == origin_->identity())
      throw TargetError("COW device cannot be the same as origin device");

    std::unique_ptr<ExceptionStore> store;
    try {
      store = make_exception_store(args[2], args[3], cow_);
    } catch (const StoreError& e) {
      // The kernel answers with its ctr words only; the store's say why.
      throw TargetError(std::string(e.ctr_error()) + " (" + e.what() + ")");
    }
    if (merge_ && !store->persistent())
      throw TargetError("Snapshot exception store does not support snapshot-merge.");
    if (merge_)
      for (const auto& s : Origins::instance().snapshots_of(origin_->identity()))
        if (s->merging() && s->cow()->identity() != cow_->identity())
          throw TargetError("A snapshot is already merging.");
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
    // A line another took the snapshot over from gets no more I/O.
    if (!snapshot_->owned_by(this)) co_return errno_status(EIO);
    if (merge_) co_return co_await snapshot_->merge_io(bio);
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
    co_return co_await flush();
  }

  // snapshot: to the COW; snapshot-merge: to the origin and the COW.
  Task<Status> flush() override {
    if (!snapshot_->owned_by(this)) co_return errno_status(EIO);
    if (merge_) co_return co_await snapshot_->merge_flush();
    co_return co_await snapshot_->flush();
  }

  Task<void> presuspend() override {
    if (merge_ && snapshot_->owned_by(this)) co_await snapshot_->pause_merge();
  }

  Task<void> resume() override {
    // A line the snapshot was taken from stays out (the kernel leaves the
    // handover's source invalid).
    if (claimed_ && !snapshot_->owned_by(this)) co_return;
    claimed_ = true;
    snapshot_->claim(this, raise_event_);
    snapshot_->activate(length_);
    if (merge_) {
      snapshot_->start_merge(co_await asio::this_coro::executor);
      co_return;
    }
    // Origin writes that began before the snapshot was active made no copy
    // for it: they land before it serves I/O.
    co_await snapshot_->wait_for_earlier_origin_writes();
  }

  Task<void> teardown() override {
    if (merge_ && snapshot_->owned_by(this)) co_await snapshot_->stop_merge();
    co_await snapshot_->drain();
  }

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

  std::string status() const override {
    return snapshot_->owned_by(this) ? snapshot_->status() : "Invalid";
  }

  std::vector<DeviceArea> device_areas() const override {
    return {{origin_, 0, length_}, {cow_, 0, cow_->sectors()}};
  }

 private:
  // The kernel's ctr error, with the resolver's reason after it. In the
  // table's mode unless `read_only` says otherwise.
  static std::shared_ptr<BlockDevice> open_device(const TargetContext& ctx, const std::string& name,
                                                  const char* error,
                                                  std::optional<bool> read_only = std::nullopt) {
    try {
      return read_only ? ctx.resolver.open(name, *read_only) : ctx.get_device(name);
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

  const bool merge_;
  const uint64_t length_;
  const std::function<void()> raise_event_;
  std::string origin_name_, cow_name_;
  std::shared_ptr<BlockDevice> origin_, cow_;
  bool discard_zeroes_cow_ = false;
  bool discard_passdown_origin_ = false;
  std::shared_ptr<Snapshot> snapshot_;
  bool must_load_ = false;
  bool claimed_ = false;  // resumed once: the snapshot was this line's
};

class SnapshotMergeTarget final : public SnapshotTarget {
 public:
  SnapshotMergeTarget(const TargetContext& ctx, TargetArgs args)
      : SnapshotTarget(ctx, args, true) {}
};

}  // namespace

DMNBD_REGISTER_TARGET("snapshot", SnapshotTarget, 1, 16, 0);
DMNBD_REGISTER_TARGET("snapshot-merge", SnapshotMergeTarget, 1, 5, 0);

}  // namespace dmnbd::snapshot
