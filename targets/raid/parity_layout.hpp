// Where md puts data and parity for raid4/5/6 (raid5.c's
// raid5_compute_sector(), and the Q syndrome's source order of
// set_syndrome_sources()/raid6_idx_to_slot()). dm-raid's raid4 is md level 5
// with ALGORITHM_PARITY_0: its parity is on the *first* device.
//
// A row (md's "stripe" in raid5_compute_sector) is one chunk on every
// device, at the same device sectors: data index k of row s holds array
// chunk s * D + k, and P (and Q) protect the row byte by byte. Sectors here
// are data sectors of each device, before its data_offset.
#pragma once
#include <boost/container/small_vector.hpp>
#include <cstdint>

namespace dmnbd::raid {

// md's ALGORITHM_* numbers, the layout word of a level 5 or 6 superblock.
enum Algorithm : uint32_t {
  kLeftAsymmetric = 0,
  kRightAsymmetric = 1,
  kLeftSymmetric = 2,
  kRightSymmetric = 3,
  kParity0 = 4,
  kParityN = 5,
  kRotatingZeroRestart = 8,
  kRotatingNRestart = 9,
  kRotatingNContinue = 10,
  kLeftAsymmetric6 = 16,
  kRightAsymmetric6 = 17,
  kLeftSymmetric6 = 18,
  kRightSymmetric6 = 19,
};

inline constexpr unsigned kNoDevice = ~0u;
using DeviceList = boost::container::small_vector<unsigned, 16>;

// One row's placement.
struct RowLayout {
  unsigned p = kNoDevice;
  unsigned q = kNoDevice;  // raid6 only
  bool ddf = false;        // zr, nr, nc: Q weights by physical device index
  DeviceList data;         // data index k -> device
  // The devices in the order md passes them to gen_syndrome as sources
  // (source j has weight 2^j); kNoDevice is a zero block (DDF's P and Q
  // places). Empty for raid4/5.
  DeviceList syndrome_sources;

  bool is_parity(unsigned dev) const { return dev == p || dev == q; }
};

class ParityGeometry {
 public:
  // `level` 5 (raid4 too) or 6, `algorithm` md's, `device_sectors` what each
  // device gives the array (md uses whole chunks of it).
  ParityGeometry(unsigned level, uint32_t algorithm, unsigned disks, uint32_t chunk,
                 uint64_t device_sectors);

  unsigned level() const { return level_; }
  unsigned disks() const { return disks_; }
  unsigned parity_disks() const { return level_ == 6 ? 2 : 1; }
  unsigned data_disks() const { return disks_ - parity_disks(); }
  uint32_t chunk() const { return chunk_; }
  uint64_t rows() const { return used_device_sectors_ / chunk_; }
  uint64_t used_device_sectors() const { return used_device_sectors_; }
  uint64_t array_sectors() const { return used_device_sectors_ * data_disks(); }
  uint64_t row_sectors() const { return uint64_t(chunk_) * data_disks(); }  // array sectors

  RowLayout row(uint64_t s) const;

  struct Location {
    uint64_t row = 0;
    unsigned index = 0;  // data index within the row
    unsigned dev = 0;
    uint64_t sector = 0;  // on dev
  };
  Location locate(uint64_t x) const;

 private:
  unsigned level_;
  uint32_t algorithm_;
  unsigned disks_;
  uint32_t chunk_;
  uint64_t used_device_sectors_;
};

}  // namespace dmnbd::raid
