#include "parity_layout.hpp"

#include <stdexcept>

namespace dmnbd::raid {

ParityGeometry::ParityGeometry(unsigned level, uint32_t algorithm, unsigned disks, uint32_t chunk,
                               uint64_t device_sectors)
    : level_(level),
      algorithm_(algorithm),
      disks_(disks),
      chunk_(chunk),
      used_device_sectors_(device_sectors & ~uint64_t(chunk - 1)) {}

// raid5_compute_sector()'s choice of pd_idx, qd_idx and the data devices.
RowLayout ParityGeometry::row(uint64_t s) const {
  RowLayout r;
  const unsigned n = disks_, d = data_disks();
  // `place(k)` is where data index k goes, given pd_idx (and qd_idx).
  enum class Place {
    after_parity,
    after_pq,
    rotate,
    rotate_after_pq,
    rotate_within,
    shift1,
    fixed
  };
  Place place = Place::fixed;
  if (level_ == 5) {
    switch (algorithm_) {
      case kLeftAsymmetric:
        r.p = d - unsigned(s % n);
        place = Place::after_parity;
        break;
      case kRightAsymmetric:
        r.p = unsigned(s % n);
        place = Place::after_parity;
        break;
      case kLeftSymmetric:
        r.p = d - unsigned(s % n);
        place = Place::rotate;
        break;
      case kRightSymmetric:
        r.p = unsigned(s % n);
        place = Place::rotate;
        break;
      case kParity0:
        r.p = 0;
        place = Place::shift1;
        break;
      case kParityN:
        r.p = d;
        break;
      default:
        throw std::invalid_argument("md raid5 layout " + std::to_string(algorithm_));
    }
  } else {
    // Rotating P with Q right after it, or Q at 0 when P is last.
    const auto asymmetric = [&](unsigned p) {
      r.p = p;
      r.q = p == n - 1 ? 0 : p + 1;
      place = Place::after_pq;
    };
    switch (algorithm_) {
      case kRotatingZeroRestart:
        r.ddf = true;
        asymmetric(unsigned(s % n));
        break;
      case kRotatingNRestart:
        r.ddf = true;
        asymmetric(n - 1 - unsigned((s + 1) % n));
        break;
      case kRotatingNContinue:
        r.ddf = true;
        r.p = n - 1 - unsigned(s % n);
        r.q = (r.p + n - 1) % n;
        place = Place::rotate;
        break;
      case kParityN:
        r.p = d;
        r.q = d + 1;
        break;
      case kLeftAsymmetric6:
        r.p = d - unsigned(s % (n - 1));
        r.q = n - 1;
        place = Place::after_parity;
        break;
      case kRightAsymmetric6:
        r.p = unsigned(s % (n - 1));
        r.q = n - 1;
        place = Place::after_parity;
        break;
      case kLeftSymmetric6:
        r.p = d - unsigned(s % (n - 1));
        r.q = n - 1;
        place = Place::rotate_within;
        break;
      case kRightSymmetric6:
        r.p = unsigned(s % (n - 1));
        r.q = n - 1;
        place = Place::rotate_within;
        break;
      default:
        throw std::invalid_argument("md raid6 layout " + std::to_string(algorithm_));
    }
  }
  for (unsigned k = 0; k < d; ++k) {
    unsigned dev = k;
    switch (place) {
      case Place::after_parity:
        dev = k + (k >= r.p);
        break;
      case Place::after_pq:
        dev = r.p == n - 1 ? k + 1 : k + (k >= r.p ? 2 : 0);
        break;
      case Place::rotate:
        dev = (r.p + 1 + k) % n;
        break;
      case Place::rotate_within:
        dev = (r.p + 1 + k) % (n - 1);
        break;
      case Place::shift1:
        dev = k + 1;
        break;
      default:
        break;
    }
    r.data.push_back(dev);
  }
  if (level_ == 6) {
    // set_syndrome_sources(): DDF counts every device from 0 (P and Q as zero
    // blocks); md walks from just after Q and counts only data devices.
    if (r.ddf) {
      for (unsigned i = 0; i < n; ++i) r.syndrome_sources.push_back(r.is_parity(i) ? kNoDevice : i);
    } else {
      const unsigned d0 = r.q == n - 1 ? 0 : r.q + 1;
      for (unsigned step = 0, i = d0; step < n; ++step, i = (i + 1) % n)
        if (!r.is_parity(i)) r.syndrome_sources.push_back(i);
    }
  }
  return r;
}

ParityGeometry::Location ParityGeometry::locate(uint64_t x) const {
  const uint64_t chunk_number = x / chunk_;
  Location at;
  at.row = chunk_number / data_disks();
  at.index = unsigned(chunk_number % data_disks());
  at.dev = row(at.row).data[at.index];
  at.sector = at.row * chunk_ + x % chunk_;
  return at;
}

}  // namespace dmnbd::raid
