#include "verity_geometry.hpp"

#include <bit>

#include "dmnbd/status.hpp"

namespace dmnbd::verity {

void VerityGeometry::compute() {
  // __fls(hash_block_size / digest_size)
  hash_per_block_bits = std::bit_width((uint64_t{1} << hash_block_bits) / digest_size) - 1;

  levels = 0;
  if (data_blocks)
    while (hash_per_block_bits * levels < 64 && (data_blocks - 1) >> (hash_per_block_bits * levels))
      ++levels;
  if (levels > kMaxLevels) throw TargetError("Too many tree levels");

  uint64_t position = hash_start;
  for (int i = static_cast<int>(levels) - 1; i >= 0; --i) {
    hash_level_block[i] = position;
    // The blocks of level i: data_blocks / 2^((i + 1) * bits), rounded up.
    const unsigned shift = (i + 1) * hash_per_block_bits;
    const uint64_t s =
        shift >= 64 ? 1
                    : (data_blocks >> shift) + ((data_blocks & ((uint64_t{1} << shift) - 1)) != 0);
    if (position + s < position) throw TargetError("Hash device offset overflow");
    position += s;
  }
  hash_blocks = position;
}

}  // namespace dmnbd::verity
