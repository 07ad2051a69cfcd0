// The reference counts of one space map (persistent-data's dm-space-map
// "ll" layer), held in memory in the on-disk encoding: per bitmap of 16320
// blocks, two bits a block (0, 1, 2, or 3 = "see the overflow tree") and an
// overflow map of the full counts of 3 and more. The disk layer copies the
// bitmaps out as they are.
//
// Blocks freed since the last commit are not handed out again before the
// next one (the last committed superblock's trees still use them): a bitmap
// changed since the last commit keeps its committed bits beside it, and an
// allocation takes only a block that is free in both.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "dmnbd/status.hpp"
#include "metadata_format.hpp"

namespace dmnbd::thin {

class RefCounts {
 public:
  static constexpr uint32_t kPerBitmap = space_map::kEntriesPerBitmap;
  static constexpr size_t kBitmapBytes = kPerBitmap / 4;  // 4080
  using Bits = std::array<uint8_t, kBitmapBytes>;

  explicit RefCounts(uint64_t nr_blocks = 0) { extend(nr_blocks); }

  uint64_t nr_blocks() const { return nr_blocks_; }
  uint64_t nr_allocated() const { return nr_allocated_; }
  uint64_t nr_free() const { return nr_blocks_ - nr_allocated_; }
  // Free now and at the last commit, so that allocate() can hand them out
  // (the kernel's sm_metadata_get_nr_free()): blocks freed since the commit
  // are not counted.
  uint64_t nr_allocatable() const {
    return nr_blocks_ - allocated_at_commit_ - allocated_since_commit_;
  }

  // A block past the end: EINVAL (the kernel's "out of bounds" in sm_ll).
  Status count(uint64_t b, uint32_t& out) const;
  uint32_t count(uint64_t b) const;  // 0 past the end
  Status inc(uint64_t b);
  // Dec of a free block: EINVAL ("unable to decrement block").
  Status dec(uint64_t b);
  Status set(uint64_t b, uint32_t count);

  // sm_ll_find_common_free_block() from the next-fit cursor: a block free
  // now and at the last commit, its count set to 1. None if there is none.
  std::optional<uint64_t> allocate();
  // Grows to `nr_blocks` (never shrinks); the new blocks are free.
  void extend(uint64_t nr_blocks);

  // ---- for the disk layer ----
  uint64_t nr_bitmaps() const { return bitmaps_.size(); }
  const Bits& bits(uint64_t bitmap) const { return bitmaps_[bitmap].now; }
  Bits& bits_for_load(uint64_t bitmap) { return bitmaps_[bitmap].now; }
  // Changed since the last commit (or never written).
  bool dirty(uint64_t bitmap) const { return bitmaps_[bitmap].dirty; }
  uint32_t free_in_bitmap(uint64_t bitmap) const { return bitmaps_[bitmap].nr_free; }
  // The first free entry of a bitmap, kPerBitmap if none (none_free_before).
  uint32_t first_free(uint64_t bitmap) const;
  const std::map<uint64_t, uint32_t>& overflow() const { return overflow_; }
  bool overflow_dirty() const { return overflow_dirty_; }
  // After loading bitmaps and overflow entries: recounts nr_free and
  // nr_allocated and marks everything clean.
  void loaded();
  Status load_overflow(uint64_t b, uint32_t count);
  // The current state is now the committed one.
  void committed();

 private:
  struct Bitmap {
    Bits now{};
    std::unique_ptr<Bits> at_commit;  // while dirty: the committed bits
    uint32_t nr_free = kPerBitmap;    // entries below nr_blocks with count 0
    bool dirty = true;
  };

  static uint32_t entry(const Bits& bits, uint32_t j) {
    const unsigned shift = (2 * j) % 8;
    const uint8_t byte = bits[j / 4];
    return ((byte >> shift) & 1u) << 1 | ((byte >> (shift + 1)) & 1u);
  }
  static void set_entry(Bits& bits, uint32_t j, uint32_t v);
  uint32_t stored(uint64_t b) const;  // 0..3
  bool free_at_commit(uint64_t b) const;
  void change(uint64_t b, uint32_t old_count, uint32_t new_count);
  uint32_t entries_in(uint64_t bitmap) const;

  uint64_t nr_blocks_ = 0;
  uint64_t nr_allocated_ = 0;
  uint64_t allocated_at_commit_ = 0;
  uint64_t allocated_since_commit_ = 0;  // free at the commit, in use now
  uint64_t cursor_ = 0;
  std::vector<Bitmap> bitmaps_;
  std::map<uint64_t, uint32_t> overflow_;  // counts >= 3
  bool overflow_dirty_ = false;
};

}  // namespace dmnbd::thin
