// The disk log's on-disk format (dm-log.c, version 2), from sector 0 of the
// log device: a 16-byte header, bytes 16..1023 kept as read, and from byte
// 1024 the clean bitmap (1 = clean), one bit per region, in longs of 64 bits.
// Every write covers the header and the whole bitmap, rounded up to the log
// device's logical block (512 bytes here).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "dmnbd/little_endian.hpp"

namespace dmnbd::mirror::disk_log {

inline constexpr uint32_t kMagic = 0x4D695272;   // MIRROR_MAGIC, "rRiM" on disk
inline constexpr uint32_t kVersion = 2;          // MIRROR_DISK_VERSION
inline constexpr uint64_t kBitmapOffset = 1024;  // LOG_OFFSET sectors
inline constexpr uint64_t kLogicalBlock = 512;

// roundup(regions, BITS_PER_LONG) / 8
inline uint64_t bitmap_bytes(uint64_t regions) {
  return (regions + 63) / 64 * 8;
}
inline uint64_t image_bytes(uint64_t regions) {
  return (kBitmapOffset + bitmap_bytes(regions) + kLogicalBlock - 1) / kLogicalBlock *
         kLogicalBlock;
}

struct Header {
  uint32_t magic = 0;
  uint32_t version = 0;
  uint64_t nr_regions = 0;
};

// Little-endian fields, as header_to_disk() writes them on any host.
inline Header decode_header(std::span<const std::byte> image) {
  return {get_le32(&image[0]), get_le32(&image[4]), get_le64(&image[8])};
}
inline void encode_header(const Header& h, std::span<std::byte> image) {
  put_le32(&image[0], h.magic);
  put_le32(&image[4], h.version);
  put_le64(&image[8], h.nr_regions);
}

}  // namespace dmnbd::mirror::disk_log
