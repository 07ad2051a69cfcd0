// The snapshot's completed exceptions in memory: origin chunk -> COW chunk.
// A snapshot of a large origin may hold millions of them, so this is an
// open-addressing table of 16-byte slots (Robin Hood probing, deletion by
// backward shift, so no tombstones), grown 1.5x at 90% load: at most 32
// bytes per exception at any size, 16/0.9 after an insert that did not
// grow it; erasing shrinks it again below half full. An origin chunk of UINT64_MAX marks an empty
// slot (no origin has that many chunks; COW chunk 0 is real in a transient store).
//
// Not thread-safe: the snapshot target locks around it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "exception_store.hpp"

namespace dmnbd::snapshot {

class ExceptionTable {
 public:
  ExceptionTable() = default;
  ExceptionTable(ExceptionTable&&) noexcept = default;
  ExceptionTable& operator=(ExceptionTable&&) noexcept = default;

  bool lookup(Chunk old_chunk, Chunk& new_chunk) const;
  // Adds or replaces the exception of `old_chunk` (< UINT64_MAX).
  void insert(Chunk old_chunk, Chunk new_chunk);
  // False when `old_chunk` had none.
  bool erase(Chunk old_chunk);
  size_t size() const { return size_; }
  // The heap memory of the slots, empty ones included.
  size_t memory_bytes() const { return capacity_ * sizeof(Slot); }
  size_t capacity() const { return capacity_; }

 private:
  struct Slot {
    Chunk old_chunk;
    Chunk new_chunk;
  };
  static constexpr Chunk kEmpty = ~Chunk{0};

  size_t home(Chunk old_chunk) const;
  size_t distance(size_t pos, Chunk old_chunk) const;
  size_t next(size_t pos) const { return pos + 1 == capacity_ ? 0 : pos + 1; }
  // The slot holding `old_chunk`, or capacity_.
  size_t find(Chunk old_chunk) const;
  void place(Slot s);  // a key not present, with room for it
  void grow();
  void rehash(size_t capacity);

  std::unique_ptr<Slot[]> slots_;
  size_t capacity_ = 0;
  size_t size_ = 0;
};

}  // namespace dmnbd::snapshot
