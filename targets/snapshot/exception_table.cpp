#include "exception_table.hpp"

#include <algorithm>
#include <stdexcept>
#include <utility>

namespace dmnbd::snapshot {
namespace {

// At most 90% of the slots in use; grown by half when an insert would pass
// that, so right after growing 16 * 1.5 / 0.9 = 26.7 bytes per exception.
size_t max_load(size_t capacity) {
  return capacity * 9 / 10;
}
size_t grown(size_t capacity) {
  return std::max<size_t>(2, capacity + (capacity + 1) / 2);
}
// Erasing (a merge) shrinks the table once it is less than half full, to
// three quarters full: never more than 32 bytes per exception.
size_t shrunk(size_t size) {
  return std::max<size_t>(2, size + size / 3 + 1);
}

// Origin chunks come in runs: mix every bit into the top ones (murmur3's
// finaliser) before mapping onto any capacity, power of two or not.
uint64_t mix(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ULL;
  k ^= k >> 33;
  return k;
}

}  // namespace

size_t ExceptionTable::home(Chunk old_chunk) const {
  return static_cast<size_t>((static_cast<unsigned __int128>(mix(old_chunk)) * capacity_) >> 64);
}

// How far `pos` is from where `old_chunk` would rather be.
size_t ExceptionTable::distance(size_t pos, Chunk old_chunk) const {
  const size_t h = home(old_chunk);
  return pos >= h ? pos - h : pos + capacity_ - h;
}

size_t ExceptionTable::find(Chunk old_chunk) const {
  if (capacity_ == 0 || old_chunk == kEmpty) return capacity_;
  size_t pos = home(old_chunk);
  for (size_t dist = 0;; ++dist, pos = next(pos)) {
    const Slot& s = slots_[pos];
    if (s.old_chunk == kEmpty) return capacity_;
    if (s.old_chunk == old_chunk) return pos;
    // Robin Hood keeps every run sorted by distance: ours would be here.
    if (distance(pos, s.old_chunk) < dist) return capacity_;
  }
}

bool ExceptionTable::lookup(Chunk old_chunk, Chunk& new_chunk) const {
  const size_t pos = find(old_chunk);
  if (pos == capacity_) return false;
  new_chunk = slots_[pos].new_chunk;
  return true;
}

void ExceptionTable::place(Slot s) {
  size_t pos = home(s.old_chunk);
  for (size_t dist = 0;; ++dist, pos = next(pos)) {
    Slot& here = slots_[pos];
    if (here.old_chunk == kEmpty) {
      here = s;
      ++size_;
      return;
    }
    // The richer one (closer to home) gives up its slot and moves on.
    const size_t d = distance(pos, here.old_chunk);
    if (d < dist) {
      std::swap(s, here);
      dist = d;
    }
  }
}

void ExceptionTable::insert(Chunk old_chunk, Chunk new_chunk) {
  if (old_chunk == kEmpty) throw std::invalid_argument("ExceptionTable: origin chunk out of range");
  if (size_t pos = find(old_chunk); pos != capacity_) {
    slots_[pos].new_chunk = new_chunk;
    return;
  }
  if (size_ + 1 > max_load(capacity_)) grow();
  place({old_chunk, new_chunk});
}

bool ExceptionTable::erase(Chunk old_chunk) {
  size_t pos = find(old_chunk);
  if (pos == capacity_) return false;
  // Backward shift: the followers of the run move one nearer home.
  for (size_t n = next(pos); slots_[n].old_chunk != kEmpty && distance(n, slots_[n].old_chunk) > 0;
       n = next(n)) {
    slots_[pos] = slots_[n];
    pos = n;
  }
  slots_[pos] = {kEmpty, 0};
  --size_;
  if (size_ == 0) {
    slots_.reset();
    capacity_ = 0;
  } else if (size_ * 2 < capacity_) {
    rehash(shrunk(size_));
  }
  return true;
}

void ExceptionTable::grow() {
  rehash(grown(capacity_));
}

void ExceptionTable::rehash(size_t capacity) {
  std::unique_ptr<Slot[]> old = std::make_unique_for_overwrite<Slot[]>(capacity);
  for (size_t i = 0; i < capacity; ++i) old[i] = {kEmpty, 0};
  std::swap(old, slots_);
  const size_t old_capacity = std::exchange(capacity_, capacity);
  size_ = 0;
  for (size_t i = 0; i < old_capacity; ++i)
    if (old[i].old_chunk != kEmpty) place(old[i]);
}

}  // namespace dmnbd::snapshot
