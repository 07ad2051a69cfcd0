// A BlockDevice for unit tests that records every bio (op, sector, length,
// flags) in the order they arrive, then passes it to a device below (one it
// owns, of RAM, or one it wraps). It can also fail bios on purpose, and hold
// each bio for a few trips through the event loop so that several are in
// flight at once, counting how many bytes of payload are in flight at most.
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <boost/asio/this_coro.hpp>

#include "dmnbd/block_device.hpp"
#include "memory_device.hpp"

namespace dmnbd::test {

struct BioRecord {
  BioOp op = BioOp::read;
  uint64_t sector = 0;
  uint64_t sectors = 0;
  uint32_t flags = 0;
  bool operator==(const BioRecord&) const = default;
};

class RecordingDevice final : public BlockDevice {
 public:
  // Records onto a MemoryDevice of `sectors` it owns.
  RecordingDevice(std::string name, uint64_t sectors)
      : name_(std::move(name)),
        memory_(std::make_shared<MemoryDevice>(sectors, name_)),
        inner_(memory_) {}
  // Records onto `inner`.
  explicit RecordingDevice(std::shared_ptr<BlockDevice> inner, std::string name = "recording")
      : name_(std::move(name)), inner_(std::move(inner)) {}

  std::string name() const override { return name_; }
  uint64_t sectors() const override { return inner_->sectors(); }

  Task<Status> submit(Bio bio) override {
    const uint64_t payload = bio.data.size();
    std::function<Status(const Bio&)> fault;
    unsigned hops = 0;
    {
      std::lock_guard lk(mutex_);
      bios_.push_back({bio.op, bio.sector, bio.sectors, bio.flags});
      in_flight_bytes_ += payload;
      max_in_flight_bytes_ = std::max(max_in_flight_bytes_, in_flight_bytes_);
      max_in_flight_bios_ = std::max(max_in_flight_bios_, ++in_flight_bios_);
      fault = fault_;
      hops = hops_ ? hops_(bio) : 0;
    }
    if (hops) {
      auto executor = co_await asio::this_coro::executor;
      for (unsigned i = 0; i < hops; ++i) co_await asio::post(executor, asio::use_awaitable);
    }
    Status st = fault ? fault(bio) : ok();
    if (!st) st = co_await inner_->submit(bio);
    std::lock_guard lk(mutex_);
    in_flight_bytes_ -= payload;
    --in_flight_bios_;
    co_return st;
  }

  Task<Status> block_status(uint64_t sector, uint64_t count, ExtentList& out) override {
    co_return co_await inner_->block_status(sector, count, out);
  }

  std::vector<BioRecord> bios() const {
    std::lock_guard lk(mutex_);
    return bios_;
  }
  // The records of one kind of bio only.
  std::vector<BioRecord> bios(BioOp op) const {
    std::vector<BioRecord> out;
    for (const BioRecord& r : bios())
      if (r.op == op) out.push_back(r);
    return out;
  }
  void clear() {
    std::lock_guard lk(mutex_);
    bios_.clear();
  }

  // Bios for which `fault` returns an error fail with it and never reach the
  // device below (they are still recorded); an empty function stops it.
  void set_fault(std::function<Status(const Bio&)> fault) {
    std::lock_guard lk(mutex_);
    fault_ = std::move(fault);
  }
  // Every bio fails with `st`.
  void fail_all(Status st) {
    set_fault([st](const Bio&) { return st; });
  }
  // Each bio waits hops(bio) trips through its event loop before it goes on.
  void set_hops(std::function<unsigned(const Bio&)> hops) {
    std::lock_guard lk(mutex_);
    hops_ = std::move(hops);
  }
  void set_hops(unsigned n) {
    set_hops([n](const Bio&) { return n; });
  }

  // Most bytes of bio payload (read and write buffers) in flight at one time.
  uint64_t max_in_flight_bytes() const {
    std::lock_guard lk(mutex_);
    return max_in_flight_bytes_;
  }
  uint64_t max_in_flight_bios() const {
    std::lock_guard lk(mutex_);
    return max_in_flight_bios_;
  }
  uint64_t in_flight_bios() const {
    std::lock_guard lk(mutex_);
    return in_flight_bios_;
  }

  // The RAM below when this device owns it, else nullptr.
  MemoryDevice* memory() const { return memory_.get(); }

 private:
  const std::string name_;
  std::shared_ptr<MemoryDevice> memory_;
  std::shared_ptr<BlockDevice> inner_;
  mutable std::mutex mutex_;  // everything below
  std::vector<BioRecord> bios_;
  std::function<Status(const Bio&)> fault_;
  std::function<unsigned(const Bio&)> hops_;
  uint64_t in_flight_bytes_ = 0, max_in_flight_bytes_ = 0;
  uint64_t in_flight_bios_ = 0, max_in_flight_bios_ = 0;
};

}  // namespace dmnbd::test
