// The "N" exception store: the kernel's dm-snap-transient.c. Nothing but the
// copied data goes to the COW: the k-th exception takes COW chunk k, from
// chunk 0, and the exceptions live only in the snapshot's table.
#include <map>
#include <mutex>

#include "commit_order.hpp"
#include "exception_store.hpp"

namespace dmnbd::snapshot {
namespace {

class TransientStore final : public ExceptionStore {
 public:
  TransientStore(uint32_t chunk_sectors, std::shared_ptr<BlockDevice> cow)
      : cow_(std::move(cow)), chunk_(chunk_sectors) {}

  uint32_t chunk_sectors() const override { return chunk_; }
  std::string table_word() const override { return "N"; }
  bool persistent() const override { return false; }

  Task<Status> read_metadata(std::function<void(ChunkPair)>, bool& valid) override {
    valid = true;
    co_return ok();
  }

  Status prepare_exception(Chunk, Chunk& new_chunk) override {
    std::lock_guard lk(mutex_);
    if (cow_->sectors() < next_free_ + chunk_) return errno_status(ENOSPC);
    new_chunk = next_free_ / chunk_;
    next_free_ += chunk_;
    order_.take_ticket(new_chunk);
    return ok();
  }

  // Nothing to write; but the answers keep allocation order, as dm-snap.c
  // completes exceptions in that order whatever the store.
  Task<Status> commit_exception(ChunkPair e, bool copied) override {
    // Named, not in the condition: GCC 12 mis-builds some co_await there.
    const bool prepared = co_await order_.wait_turn(e.new_chunk);
    if (!prepared) co_return errno_status(EINVAL);  // never prepared
    order_.end_turn();
    co_return copied ? ok() : errno_status(EIO);
  }

  Task<void> drop_snapshot() override { co_return; }

  StoreUsage usage() const override {
    std::lock_guard lk(mutex_);
    return {
        .total_sectors = cow_->sectors(), .sectors_allocated = next_free_, .metadata_sectors = 0};
  }

  // The kernel's transient type has no merge methods at all.
  Task<Status> prepare_merge(Chunk&, Chunk&, unsigned& count) override {
    count = 0;
    co_return errno_status(EOPNOTSUPP);
  }
  Task<Status> commit_merge(unsigned) override { co_return errno_status(EOPNOTSUPP); }

 private:
  const std::shared_ptr<BlockDevice> cow_;
  const uint32_t chunk_;  // sectors, never 0
  CommitOrder order_;
  mutable std::mutex mutex_;  // everything below
  uint64_t next_free_ = 0;    // sectors
};

}  // namespace

std::unique_ptr<ExceptionStore> make_transient_store(uint32_t chunk_sectors,
                                                     std::shared_ptr<BlockDevice> cow) {
  return std::make_unique<TransientStore>(chunk_sectors, std::move(cow));
}

}  // namespace dmnbd::snapshot
