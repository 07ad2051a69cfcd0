// The unit of I/O between the Device, targets and block devices, modelled on
// the kernel's struct bio: 512-byte sectors, an operation and REQ_* style flags.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>

namespace dmnbd {

inline constexpr unsigned kSectorShift = 9;
inline constexpr uint64_t kSectorSize = 1u << kSectorShift;

enum class BioOp : uint8_t {
  read,
  write,
  flush,
  discard,
  write_zeroes,
};

// Bio flags.
inline constexpr uint32_t kBioFua = 1u << 0;  // REQ_FUA: durable when the bio completes
inline constexpr uint32_t kBioNoUnmap = 1u
                                        << 1;  // REQ_NOUNMAP: write_zeroes keeps blocks allocated
inline constexpr uint32_t kBioFastZero = 1u << 2;  // fail with ENOTSUP rather than zero slowly

struct Bio {
  BioOp op = BioOp::read;
  uint64_t sector = 0;        // first sector, relative to whoever receives the bio
  uint64_t sectors = 0;       // 0 for flush
  std::span<std::byte> data;  // read/write payload, exactly sectors * 512 bytes
  uint32_t flags = 0;
  // A read may report that its whole range reads as zeroes (the zero target
  // does); the NBD layer turns that into a hole chunk without sending data.
  bool* reads_zero = nullptr;

  uint64_t bytes() const { return sectors << kSectorShift; }
  uint64_t end() const { return sector + sectors; }

  Bio at(uint64_t new_sector) const {
    Bio b = *this;
    b.sector = new_sector;
    return b;
  }
  // The part [sector + skip, sector + skip + count) of this bio.
  Bio part(uint64_t skip, uint64_t count) const {
    Bio b = *this;
    b.sector = sector + skip;
    b.sectors = count;
    if (!data.empty()) b.data = data.subspan(skip << kSectorShift, count << kSectorShift);
    return b;
  }
};

inline Bio flush_bio() {
  return Bio{.op = BioOp::flush};
}

}  // namespace dmnbd
