// P and Q of a raid4/5/6 row, md's arithmetic through ISA-L (xor_gen,
// pq_gen, gf_vect_mad over GF(2^8) with md's polynomial 0x11d): P is the
// XOR of the data blocks, Q = sum of 2^j * source j in the row's syndrome
// order (RowLayout::syndrome_sources). Rebuilding follows md's choices
// (ops_run_compute5/6, lib/raid6/recov.c): one lost data block or P comes
// back by XOR, Q is never used for it; Q only with two lost.
//
// `blocks` has one pointer per device of the row, each to `len` bytes of
// that device's part of the row; `len` is a multiple of 512 and every
// pointer 32-byte aligned (ISA-L's rule; AlignedBuffer gives that).
#pragma once
#include <cstddef>
#include <span>
#include <utility>

#include "parity_layout.hpp"

namespace dmnbd::raid {

// Page-aligned scratch memory for rows. Each thread keeps up to 16 MiB of
// freed buffers for the next ones of the same size: a fresh allocation of
// this size is an mmap, and touching it costs a page fault per page.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t bytes);
  AlignedBuffer(AlignedBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  AlignedBuffer& operator=(AlignedBuffer&&) = delete;
  ~AlignedBuffer();
  std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  std::span<std::byte> span() const { return {data_, size_}; }

 private:
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

namespace parity {

using Blocks = std::span<std::byte* const>;

// P (and Q) from the row's data blocks, into `p` and `q` (q unused for raid5).
void compute_into(const RowLayout& row, Blocks blocks, size_t len, std::byte* p, std::byte* q);
// The same, into the row's own parity blocks.
void compute(const RowLayout& row, Blocks blocks, size_t len);
// Rebuilds the blocks of devices `a` (and `b`) from the others.
void reconstruct(const RowLayout& row, Blocks blocks, size_t len, unsigned a,
                 unsigned b = kNoDevice);
// Read-modify-write: folds data device `dev`'s change from `before` to
// `after` into the row's P and Q blocks.
void fold_change(const RowLayout& row, unsigned dev, const std::byte* before,
                 const std::byte* after, Blocks blocks, size_t len);

}  // namespace parity
}  // namespace dmnbd::raid
