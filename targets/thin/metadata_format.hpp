// The on-disk format of dm-thin's metadata device (the kernel's
// dm-thin-metadata.c and persistent-data/), as thin_check and thin_dump
// read it. Facts in ../shared/reference/dm-thin-format.md. Everything is
// little-endian; a metadata block is 4096 bytes.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>

#include "dmnbd/little_endian.hpp"

namespace dmnbd::thin {

inline constexpr uint32_t kMetadataBlockBytes = 4096;
inline constexpr uint32_t kMetadataBlockSectors = kMetadataBlockBytes / 512;

// Each block type's checksum is CRC-32C of bytes 4..4095 (initial value all
// ones, no final inversion) XOR this constant, stored in bytes 0..3.
enum class BlockKind : uint32_t {
  superblock = 160774,
  btree_node = 121107,
  index = 160478,  // the metadata space map's index block
  bitmap = 240779,
};

uint32_t block_checksum(std::span<const std::byte> block, BlockKind kind);
void seal_block(std::span<std::byte> block, BlockKind kind);  // writes the checksum
bool checksum_matches(std::span<const std::byte> block, BlockKind kind);

// ---- superblock (block 0; struct thin_disk_superblock) ----
namespace superblock {
inline constexpr uint64_t kMagic = 27022010;
inline constexpr uint32_t kVersion = 2;
inline constexpr uint32_t kNeedsCheckFlag = 1;
inline constexpr size_t flags = 4, blocknr = 8, uuid = 16, magic = 32, version = 40, time = 44,
                        trans_id = 48, held_root = 56, data_space_map_root = 64,
                        metadata_space_map_root = 192, data_mapping_root = 320,
                        device_details_root = 328, data_block_size = 336, metadata_block_size = 340,
                        metadata_nr_blocks = 344, compat_flags = 352, compat_ro_flags = 356,
                        incompat_flags = 360;
inline constexpr size_t kSpaceMapRootBytes = 128;
}  // namespace superblock

// A space map's root as the superblock holds it (struct disk_sm_root).
struct SpaceMapRoot {
  uint64_t nr_blocks = 0;
  uint64_t nr_allocated = 0;
  uint64_t bitmap_root = 0;  // metadata SM: the index block; data SM: the index btree
  uint64_t ref_count_root = 0;

  void store(std::byte* at) const {
    put_le64(at, nr_blocks);
    put_le64(at + 8, nr_allocated);
    put_le64(at + 16, bitmap_root);
    put_le64(at + 24, ref_count_root);
  }
  static SpaceMapRoot load(const std::byte* at) {
    return {get_le64(at), get_le64(at + 8), get_le64(at + 16), get_le64(at + 24)};
  }
};

// ---- btree nodes (struct btree_node) ----
namespace node {
inline constexpr uint32_t kInternal = 1, kLeaf = 2;
inline constexpr size_t csum = 0, flags = 4, blocknr = 8, nr_entries = 16, max_entries = 20,
                        value_size = 24, header_bytes = 32;
// calc_max_entries(): as many as fit, rounded down to a multiple of 3 (the
// kernel's split and merge arithmetic, and thin_check, rely on that).
constexpr uint32_t max_entries_for(uint32_t value_size) {
  return 3 * (((kMetadataBlockBytes - header_bytes) / (8 + value_size)) / 3);
}
}  // namespace node

// ---- space maps (dm-space-map-common.h) ----
namespace space_map {
inline constexpr uint32_t kEntriesPerBitmap = (kMetadataBlockBytes - 16) * 4;  // 16320
inline constexpr size_t kBitmapHeaderBytes = 16;  // csum, not_used, blocknr
inline constexpr uint32_t kMaxMetadataBitmaps = 255;
inline constexpr uint64_t kMaxMetadataBlocks = uint64_t{kMaxMetadataBitmaps} * kEntriesPerBitmap;
inline constexpr size_t kIndexHeaderBytes = 16;  // csum, padding, blocknr
inline constexpr size_t kIndexEntryBytes = 16;   // blocknr, nr_free, none_free_before
}  // namespace space_map

// One bitmap's index entry (struct disk_index_entry).
struct IndexEntry {
  uint64_t blocknr = 0;
  uint32_t nr_free = 0;
  uint32_t none_free_before = 0;

  void store(std::byte* at) const {
    put_le64(at, blocknr);
    put_le32(at + 8, nr_free);
    put_le32(at + 12, none_free_before);
  }
  static IndexEntry load(const std::byte* at) {
    return {get_le64(at), get_le32(at + 8), get_le32(at + 12)};
  }
};

// ---- thin's trees ----
inline constexpr uint32_t kMaxDevId = (1u << 24) - 1;

// Level 1 of the mapping tree: (data block << 24) | time.
inline uint64_t pack_block_time(uint64_t data_block, uint32_t time) {
  return (data_block << 24) | time;
}
inline uint64_t unpack_block(uint64_t v) {
  return v >> 24;
}
inline uint32_t unpack_time(uint64_t v) {
  return static_cast<uint32_t>(v & ((1u << 24) - 1));
}

// The device details tree's value (struct disk_device_details), 24 bytes.
struct DeviceDetails {
  uint64_t mapped_blocks = 0;
  uint64_t transaction_id = 0;
  uint32_t creation_time = 0;
  uint32_t snapshotted_time = 0;

  static constexpr uint32_t kBytes = 24;
  void store(std::byte* at) const {
    put_le64(at, mapped_blocks);
    put_le64(at + 8, transaction_id);
    put_le32(at + 16, creation_time);
    put_le32(at + 20, snapshotted_time);
  }
  static DeviceDetails load(const std::byte* at) {
    return {get_le64(at), get_le64(at + 8), get_le32(at + 16), get_le32(at + 20)};
  }
  bool operator==(const DeviceDetails&) const = default;
};

}  // namespace dmnbd::thin
