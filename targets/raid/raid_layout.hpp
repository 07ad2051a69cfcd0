// Where md puts the array's sectors on its devices, for the levels dm-raid
// mirrors or stripes without parity (md's raid0.c, raid1.c and raid10.c):
//   raid0   chunk n on device n % N, row n / N;
//   raid1   every device holds the array;
//   raid10  `near` copies of a chunk side by side on consecutive devices,
//           or `far` copies, each a stride further down and on the next
//           device of its far set ("offset": the copy is in the next row).
// Sectors here are data sectors of each device, before its data_offset.
#pragma once
#include <boost/container/small_vector.hpp>
#include <cstdint>
#include <string>

namespace dmnbd::raid {

// The md layout word of a raid10 set: near copies in bits 0-7, far copies in
// bits 8-15, bit 16 "offset", bits 17-18 how far copies rotate (0: over all
// devices, 2 (bit 18): within sets of near x far devices, dm-raid's choice
// unless raid10_use_near_sets).
struct Raid10Layout {
  unsigned near = 2;
  unsigned far = 1;
  bool offset = false;
  bool far_sets = false;

  static constexpr uint32_t kOffset = 1u << 16;
  static constexpr uint32_t kFarSets = 1u << 18;

  uint32_t md_layout() const {
    return near | (far << 8) | (offset ? kOffset : 0) | (far_sets ? kFarSets : 0);
  }
  static Raid10Layout from_md(uint32_t layout) {
    return {layout & 0xff, (layout >> 8) & 0xff, (layout & kOffset) != 0, (layout & kFarSets) != 0};
  }
  unsigned copies() const { return near * far; }
  // raid10_md_layout_to_format()
  const char* format() const {
    if (offset) return "offset";
    if (near > 1) return "near";
    if (far > 1) return "far";
    return "unknown";
  }
};

struct DeviceSector {
  unsigned dev = 0;
  uint64_t sector = 0;
};
// Every copy of one array sector, in md's slot order (raid10's r10bio devs).
using Copies = boost::container::small_vector<DeviceSector, 4>;

enum class Level : uint32_t { raid0 = 0, raid1 = 1, raid10 = 10 };

class Geometry {
 public:
  // `device_sectors`: the space each device gives the array (dm-raid's
  // dev_sectors); raid0 and raid10 use only whole chunks of it.
  static Geometry raid0(unsigned disks, uint32_t chunk, uint64_t device_sectors);
  static Geometry raid1(unsigned disks, uint64_t device_sectors);
  static Geometry raid10(unsigned disks, uint32_t chunk, Raid10Layout layout,
                         uint64_t device_sectors);

  unsigned disks() const { return disks_; }
  uint32_t chunk() const { return chunk_; }  // 0 for raid1
  uint64_t array_sectors() const { return array_sectors_; }
  // What each device holds of the array, from its data offset.
  uint64_t used_device_sectors() const { return used_device_sectors_; }

  // The copies of array sector `x` (one for raid0). Every sector up to the
  // end of x's chunk (to_chunk_end) lies right after these on each device.
  Copies copies(uint64_t x) const;
  uint64_t to_chunk_end(uint64_t x) const {
    return chunk_ ? chunk_ - (x & (chunk_ - 1)) : array_sectors_ - x;
  }
  // raid10_find_virt(): the array sector that device sector `s` of `dev`
  // holds (raid1: s; raid0: its chunk's place in the array).
  uint64_t array_sector_of(unsigned dev, uint64_t s) const;

 private:
  Level level_ = Level::raid1;
  unsigned disks_ = 0;
  uint32_t chunk_ = 0;
  unsigned chunk_shift_ = 0;
  Raid10Layout r10_;
  unsigned far_set_size_ = 0;
  uint64_t stride_ = 0;
  uint64_t array_sectors_ = 0;
  uint64_t used_device_sectors_ = 0;
};

}  // namespace dmnbd::raid
