// A bitmap of regions over bytes someone else owns, in the kernel's
// little-endian bit order (test_bit_le): region r is bit r % 8 of byte r / 8,
// so a clean map laid over the disk log's bitmap reads and writes it as is.
#pragma once
#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>

namespace dmnbd::mirror {

class RegionBits {
 public:
  RegionBits() = default;
  explicit RegionBits(std::span<std::byte> bytes) : bytes_(bytes) {}

  uint64_t size() const { return uint64_t(bytes_.size()) * 8; }
  bool test(uint64_t r) const { return (uint8_t(bytes_[r >> 3]) >> (r & 7)) & 1; }
  void set(uint64_t r) { bytes_[r >> 3] |= std::byte(1u << (r & 7)); }
  void clear(uint64_t r) { bytes_[r >> 3] &= ~std::byte(1u << (r & 7)); }
  void fill(bool value) {
    for (std::byte& b : bytes_) b = value ? std::byte{0xff} : std::byte{0};
  }
  // The first clear bit in [from, end), or end when there is none.
  uint64_t find_zero(uint64_t from, uint64_t end) const {
    for (uint64_t r = from; r < end;) {
      if ((r & 7) == 0 && bytes_[r >> 3] == std::byte{0xff}) {
        r += 8;
        continue;
      }
      if (!test(r)) return r;
      ++r;
    }
    return end;
  }
  // memweight(): set bits in the whole map.
  uint64_t count() const {
    uint64_t n = 0;
    for (std::byte b : bytes_) n += std::popcount(uint8_t(b));
    return n;
  }

 private:
  std::span<std::byte> bytes_;
};

}  // namespace dmnbd::mirror
