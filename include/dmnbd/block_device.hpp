// Anything a target maps onto: a backing file, a block device, or another
// dmnbd Device (stacking). Offsets and lengths are 512-byte sectors.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "dmnbd/asio.hpp"
#include "dmnbd/bio.hpp"
#include "dmnbd/extent.hpp"
#include "dmnbd/status.hpp"

namespace dmnbd {

struct MappedView;

// What zero-copy I/O asks of direct_access (in the spirit of the kernel's dax
// direct_access): a piece of `view`, at byte `view_offset` of the request,
// pointing at where the bytes live, to be read or written in place.
struct DirectAccess {
  bool write = false;
  MappedView* view = nullptr;
  uint64_t view_offset = 0;
};

// A target that answers one direct_access from several devices (raid's
// data blocks on different legs) adds all their pieces or none: it marks
// the view first and rewinds it to the mark when one of them fails.
struct ViewMark {
  size_t pieces = 0, owners = 0, holds = 0;
};
ViewMark mark_view(const MappedView& view);
void rewind_view(MappedView& view, const ViewMark& mark);

class BlockDevice {
 public:
  virtual ~BlockDevice() = default;

  // How tables and logs name this device: a file path or a device name.
  virtual std::string name() const = 0;
  virtual uint64_t sectors() const = 0;

  // Performs the bio; flush makes every completed write durable.
  virtual Task<Status> submit(Bio bio) = 0;

  // Adds one piece to how.view for sectors [sector, sector + count) when those
  // bytes live in memory that may be read (or written) in place; otherwise
  // fails and adds nothing. Never waits. By default: not supported.
  virtual Task<Status> direct_access(uint64_t sector, uint64_t count, const DirectAccess& how) {
    co_return errno_status(EOPNOTSUPP);
  }

  // Appends the allocation status of [sector, sector + count) to `out`. It may
  // stop early (out.total_sectors() < count) but must report at least one sector.
  virtual Task<Status> block_status(uint64_t sector, uint64_t count, ExtentList& out) = 0;

  // The device that really serves the I/O: a handle that only references
  // another device (to count it as open) answers with that device.
  virtual const BlockDevice* identity() const { return this; }
};

}  // namespace dmnbd
