// Anything a target maps onto: a backing file, a block device, or another
// dmnbd Device (stacking). Offsets and lengths are 512-byte sectors.
#pragma once
#include <cstdint>
#include <string>

#include "dmnbd/asio.hpp"
#include "dmnbd/bio.hpp"
#include "dmnbd/extent.hpp"
#include "dmnbd/status.hpp"

namespace dmnbd {

class BlockDevice {
 public:
  virtual ~BlockDevice() = default;

  // How tables and logs name this device: a file path or a device name.
  virtual std::string name() const = 0;
  virtual uint64_t sectors() const = 0;

  // Performs the bio; flush makes every completed write durable.
  virtual Task<Status> submit(Bio bio) = 0;

  // Appends the allocation status of [sector, sector + count) to `out`. It may
  // stop early (out.total_sectors() < count) but must report at least one sector.
  virtual Task<Status> block_status(uint64_t sector, uint64_t count, ExtentList& out) = 0;

  // The device that really serves the I/O: a handle that only references
  // another device (to count it as open) answers with that device.
  virtual const BlockDevice* identity() const { return this; }
};

}  // namespace dmnbd
