// A mapped device: a name, a live table, and the routing of every request to
// the targets. It speaks sectors to stacked targets (BlockDevice) and bytes
// to the NBD layer, where it also does read-modify-write for unaligned I/O.
#pragma once
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "dmnbd/async_mutex.hpp"
#include "dmnbd/block_device.hpp"
#include "dmnbd/table.hpp"

namespace dmnbd {

// A run of sectors, relative to the start of a read, that reads as zeroes.
struct ZeroRun {
  uint64_t sector;
  uint64_t sectors;
};

// One extent in bytes, as NBD's BLOCK_STATUS reports it.
struct ByteExtent {
  uint64_t length;
  uint32_t flags;
};

class Device final : public BlockDevice {
 public:
  Device(std::string name, std::string description, bool read_only, std::shared_ptr<Table> table);

  const std::string& name() const override { return name_; }
  const std::string& description() const { return description_; }
  bool read_only() const { return read_only_; }
  uint64_t sectors() const override { return live_table()->sectors(); }
  uint64_t size_bytes() const { return sectors() << kSectorShift; }
  std::shared_ptr<Table> live_table() const { return live_.load(); }

  // BlockDevice: sector-aligned bios from a target stacked on this device.
  Task<Status> submit(Bio bio) override;
  Task<Status> block_status(uint64_t sector, uint64_t count, ExtentList& out) override;

  // Byte-addressed requests. Out of range: reads, discards and block status
  // fail with EINVAL, writes and write-zeroes with ENOSPC; writes to a
  // read-only device with EPERM. `zero_runs`, when given, collects the parts
  // of an aligned read that targets know to be zero.
  Task<Status> read(uint64_t offset, std::span<std::byte> buf, std::vector<ZeroRun>* zero_runs);
  Task<Status> write(uint64_t offset, std::span<std::byte> buf, uint32_t flags);
  Task<Status> discard(uint64_t offset, uint64_t length, uint32_t flags);
  Task<Status> write_zeroes(uint64_t offset, uint64_t length, uint32_t flags);
  Task<Status> flush();
  Task<Status> block_status_bytes(uint64_t offset, uint64_t length, size_t max_extents,
                                  std::vector<ByteExtent>& out);

 private:
  Task<Status> route(const Table& table, Bio bio, std::vector<ZeroRun>* zero_runs);
  Task<Status> flush_table(const Table& table);
  Task<Status> write_unaligned(const Table& table, uint64_t offset, std::span<std::byte> buf,
                               uint32_t flags);
  Status check_range(const Table& table, uint64_t offset, uint64_t length, bool writes) const;

  std::string name_;
  std::string description_;
  bool read_only_;
  std::atomic<std::shared_ptr<Table>> live_;
  // Serialises read-modify-write cycles, so unaligned writes that share a
  // sector but not bytes both land.
  AsyncMutex rmw_mutex_;
};

}  // namespace dmnbd
