// The hash tree's layout on the hash device, computed as verity_ctr() does:
// level 0 holds one digest per data block, each level above one digest per
// block of the level below, up to the one block whose digest is the root.
// Levels are stored top first from hash_start; every number here is a block
// of the hash device (hash_block_size bytes), hash_start included.
#pragma once
#include <cstdint>

namespace dmnbd::verity {

inline constexpr unsigned kMaxLevels = 63;  // DM_VERITY_MAX_LEVELS

struct VerityGeometry {
  unsigned version = 1;
  unsigned data_block_bits = 12;
  unsigned hash_block_bits = 12;
  unsigned digest_size = 32;
  uint64_t data_blocks = 0;
  uint64_t hash_start = 0;

  unsigned hash_per_block_bits = 0;       // log2(digests in a hash block)
  unsigned levels = 0;                    // 0 when there is at most one data block
  uint64_t hash_level_block[kMaxLevels];  // first block of each level; 0 is the lowest
  uint64_t hash_blocks = 0;               // end of the tree: hash_start + its blocks

  // Fills the derived fields from the six above. Throws TargetError with the
  // kernel's words: "Too many tree levels", "Hash device offset overflow".
  void compute();

  // verity_hash_at_level(): the hash block holding data block `block`'s
  // digest at `level`, and the digest's byte offset in it (version 1 pads
  // each digest to a power of two, version 0 packs them).
  void locate(uint64_t block, unsigned level, uint64_t& hash_block, unsigned& offset) const {
    const uint64_t position = block >> (level * hash_per_block_bits);
    hash_block = hash_level_block[level] + (position >> hash_per_block_bits);
    const unsigned idx =
        static_cast<unsigned>(position & ((uint64_t{1} << hash_per_block_bits) - 1));
    offset = version == 0 ? idx * digest_size : idx << (hash_block_bits - hash_per_block_bits);
  }
};

}  // namespace dmnbd::verity
