#include "ref_counts.hpp"

#include <algorithm>

namespace dmnbd::thin {

void RefCounts::set_entry(Bits& bits, uint32_t j, uint32_t v) {
  const unsigned shift = (2 * j) % 8;
  uint8_t& byte = bits[j / 4];
  byte &= static_cast<uint8_t>(~(3u << shift));
  // Value bit 1 sits at the lower position, value bit 0 above it.
  byte |= static_cast<uint8_t>(((v >> 1) & 1u) << shift | (v & 1u) << (shift + 1));
}

uint32_t RefCounts::stored(uint64_t b) const {
  return entry(bitmaps_[b / kPerBitmap].now, static_cast<uint32_t>(b % kPerBitmap));
}

uint32_t RefCounts::count(uint64_t b) const {
  if (b >= nr_blocks_) return 0;
  const uint32_t v = stored(b);
  if (v < 3) return v;
  auto it = overflow_.find(b);
  return it == overflow_.end() ? 3 : it->second;
}

Status RefCounts::count(uint64_t b, uint32_t& out) const {
  if (b >= nr_blocks_) return errno_status(EINVAL);
  out = count(b);
  return ok();
}

void RefCounts::change(uint64_t b, uint32_t old_count, uint32_t new_count) {
  const bool free_then = free_at_commit(b);
  Bitmap& bm = bitmaps_[b / kPerBitmap];
  const auto j = static_cast<uint32_t>(b % kPerBitmap);
  const uint32_t old_stored = std::min(old_count, 3u), new_stored = std::min(new_count, 3u);
  if (old_stored != new_stored) {
    if (!bm.at_commit) bm.at_commit = std::make_unique<Bits>(bm.now);
    bm.dirty = true;
    set_entry(bm.now, j, new_stored);
  }
  if (old_count >= 3 || new_count >= 3) {
    if (new_count >= 3)
      overflow_[b] = new_count;
    else
      overflow_.erase(b);
    overflow_dirty_ = true;
  }
  if (old_count == 0 && new_count != 0) {
    --bm.nr_free;
    ++nr_allocated_;
    if (free_then) ++allocated_since_commit_;
  } else if (old_count != 0 && new_count == 0) {
    ++bm.nr_free;
    --nr_allocated_;
    if (free_then) --allocated_since_commit_;
  }
}

Status RefCounts::inc(uint64_t b) {
  if (b >= nr_blocks_) return errno_status(EINVAL);
  const uint32_t c = count(b);
  if (c == UINT32_MAX) return errno_status(EOVERFLOW);
  change(b, c, c + 1);
  return ok();
}

Status RefCounts::dec(uint64_t b) {
  if (b >= nr_blocks_) return errno_status(EINVAL);
  const uint32_t c = count(b);
  if (c == 0) return errno_status(EINVAL);
  change(b, c, c - 1);
  return ok();
}

Status RefCounts::set(uint64_t b, uint32_t new_count) {
  if (b >= nr_blocks_) return errno_status(EINVAL);
  change(b, count(b), new_count);
  return ok();
}

bool RefCounts::free_at_commit(uint64_t b) const {
  const Bitmap& bm = bitmaps_[b / kPerBitmap];
  return !bm.at_commit || entry(*bm.at_commit, static_cast<uint32_t>(b % kPerBitmap)) == 0;
}

std::optional<uint64_t> RefCounts::allocate() {
  if (nr_allocated_ == nr_blocks_) return std::nullopt;
  // Two passes: [cursor, end), then [0, cursor).
  for (int pass = 0; pass < 2; ++pass) {
    const uint64_t begin = pass == 0 ? cursor_ : 0;
    const uint64_t end = pass == 0 ? nr_blocks_ : std::min(cursor_, nr_blocks_);
    for (uint64_t b = begin; b < end;) {
      const uint64_t bitmap = b / kPerBitmap;
      const uint64_t bitmap_end = std::min(end, (bitmap + 1) * kPerBitmap);
      if (bitmaps_[bitmap].nr_free == 0) {
        b = bitmap_end;
        continue;
      }
      for (; b < bitmap_end; ++b) {
        if (stored(b) == 0 && free_at_commit(b)) {
          change(b, 0, 1);
          cursor_ = b + 1;
          return b;
        }
      }
    }
  }
  return std::nullopt;
}

uint32_t RefCounts::entries_in(uint64_t bitmap) const {
  const uint64_t first = bitmap * kPerBitmap;
  return static_cast<uint32_t>(std::min<uint64_t>(kPerBitmap, nr_blocks_ - first));
}

void RefCounts::extend(uint64_t nr_blocks) {
  if (nr_blocks <= nr_blocks_) return;
  const uint64_t old_bitmaps = bitmaps_.size();
  bitmaps_.resize((nr_blocks + kPerBitmap - 1) / kPerBitmap);
  const uint64_t old_blocks = nr_blocks_;
  nr_blocks_ = nr_blocks;
  // The last old bitmap gains entries, so its index entry (nr_free) must be
  // written again: it counts as changed. New bitmaps start empty and dirty.
  if (old_bitmaps > 0) {
    Bitmap& last = bitmaps_[old_bitmaps - 1];
    last.nr_free += entries_in(old_bitmaps - 1) -
                    static_cast<uint32_t>(old_blocks - (old_bitmaps - 1) * kPerBitmap);
    last.dirty = true;
  }
  for (uint64_t i = old_bitmaps; i < bitmaps_.size(); ++i) bitmaps_[i].nr_free = entries_in(i);
}

uint32_t RefCounts::first_free(uint64_t bitmap) const {
  const uint32_t n = entries_in(bitmap);
  const Bits& bits = bitmaps_[bitmap].now;
  for (uint32_t j = 0; j < n; ++j) {
    if (bits[j / 4] == 0xff) {  // four allocated entries (count 3 each): skip the byte
      j |= 3;
      continue;
    }
    if (entry(bits, j) == 0) return j;
  }
  return kPerBitmap;
}

Status RefCounts::load_overflow(uint64_t b, uint32_t c) {
  if (b >= nr_blocks_ || c < 3 || stored(b) != 3) return errno_status(EILSEQ);
  overflow_[b] = c;
  return ok();
}

void RefCounts::loaded() {
  nr_allocated_ = 0;
  for (uint64_t i = 0; i < bitmaps_.size(); ++i) {
    Bitmap& bm = bitmaps_[i];
    const uint32_t n = entries_in(i);
    uint32_t used = 0;
    for (uint32_t j = 0; j < n; ++j) used += entry(bm.now, j) != 0;
    bm.nr_free = n - used;
    nr_allocated_ += used;
  }
  committed();
}

void RefCounts::committed() {
  allocated_at_commit_ = nr_allocated_;
  allocated_since_commit_ = 0;
  for (Bitmap& bm : bitmaps_) {
    bm.at_commit.reset();
    bm.dirty = false;
  }
  overflow_dirty_ = false;
}

}  // namespace dmnbd::thin
