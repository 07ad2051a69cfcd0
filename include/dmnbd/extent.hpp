// Allocation status of a range, as NBD's base:allocation context reports it.
#pragma once
#include <cstdint>
#include <vector>

namespace dmnbd {

enum ExtentFlag : uint32_t {
  kExtentHole = 1,  // NBD_STATE_HOLE: not allocated
  kExtentZero = 2,  // NBD_STATE_ZERO: reads as zeroes
};

struct Extent {
  uint64_t sectors;
  uint32_t flags;
  bool operator==(const Extent&) const = default;
};

// Extents in order from some start sector; adjacent runs with equal flags merge.
class ExtentList {
 public:
  void append(uint64_t sectors, uint32_t flags) {
    if (sectors == 0) return;
    if (!extents_.empty() && extents_.back().flags == flags) {
      extents_.back().sectors += sectors;
    } else {
      extents_.push_back({sectors, flags});
    }
    total_ += sectors;
  }
  uint64_t total_sectors() const { return total_; }
  const std::vector<Extent>& extents() const { return extents_; }
  bool empty() const { return extents_.empty(); }

 private:
  std::vector<Extent> extents_;
  uint64_t total_ = 0;
};

}  // namespace dmnbd
