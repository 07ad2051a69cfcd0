// What dm-raid keeps on each metadata device, in the kernel's format:
//   sector 0     struct dm_raid_superblock (148 bytes, little-endian), the
//                rest of the logical block zero;
//   byte 4096    md's bitmap superblock (bitmap_super_t, 256 bytes);
//   byte 4352    the write-intent bits, one per region of the array's
//                resync range (bit i of byte i / 8, LSB first), 1 = dirty.
// The bitmap is written page by page (4 KiB from byte 4096), the last page
// rounded up to the logical block.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "dmnbd/little_endian.hpp"

namespace dmnbd::raid::format {

inline constexpr uint32_t kSuperblockMagic = 0x64526D44;  // DM_RAID_MAGIC, "DmRd" on disk
inline constexpr uint32_t kFeatureV190 = 0x1;             // FEATURE_FLAG_SUPPORTS_V190
inline constexpr uint32_t kFlagReshapeActive = 0x1;       // SB_FLAG_RESHAPE_ACTIVE
inline constexpr uint64_t kMaxSector = ~uint64_t(0);      // MaxSector: "done", "in sync"
inline constexpr size_t kSuperblockBytes = 148;
inline constexpr size_t kLogicalBlock = 512;

inline constexpr uint32_t kBitmapMagic = 0x6D746962;  // BITMAP_MAGIC, "bitm" on disk
inline constexpr uint32_t kBitmapVersion = 4;         // BITMAP_MAJOR_HI: little-endian bits
inline constexpr uint32_t kBitmapStale = 1u << 1;     // BITMAP_STALE
inline constexpr uint64_t kBitmapOffset = 4096;       // bitmap_info.offset, 8 sectors
inline constexpr size_t kBitmapHeaderBytes = 256;
inline constexpr size_t kBitmapPage = 4096;

struct Superblock {
  uint32_t magic = 0;
  uint32_t compat_features = 0;
  uint32_t num_devices = 0;
  uint32_t array_position = 0;
  uint64_t events = 0;
  std::array<uint64_t, 4> failed_devices{};  // bit i: device i failed (0-63, then 64-255)
  uint64_t disk_recovery_offset = kMaxSector;
  uint64_t array_resync_offset = kMaxSector;
  uint32_t level = 0;
  uint32_t layout = 0;
  uint32_t stripe_sectors = 0;
  uint32_t flags = 0;
  uint64_t reshape_position = kMaxSector;
  uint32_t new_level = 0;
  uint32_t new_layout = 0;
  uint32_t new_stripe_sectors = 0;
  uint32_t delta_disks = 0;
  uint64_t array_sectors = 0;
  uint64_t data_offset = 0;
  uint64_t new_data_offset = 0;
  uint64_t sectors = 0;
  uint32_t incompat_features = 0;

