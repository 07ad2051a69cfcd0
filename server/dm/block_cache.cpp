#include "dmnbd/block_cache.hpp"

#include <algorithm>
#include <bit>
#include <cstring>
#include <stdexcept>

#include "dmnbd/park.hpp"
#include "dmnbd/when_all.hpp"

namespace dmnbd {
namespace {

// Adjacent dirty blocks go out in one bio of at most this many bytes.
constexpr size_t kMaxRunBytes = 1 << 20;

}  // namespace

// ---- Ref

BlockCache::Ref::Ref(Ref&& o) noexcept
    : cache_(std::exchange(o.cache_, nullptr)), buffer_(std::exchange(o.buffer_, nullptr)) {}

BlockCache::Ref& BlockCache::Ref::operator=(Ref&& o) noexcept {
  if (this != &o) {
    release();
    cache_ = std::exchange(o.cache_, nullptr);
    buffer_ = std::exchange(o.buffer_, nullptr);
  }
  return *this;
}

uint64_t BlockCache::Ref::block() const {
  return buffer_->block;
}

std::span<std::byte> BlockCache::Ref::data() const {
  return {buffer_->data.get(), cache_->block_bytes_};
}

void BlockCache::Ref::mark_dirty() {
  std::lock_guard lk(cache_->mutex_);
  buffer_->dirty = true;
}

void BlockCache::Ref::release() {
  if (!buffer_) return;
  std::lock_guard lk(cache_->mutex_);
  cache_->unhold(*std::exchange(buffer_, nullptr));
  cache_->trim();
}

// ---- BlockCache

BlockCache::BlockCache(BlockDevice& dev, uint32_t block_bytes, size_t max_clean_blocks)
    : dev_(dev),
      block_bytes_(block_bytes),
      block_sectors_(block_bytes >> kSectorShift),
      max_clean_(max_clean_blocks) {
  if (block_bytes < kSectorSize || !std::has_single_bit(block_bytes))
    throw std::invalid_argument("block size must be a power of two of at least 512 bytes");
}

BlockCache::~BlockCache() = default;

uint64_t BlockCache::blocks() const {
  return dev_.sectors() / block_sectors_;
}

Task<Status> BlockCache::read(uint64_t block, Ref& out) {
  co_return co_await get(block, true, out);
}

Task<Status> BlockCache::new_block(uint64_t block, Ref& out) {
  co_return co_await get(block, false, out);
}

void BlockCache::hold(Buffer& b) {
  if (b.in_lru) {
    lru_.erase(b.lru);
    b.in_lru = false;
  }
  ++b.holds;
}

void BlockCache::unhold(Buffer& b) {
  if (--b.holds == 0 && !b.dirty && !b.loading && !b.load_error) {
    lru_.push_back(&b);
    b.lru = std::prev(lru_.end());
    b.in_lru = true;
  }
}

void BlockCache::trim() {
  while (lru_.size() > max_clean_) {
    Buffer* oldest = lru_.front();
    lru_.pop_front();
    buffers_.erase(oldest->block);
  }
}

Task<Status> BlockCache::get(uint64_t block, bool read_it, Ref& out) {
  out.release();
  if (block >= blocks()) co_return errno_status(EINVAL);
  std::shared_ptr<Buffer> b;
  bool load = false;
  {
    std::lock_guard lk(mutex_);
    if (auto it = buffers_.find(block); it != buffers_.end()) {
      b = it->second;
    } else {
      b = std::make_shared<Buffer>();
      b->block = block;
      b->data = std::make_unique<std::byte[]>(block_bytes_);  // zeroed, for new_block()
      b->loading = load = read_it;
      buffers_.emplace(block, b);
    }
    hold(*b);
  }
  if (load) {
    const Status st = co_await dev_.submit({.op = BioOp::read,
                                            .sector = block * block_sectors_,
                                            .sectors = block_sectors_,
                                            .data = {b->data.get(), block_bytes_}});
    std::vector<std::function<void()>> waiters;
    {
      std::lock_guard lk(mutex_);
      b->loading = false;
      b->load_error = st;
      waiters.swap(b->waiters);
      // A failed read leaves nothing cached: the next reader tries again.
      if (st) buffers_.erase(block);
    }
    for (auto& wake : waiters) wake();
  } else if (loading_now(*b)) {
    // Someone else is reading it: share that read.
    co_await park_until_woken([this, &b](std::function<void()> wake) {
      std::unique_lock lk(mutex_);
      if (b->loading) {
        b->waiters.push_back(std::move(wake));
        return;
      }
      lk.unlock();
      wake();
    });
  }
  std::lock_guard lk(mutex_);
  if (b->load_error) {
    --b->holds;
    co_return b->load_error;
  }
  out = Ref(this, b.get());
  co_return ok();
}

bool BlockCache::forget(uint64_t block) {
  std::lock_guard lk(mutex_);
  auto it = buffers_.find(block);
  if (it == buffers_.end() || !it->second->in_lru) return false;
  lru_.erase(it->second->lru);
  buffers_.erase(it);
  return true;
}

size_t BlockCache::cached_blocks() const {
  std::lock_guard lk(mutex_);
  return buffers_.size();
}

size_t BlockCache::dirty_blocks() const {
  std::lock_guard lk(mutex_);
  return std::count_if(buffers_.begin(), buffers_.end(),
                       [](const auto& kv) { return kv.second->dirty; });
}

// Snapshots of the blocks chosen (all dirty ones but `skip`, or only `*only`),
// cut into runs of adjacent blocks; each block is held until its run is written.
struct BlockCache::WriteRun {
  uint64_t first = 0;
  std::vector<std::byte> bytes;
  std::vector<Buffer*> buffers;
};

std::vector<BlockCache::WriteRun> BlockCache::take_for_write(const uint64_t* skip,
                                                             const uint64_t* only) {
  std::vector<Buffer*> chosen;
  std::lock_guard lk(mutex_);
  if (only) {
    if (auto it = buffers_.find(*only); it != buffers_.end()) chosen.push_back(it->second.get());
  } else {
    for (auto& [block, b] : buffers_)
      if (b->dirty && !(skip && block == *skip)) chosen.push_back(b.get());
  }
  std::sort(chosen.begin(), chosen.end(), [](Buffer* a, Buffer* b) { return a->block < b->block; });
  std::vector<WriteRun> runs;
  for (Buffer* b : chosen) {
    const bool extends = !runs.empty() &&
                         runs.back().first + runs.back().buffers.size() == b->block &&
                         runs.back().bytes.size() + block_bytes_ <= kMaxRunBytes;
    if (!extends) runs.push_back({.first = b->block});
    WriteRun& run = runs.back();
    run.bytes.insert(run.bytes.end(), b->data.get(), b->data.get() + block_bytes_);
    run.buffers.push_back(b);
    b->dirty = false;
    hold(*b);
  }
  return runs;
}

Task<Status> BlockCache::write_runs(std::vector<WriteRun>& runs, uint32_t flags) {
  std::vector<Task<Status>> writes;
  for (WriteRun& run : runs)
    writes.push_back(dev_.submit({.op = BioOp::write,
                                  .sector = run.first * block_sectors_,
                                  .sectors = run.buffers.size() * block_sectors_,
                                  .data = run.bytes,
                                  .flags = flags}));
  const std::vector<Status> results = co_await when_all(writes);
  std::lock_guard lk(mutex_);
  for (size_t i = 0; i < runs.size(); ++i)
    for (Buffer* b : runs[i].buffers) {
      if (results[i]) b->dirty = true;  // still to be written
      unhold(*b);
    }
  trim();
  co_return first_error(results);
}

Task<Status> BlockCache::write_dirty() {
  auto guard = co_await writeback_mutex_.lock();
  std::vector<WriteRun> runs = take_for_write(nullptr, nullptr);
  co_return co_await write_runs(runs, 0);
}

Task<Status> BlockCache::commit() {
  auto guard = co_await writeback_mutex_.lock();
  std::vector<WriteRun> runs = take_for_write(nullptr, nullptr);
  if (Status st = co_await write_runs(runs, 0)) co_return st;
  co_return co_await dev_.submit(flush_bio());
}

Task<Status> BlockCache::commit(const Ref& superblock) {
  const uint64_t super = superblock.block();
  auto guard = co_await writeback_mutex_.lock();
  std::vector<WriteRun> runs = take_for_write(&super, nullptr);
  if (Status st = co_await write_runs(runs, 0)) co_return st;
  if (Status st = co_await dev_.submit(flush_bio())) co_return st;
  // Written whether marked dirty or not: it is the commit point.
  std::vector<WriteRun> last = take_for_write(nullptr, &super);
  co_return co_await write_runs(last, kBioFua);
}

}  // namespace dmnbd
