#include "buffer_pool.hpp"

#include <algorithm>

namespace dmnbd::nbd {

BufferPool::~BufferPool() {
  while (!blocks_.empty()) forget(blocks_.size() - 1);
}

Buffer BufferPool::take(size_t size) {
  const size_t n = blocks_.size();
  for (size_t i = 0; i < n; ++i) {
    Block* block = blocks_[(cursor_ + i) % n];
    if (block->views == 0 && block->capacity >= size) {
      cursor_ = (cursor_ + i + 1) % n;
      return Buffer(block, block->bytes.get(), size);
    }
  }
  const size_t capacity = std::max(size, kMinBlock);
  auto* block = new Block{std::make_unique_for_overwrite<std::byte[]>(capacity), capacity};
  remember(block);
  return Buffer(block, block->bytes.get(), size);
}

// Keeps `block` for reuse within the budget, dropping free blocks (too small,
// or the workload changed) to make room. A block that does not fit is freed
// with its last view.
void BufferPool::remember(Block* block) {
  for (size_t i = 0; i < blocks_.size() && pooled_bytes_ + block->capacity > kMaxPooledBytes;) {
    if (blocks_[i]->views == 0)
      forget(i);
    else
      ++i;
  }
  if (pooled_bytes_ + block->capacity > kMaxPooledBytes) return;
  block->pooled = true;
  blocks_.push_back(block);
  pooled_bytes_ += block->capacity;
  cursor_ = 0;
}

// Drops blocks_[index] from the pool; a block still viewed is freed by its last view.
void BufferPool::forget(size_t index) {
  Block* block = blocks_[index];
  pooled_bytes_ -= block->capacity;
  blocks_[index] = blocks_.back();
  blocks_.pop_back();
  block->pooled = false;
  if (block->views == 0) delete block;
}

}  // namespace dmnbd::nbd
