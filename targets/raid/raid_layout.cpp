#include "raid_layout.hpp"

#include <bit>

namespace dmnbd::raid {

Geometry Geometry::raid0(unsigned disks, uint32_t chunk, uint64_t device_sectors) {
  Geometry g;
  g.level_ = Level::raid0;
  g.disks_ = disks;
  g.chunk_ = chunk;
  g.chunk_shift_ = unsigned(std::countr_zero(chunk));
  // md rounds each device down to whole chunks (one zone: all are equal).
  g.used_device_sectors_ = device_sectors & ~uint64_t(chunk - 1);
  g.array_sectors_ = g.used_device_sectors_ * disks;
  return g;
}

Geometry Geometry::raid1(unsigned disks, uint64_t device_sectors) {
  Geometry g;
  g.level_ = Level::raid1;
  g.disks_ = disks;
  g.used_device_sectors_ = device_sectors;
  g.array_sectors_ = device_sectors;
  return g;
}

// setup_geo() and calc_sectors().
Geometry Geometry::raid10(unsigned disks, uint32_t chunk, Raid10Layout layout,
                          uint64_t device_sectors) {
  Geometry g;
  g.level_ = Level::raid10;
  g.disks_ = disks;
  g.chunk_ = chunk;
  g.chunk_shift_ = unsigned(std::countr_zero(chunk));
  g.r10_ = layout;
  g.far_set_size_ = layout.far_sets ? layout.far * layout.near : disks;
  // Chunks in the array, then whole chunks each device holds (rounded up).
  uint64_t chunks = (device_sectors >> g.chunk_shift_) / layout.far * disks / layout.near;
  g.array_sectors_ = chunks << g.chunk_shift_;
  uint64_t per_device = (chunks * layout.copies() + disks - 1) / disks;
  g.used_device_sectors_ = per_device << g.chunk_shift_;
  g.stride_ = layout.offset ? uint64_t(chunk) : (per_device / layout.far) << g.chunk_shift_;
  return g;
}

Copies Geometry::copies(uint64_t x) const {
  Copies out;
  if (level_ == Level::raid1) {
    for (unsigned d = 0; d < disks_; ++d) out.push_back({d, x});
    return out;
  }
  const uint64_t in_chunk = x & (chunk_ - 1);
  if (level_ == Level::raid0) {
    const uint64_t cn = x >> chunk_shift_;
    out.push_back({unsigned(cn % disks_), ((cn / disks_) << chunk_shift_) + in_chunk});
    return out;
  }
  // __raid10_find_phys()
  const unsigned last_set_start = (disks_ / far_set_size_ - 1) * far_set_size_;
  const unsigned last_set_size = far_set_size_ + disks_ % far_set_size_;
  const uint64_t first_slot = (x >> chunk_shift_) * r10_.near;
  unsigned dev = unsigned(first_slot % disks_);
  uint64_t row = first_slot / disks_;
  if (r10_.offset) row *= r10_.far;
  uint64_t sector = (row << chunk_shift_) + in_chunk;
  for (unsigned n = 0; n < r10_.near; ++n) {
    unsigned d = dev;
    uint64_t s = sector;
    out.push_back({d, s});
    for (unsigned f = 1; f < r10_.far; ++f) {
      const unsigned set = d / far_set_size_;
      d += r10_.near;
      if (disks_ % far_set_size_ && d > last_set_start) {
        d = (d - last_set_start) % last_set_size + last_set_start;
      } else {
        d = d % far_set_size_ + far_set_size_ * set;
      }
      s += stride_;
      out.push_back({d, s});
    }
    if (++dev >= disks_) {
      dev = 0;
      sector += chunk_;
    }
  }
  return out;
}

uint64_t Geometry::array_sector_of(unsigned dev, uint64_t s) const {
  if (level_ == Level::raid1) return s;
  const uint64_t in_chunk = s & (chunk_ - 1);
  if (level_ == Level::raid0)
    return (((s >> chunk_shift_) * disks_ + dev) << chunk_shift_) + in_chunk;
  // raid10_find_virt()
  unsigned set_start = dev / far_set_size_ * far_set_size_;
  unsigned set_size = far_set_size_;
  if (disks_ % far_set_size_) {
    const unsigned last_set_start = (disks_ / far_set_size_ - 1) * far_set_size_;
    if (dev >= last_set_start) {
      set_size = far_set_size_ + disks_ % far_set_size_;
      set_start = last_set_start;
    }
  }
  uint64_t chunk = 0;
  int d = int(dev);
  if (r10_.offset) {
    chunk = s >> chunk_shift_;
    const unsigned fc = unsigned(chunk % r10_.far);
    chunk /= r10_.far;
    d -= int(fc * r10_.near);
    if (d < int(set_start)) d += int(set_size);
  } else {
    while (s >= stride_) {
      s -= stride_;
      if (d < int(r10_.near + set_start))
        d += int(set_size - r10_.near);
      else
        d -= int(r10_.near);
    }
    chunk = s >> chunk_shift_;
  }
  const uint64_t vchunk = (chunk * disks_ + unsigned(d)) / r10_.near;
  return (vchunk << chunk_shift_) + in_chunk;
}

}  // namespace dmnbd::raid