  bool failed(unsigned dev) const { return (failed_devices[dev / 64] >> (dev % 64)) & 1; }
  void set_failed(unsigned dev) { failed_devices[dev / 64] |= uint64_t(1) << (dev % 64); }
};

// sb_retrieve_failed_devices(): the extended bits only count with V190.
inline Superblock decode_superblock(std::span<const std::byte> b) {
  Superblock sb;
  sb.magic = get_le32(&b[0]);
  sb.compat_features = get_le32(&b[4]);
  sb.num_devices = get_le32(&b[8]);
  sb.array_position = get_le32(&b[12]);
  sb.events = get_le64(&b[16]);
  sb.failed_devices[0] = get_le64(&b[24]);
  sb.disk_recovery_offset = get_le64(&b[32]);
  sb.array_resync_offset = get_le64(&b[40]);
  sb.level = get_le32(&b[48]);
  sb.layout = get_le32(&b[52]);
  sb.stripe_sectors = get_le32(&b[56]);
  sb.flags = get_le32(&b[60]);
  sb.reshape_position = get_le64(&b[64]);
  sb.new_level = get_le32(&b[72]);
  sb.new_layout = get_le32(&b[76]);
  sb.new_stripe_sectors = get_le32(&b[80]);
  sb.delta_disks = get_le32(&b[84]);
  sb.array_sectors = get_le64(&b[88]);
  sb.data_offset = get_le64(&b[96]);
  sb.new_data_offset = get_le64(&b[104]);
  sb.sectors = get_le64(&b[112]);
  if (sb.compat_features & kFeatureV190)
    for (int i = 0; i < 3; ++i) sb.failed_devices[1 + i] = get_le64(&b[120 + 8 * i]);
  sb.incompat_features = get_le32(&b[144]);
  return sb;
}

// super_sync(): the superblock, then zeroes to the end of `out` (a logical block).
inline void encode_superblock(const Superblock& sb, std::span<std::byte> out) {
  std::memset(out.data(), 0, out.size());
  std::byte* b = out.data();
  put_le32(b + 0, sb.magic);
  put_le32(b + 4, sb.compat_features);
  put_le32(b + 8, sb.num_devices);
  put_le32(b + 12, sb.array_position);
  put_le64(b + 16, sb.events);
  put_le64(b + 24, sb.failed_devices[0]);
  put_le64(b + 32, sb.disk_recovery_offset);
  put_le64(b + 40, sb.array_resync_offset);
  put_le32(b + 48, sb.level);
  put_le32(b + 52, sb.layout);
  put_le32(b + 56, sb.stripe_sectors);
  put_le32(b + 60, sb.flags);
  put_le64(b + 64, sb.reshape_position);
  put_le32(b + 72, sb.new_level);
  put_le32(b + 76, sb.new_layout);
  put_le32(b + 80, sb.new_stripe_sectors);
  put_le32(b + 84, sb.delta_disks);
  put_le64(b + 88, sb.array_sectors);
  put_le64(b + 96, sb.data_offset);
  put_le64(b + 104, sb.new_data_offset);
  put_le64(b + 112, sb.sectors);
  for (int i = 0; i < 3; ++i) put_le64(b + 120 + 8 * i, sb.failed_devices[1 + i]);
  put_le32(b + 144, sb.incompat_features);
}

// bitmap_super_t. uuid (8..23), nodes and cluster_name stay zero: dm-raid
// sets no md uuid, and a bitmap whose uuid differs fails to load.
struct BitmapHeader {
  uint32_t magic = kBitmapMagic;
  uint32_t version = kBitmapVersion;
  std::array<std::byte, 16> uuid{};
  uint64_t events = 0;
  uint64_t events_cleared = 0;
  uint64_t sync_size = 0;  // sectors the bits cover (md's resync_max_sectors)
  uint32_t state = 0;
  uint32_t chunksize = 0;     // region size in bytes
  uint32_t daemon_sleep = 5;  // seconds
  uint32_t write_behind = 0;
  uint32_t sectors_reserved = 0;
};

inline BitmapHeader decode_bitmap_header(std::span<const std::byte> b) {
  BitmapHeader h;
  h.magic = get_le32(&b[0]);
  h.version = get_le32(&b[4]);
  std::memcpy(h.uuid.data(), &b[8], 16);
  h.events = get_le64(&b[24]);
  h.events_cleared = get_le64(&b[32]);
  h.sync_size = get_le64(&b[40]);
  h.state = get_le32(&b[48]);
  h.chunksize = get_le32(&b[52]);
  h.daemon_sleep = get_le32(&b[56]);
  h.write_behind = get_le32(&b[60]);
  h.sectors_reserved = get_le32(&b[64]);
  return h;
}

inline void encode_bitmap_header(const BitmapHeader& h, std::span<std::byte> out) {
  std::memset(out.data(), 0, kBitmapHeaderBytes);
  std::byte* b = out.data();
  put_le32(b + 0, h.magic);
  put_le32(b + 4, h.version);
  std::memcpy(b + 8, h.uuid.data(), 16);
  put_le64(b + 24, h.events);
  put_le64(b + 32, h.events_cleared);
  put_le64(b + 40, h.sync_size);
  put_le32(b + 48, h.state);
  put_le32(b + 52, h.chunksize);
  put_le32(b + 56, h.daemon_sleep);
  put_le32(b + 60, h.write_behind);
  put_le32(b + 64, h.sectors_reserved);
}

// Bytes of header and bits, and the same rounded up to the logical block
// (what a whole write of the bitmap covers).
inline uint64_t bitmap_bytes(uint64_t regions) {
  return kBitmapHeaderBytes + (regions + 7) / 8;
}
inline uint64_t bitmap_image_bytes(uint64_t regions) {
  return (bitmap_bytes(regions) + kLogicalBlock - 1) / kLogicalBlock * kLogicalBlock;
}

}  // namespace dmnbd::raid::format
