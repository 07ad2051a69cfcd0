// The on-disk format of the kernel's persistent snapshot store
// (dm-snap-persistent.c), little-endian throughout. With C the chunk size in
// sectors and E = C * 512 / 16 exceptions per area:
//
//   chunk 0                    header: magic "SnAp", valid, version 1, chunk
//                              size; the rest of the chunk zero
//   chunk 1 + a * (E + 1)      metadata area a: E slots {le64 old, le64 new}
//   the E chunks after it      data chunks described by area a
//
// The list of exceptions ends at the first slot whose new chunk is 0 (that
// would be the header, so it can never be a real exception).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "dmnbd/little_endian.hpp"
#include "exception_store.hpp"

namespace dmnbd::snapshot::pstore {

inline constexpr uint32_t kMagic = 0x70416E53;  // "SnAp" in the byte order on disk
inline constexpr uint32_t kDiskVersion = 1;
inline constexpr uint32_t kDefaultChunkSectors = 32;  // 16 KiB, for a table chunk size of 0
inline constexpr uint64_t kHeaderChunks = 1;
inline constexpr size_t kHeaderBytes = 16;
inline constexpr size_t kSlotBytes = 16;

struct DiskHeader {
  uint32_t magic = kMagic;
  uint32_t valid = 1;
  uint32_t version = kDiskVersion;
  uint32_t chunk_size = 0;  // sectors
  bool operator==(const DiskHeader&) const = default;
};

// Fills the whole header chunk `out`: the kernel clears it on every write.
inline void encode_header(const DiskHeader& h, std::span<std::byte> out) {
  std::memset(out.data(), 0, out.size());
  put_le32(out.data() + 0, h.magic);
  put_le32(out.data() + 4, h.valid);
  put_le32(out.data() + 8, h.version);
  put_le32(out.data() + 12, h.chunk_size);
}
inline DiskHeader decode_header(std::span<const std::byte> in) {
  return {get_le32(in.data()), get_le32(in.data() + 4), get_le32(in.data() + 8),
          get_le32(in.data() + 12)};
}

// Slot `index` of an area buffer.
inline void encode_slot(std::span<std::byte> area, uint32_t index, ChunkPair e) {
  std::byte* at = area.data() + size_t{index} * kSlotBytes;
  put_le64(at, e.old_chunk);
  put_le64(at + 8, e.new_chunk);
}
inline ChunkPair decode_slot(std::span<const std::byte> area, uint32_t index) {
  const std::byte* at = area.data() + size_t{index} * kSlotBytes;
  return {get_le64(at), get_le64(at + 8)};
}

inline uint32_t exceptions_per_area(uint32_t chunk_sectors) {
  return static_cast<uint32_t>((uint64_t{chunk_sectors} << 9) / kSlotBytes);
}

// The chunk that holds metadata area `area`.
inline Chunk area_location(uint32_t per_area, uint64_t area) {
  return kHeaderChunks + (uint64_t{per_area} + 1) * area;
}

// A free pointer that landed on a metadata area moves past it.
inline Chunk skip_metadata(uint32_t per_area, Chunk next_free) {
  return next_free % (uint64_t{per_area} + 1) == kHeaderChunks ? next_free + 1 : next_free;
}

}  // namespace dmnbd::snapshot::pstore
