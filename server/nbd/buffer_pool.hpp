// Data buffers for one connection: request payloads, read results and the
// receive buffer. A Buffer is a view of a pooled block; several views may share
// one block (small WRITE payloads stay where the socket read put them), and the
// block is free again once the last view is gone. Blocks are not zero-filled:
// every byte is overwritten by the socket or device read that fills it.
//
// Single-threaded, like the session that owns it, so the view counts are
// plain integers.
#pragma once
#include <cstddef>
#include <memory>
#include <span>
#include <utility>
#include <vector>

namespace dmnbd::nbd {

class Buffer {
 public:
  Buffer() = default;
  Buffer(const Buffer& other) : Buffer(other.block_, other.data_, other.size_) {}
  Buffer(Buffer&& other) noexcept
      : block_(std::exchange(other.block_, nullptr)),
        data_(std::exchange(other.data_, nullptr)),
        size_(std::exchange(other.size_, 0)) {}
  Buffer& operator=(Buffer other) noexcept {
    std::swap(block_, other.block_);
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
    return *this;
  }
  ~Buffer() { release(); }

  std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  std::span<std::byte> span() const { return {data_, size_}; }

  // True when no other view shares this buffer's block.
  bool sole_owner() const { return block_ && block_->views == 1; }

  // The bytes [offset, offset + size) of this buffer, sharing its block.
  Buffer slice(size_t offset, size_t size) const { return Buffer(block_, data_ + offset, size); }

 private:
  friend class BufferPool;
  struct Block {
    std::unique_ptr<std::byte[]> bytes;
    size_t capacity = 0;
    size_t views = 0;
    bool pooled = false;  // the pool frees it; otherwise the last view does
  };
  Buffer(Block* block, std::byte* data, size_t size) : block_(block), data_(data), size_(size) {
    if (block_) ++block_->views;
  }
  void release() {
    if (block_ && --block_->views == 0 && !block_->pooled) delete block_;
    block_ = nullptr;
  }

  Block* block_ = nullptr;
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

class BufferPool {
 public:
  // Small buffers come from blocks of at least this size, so any free block
  // serves any small request.
  static constexpr size_t kMinBlock = 64u << 10;
  // Blocks kept for reuse, in bytes; beyond that blocks go back to malloc.
  static constexpr size_t kMaxPooledBytes = 16u << 20;

  BufferPool() = default;
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;
  ~BufferPool();

  // `size` bytes, from a free pooled block when one is big enough.
  Buffer take(size_t size);

  size_t pooled_bytes() const { return pooled_bytes_; }

 private:
  using Block = Buffer::Block;
  void remember(Block* block);
  void forget(size_t index);

  std::vector<Block*> blocks_;
  size_t pooled_bytes_ = 0;
  size_t cursor_ = 0;  // where the next search starts, so reuse rotates
};

}  // namespace dmnbd::nbd
