// A mapped device: a name, a live and an inactive table, a suspend gate, and
// the routing of every request to the targets. It speaks sectors to stacked
// targets (BlockDevice) and bytes to the NBD layer, where it also does
// read-modify-write for unaligned I/O. Lifecycle calls follow dmsetup.
#pragma once
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "dm/mapped_view.hpp"
#include "dm/suspend_gate.hpp"
#include "dm/table.hpp"
#include "dmnbd/async_mutex.hpp"
#include "dmnbd/block_device.hpp"

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

class Device final : public BlockDevice, public std::enable_shared_from_this<Device> {
 public:
  Device(std::string name, std::string description, bool read_only, unsigned minor);

  std::string name() const override;
  void rename(std::string name);
  const std::string& description() const { return description_; }
  bool read_only() const { return read_only_; }
  unsigned minor() const { return minor_; }
  // Size of the live table; 0 when there is none.
  uint64_t sectors() const override;
  uint64_t size_bytes() const { return sectors() << kSectorShift; }
  // The live table's logical block size (512 without a table): the smallest
  // I/O its targets take whole; anything smaller is read-modify-written.
  uint32_t logical_block_size() const;
  std::shared_ptr<Table> live_table() const { return live_.load(); }
  std::shared_ptr<Table> inactive_table() const;

  // ---- Lifecycle (dmsetup). Serialise calls per device with control_lock().
  AsyncMutex& control_lock() { return control_mutex_; }
  // Puts `table` in the inactive slot; the table it replaces is torn down.
  Task<void> load(std::shared_ptr<Table> table);
  // Tears down and drops the inactive table; false if there was none.
  Task<bool> clear();
  // On removal and at shutdown: tears down both tables and lets go of them,
  // and with them of the devices they hold.
  Task<void> drop_tables();
  // Holds back new I/O, waits for I/O in flight, then (unless noflush)
  // flushes every backing device. Idempotent.
  Task<Status> suspend(bool noflush);
  // Swaps in the inactive table if there is one (suspending first), then lets
  // I/O through and tears down the table it replaced (dm's order). Fails
  // without a change if a target's preresume refuses.
  Task<Status> resume();
  bool suspended() const { return gate_.suspended(); }
  // At server shutdown: lets I/O held by a suspend through, so every request
  // received gets its answer. Leaves the tables as they are.
  void release_held_io() { gate_.resume(); }
  // At server shutdown, for a device that is not suspended: a suspend and
  // the gate opened again at once, as a removal suspends before the table
  // goes. Targets give back I/O they hold (a mirror's writes held for a
  // reconfiguration fail) and write their metadata; the requests still
  // coming through the gate then get their answers.
  Task<void> quiesce_for_shutdown();
  // I/O requests that had to wait for a resume since the device was made.
  uint64_t suspended_waits() const { return gate_.waited(); }

  // ---- Events (dm_table_event) and open counts.
  uint64_t event_nr() const { return event_nr_.load(); }
  void raise_event() { ++event_nr_; }
  // What targets of this device's tables call; safe after the device is gone.
  std::function<void()> event_callback();
  // TargetContext::noflush_suspending for this device's tables.
  std::function<bool()> noflush_callback();
  // Connections and other devices' tables that use this device.
  int open_count() const { return open_count_.load(); }
  void opened() { ++open_count_; }
  void closed() { --open_count_; }

  // Every device, file or mapped, the live and inactive tables hold.
  std::vector<std::shared_ptr<BlockDevice>> dependencies(bool include_inactive) const;
  // True if this device's tables reach `other`, directly or through others.
  bool depends_on(const BlockDevice& other) const;

  // ---- I/O. BlockDevice: sector-aligned bios from a stacked target.
  Task<Status> submit(Bio bio) override;
  Task<Status> direct_access(uint64_t sector, uint64_t count, const DirectAccess& how) override;
  Task<Status> block_status(uint64_t sector, uint64_t count, ExtentList& out) override;

  // Byte-addressed requests. Out of range: reads, discards and block status
  // fail with EINVAL, writes and write-zeroes with ENOSPC; writes to a
  // read-only device with EPERM. `zero_runs`, when given, collects the parts
  // of an aligned read that targets know to be zero. With `view`, an aligned
  // read may be answered through it instead of filling `buf` (mapped_view.hpp).
  Task<Status> read(uint64_t offset, std::span<std::byte> buf, std::vector<ZeroRun>* zero_runs,
                    MappedView* view = nullptr);
  Task<Status> write(uint64_t offset, std::span<std::byte> buf, uint32_t flags);
  // Where an aligned write's bytes would go, when every one of them can be
  // written in place (mapped_view.hpp): fills `view`, which holds the device in
  // flight until released. Never waits: a suspended device, or any part that
  // is not a mapped memory-backed file, fails it with EAGAIN and writes nothing.
  Task<Status> map_write(uint64_t offset, uint64_t length, MappedView& view);
  Task<Status> discard(uint64_t offset, uint64_t length, uint32_t flags);
  Task<Status> write_zeroes(uint64_t offset, uint64_t length, uint32_t flags);
  Task<Status> flush();
  Task<Status> block_status_bytes(uint64_t offset, uint64_t length, size_t max_extents,
                                  std::vector<ByteExtent>& out);

 private:
  struct Part;
  static Part part_at(const Table& table, uint64_t sector, uint64_t left);
  Task<Status> route(const Table& table, Bio bio, std::vector<ZeroRun>* zero_runs,
                     MappedView* view = nullptr);
  Task<Status> direct_access_in(const Table& table, uint64_t sector, uint64_t count,
                                const DirectAccess& how);
  Task<Status> flush_table(const Table& table);
  Task<Status> block_status_in(const Table& table, uint64_t sector, uint64_t count,
                               ExtentList& out);
  Task<Status> write_unaligned(const Table& table, uint64_t offset, std::span<std::byte> buf,
                               uint32_t flags);
  // The gate, entered at once or, for I/O a target requeued, after the next
  // resume; the entry points go round again while a target requeues.
  Task<SuspendGate::Pass> enter_gate(bool requeued);
  Task<Status> submit_in(Bio bio);
  Task<Status> submit_unaligned(const Table& table, Bio bio);
  Task<Status> read_aside(const Table& table, uint64_t offset, std::span<std::byte> buf);
  Task<Status> write_in(uint64_t offset, std::span<std::byte> buf, uint32_t flags);
  Task<Status> write_zeroes_in(uint64_t offset, uint64_t length, uint32_t flags);
  Task<Status> flush_in();
  Status check_range(const Table* table, uint64_t offset, uint64_t length, bool writes) const;

  mutable std::mutex mutex_;  // name_ and inactive_
  std::string name_;
  const std::string description_;
  const bool read_only_;
  const unsigned minor_;
  std::atomic<std::shared_ptr<Table>> live_;
  std::shared_ptr<Table> inactive_;
  SuspendGate gate_;
  AsyncMutex control_mutex_;
  std::atomic<int> open_count_ = 0;
  std::atomic<uint64_t> event_nr_ = 0;
  std::atomic<bool> noflush_suspending_ = false;
  // Serialises read-modify-write cycles, so unaligned writes that share a
  // sector but not bytes both land.
  AsyncMutex rmw_mutex_;
};

}  // namespace dmnbd
