// A cache of fixed-size metadata blocks of one device (the kernel's dm-bufio),
// for exception stores, dirty logs, superblocks and hash trees. A reader holds
// a block through a Ref while it uses the bytes; changed blocks are marked
// dirty and stay in memory until written back. Readers of the same block
// share one read. Clean blocks nobody holds are kept up to a bound and then
// dropped oldest first; dirty and held blocks are never dropped.
//
// Ordering for crash safety is the caller's, with the helpers below: write
// the blocks a new superblock will point at, flush, then write the superblock
// with FUA (commit(superblock)). Dirty blocks not written back are lost when
// the cache goes.
#pragma once
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <span>
#include <unordered_map>
#include <vector>

#include "dmnbd/async_mutex.hpp"
#include "dmnbd/block_device.hpp"

namespace dmnbd {

class BlockCache {
  struct Buffer;

 public:
  // A hold on one cached block; the block stays in memory while held.
  class Ref {
   public:
    Ref() = default;
    Ref(Ref&& o) noexcept;
    Ref& operator=(Ref&& o) noexcept;
    ~Ref() { release(); }

    explicit operator bool() const { return buffer_ != nullptr; }
    uint64_t block() const;
    std::span<std::byte> data() const;
    // dm_bufio_mark_buffer_dirty(): call after changing data(); a write-back
    // takes the bytes as they are when it starts.
    void mark_dirty();
    // dm_bufio_release(): lets go early.
    void release();

   private:
    friend class BlockCache;
    Ref(BlockCache* cache, Buffer* buffer) : cache_(cache), buffer_(buffer) {}
    BlockCache* cache_ = nullptr;
    Buffer* buffer_ = nullptr;
  };

  // Blocks of `block_bytes` (a power of two, at least 512; std::invalid_argument
  // otherwise) of `dev`, which must outlive the cache.
  BlockCache(BlockDevice& dev, uint32_t block_bytes, size_t max_clean_blocks = 64);
  ~BlockCache();
  BlockCache(const BlockCache&) = delete;
  BlockCache& operator=(const BlockCache&) = delete;

  uint32_t block_bytes() const { return block_bytes_; }
  uint64_t blocks() const;  // whole blocks on the device

  // dm_bufio_read(): the block's bytes, read from the device unless cached.
  // A block past the end: EINVAL.
  Task<Status> read(uint64_t block, Ref& out);
  // dm_bufio_new(): the block without reading it; zeroes unless it is cached.
  Task<Status> new_block(uint64_t block, Ref& out);

  // Writes every dirty block, in ascending order (adjacent ones in one bio),
  // without a flush. A block that fails stays dirty; the first error returns.
  Task<Status> write_dirty();
  // dm_bufio_write_dirty_buffers() and a flush: everything written is durable.
  Task<Status> commit();
  // The transaction commit: every dirty block but `superblock` is written and
  // flushed before `superblock` is written with FUA, so the superblock on disk
  // after a crash is the old one or the new one, never one pointing at blocks
  // that did not reach the disk.
  Task<Status> commit(const Ref& superblock);

  // dm_bufio_forget(): drops the block if it is cached, clean and not held
  // (a hint: otherwise nothing happens). True if it was dropped.
  bool forget(uint64_t block);

  size_t cached_blocks() const;
  size_t dirty_blocks() const;

 private:
  struct Buffer {
    uint64_t block = 0;
    std::unique_ptr<std::byte[]> data;
    unsigned holds = 0;  // Refs, readers waiting for it, and write-backs
    bool dirty = false;
    bool loading = false;  // a read from the device is in flight
    Status load_error;
    std::vector<std::function<void()>> waiters;  // readers waiting for the load
    bool in_lru = false;
    std::list<Buffer*>::iterator lru;
  };

  struct WriteRun;

  Task<Status> get(uint64_t block, bool read_it, Ref& out);
  void hold(Buffer& b);                      // under mutex_
  void unhold(Buffer& b);                    // under mutex_
  void trim();                               // under mutex_: drops clean blocks over the bound
  bool loading_now(const Buffer& b) const {  // a cache hit needs no wait unless still loading
    std::lock_guard lk(mutex_);
    return b.loading;
  }
  std::vector<WriteRun> take_for_write(const uint64_t* skip, const uint64_t* only);
  Task<Status> write_runs(std::vector<WriteRun>& runs, uint32_t flags);

  BlockDevice& dev_;
  const uint32_t block_bytes_;
  const uint64_t block_sectors_;
  const size_t max_clean_;
  AsyncMutex writeback_mutex_;  // one write-back at a time, so their order is the callers'
  mutable std::mutex mutex_;    // everything below
  std::unordered_map<uint64_t, std::shared_ptr<Buffer>> buffers_;
  std::list<Buffer*> lru_;  // clean, loaded, not held; oldest first
};

}  // namespace dmnbd
