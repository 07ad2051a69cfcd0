// An in-memory BlockDevice for unit tests: N sectors of RAM, answered at once.
// Discard and write-zeroes leave zeroes; flush does nothing but is counted.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "dmnbd/block_device.hpp"

namespace dmnbd::test {

class MemoryDevice final : public BlockDevice {
 public:
  explicit MemoryDevice(uint64_t sectors, std::string name = "mem")
      : name_(std::move(name)), bytes_(sectors << kSectorShift) {}

  std::string name() const override { return name_; }
  uint64_t sectors() const override { return bytes_.size() >> kSectorShift; }

  Task<Status> submit(Bio bio) override {
    if (bio.op == BioOp::flush) {
      ++flushes_;
      co_return ok();
    }
    if (bio.end() > sectors() || bio.end() < bio.sector) co_return errno_status(EIO);
    std::lock_guard lk(mutex_);
    std::byte* at = bytes_.data() + (bio.sector << kSectorShift);
    switch (bio.op) {
      case BioOp::read:
        std::memcpy(bio.data.data(), at, bio.bytes());
        break;
      case BioOp::write:
        std::memcpy(at, bio.data.data(), bio.bytes());
        break;
      default:  // discard, write_zeroes
        std::memset(at, 0, bio.bytes());
        break;
    }
    co_return ok();
  }

  Task<Status> block_status(uint64_t, uint64_t count, ExtentList& out) override {
    out.append(count, 0);
    co_return ok();
  }

  // The stored bytes of [sector, sector + count): for checks and set-up, not
  // while bios run on another thread.
  std::span<std::byte> bytes(uint64_t sector = 0, uint64_t count = UINT64_MAX) {
    count = std::min(count, sectors() - sector);
    return std::span(bytes_).subspan(sector << kSectorShift, count << kSectorShift);
  }
  // Every byte of sector i set to (i + seed) & 0xff.
  void fill_pattern(uint8_t seed = 0) {
    for (uint64_t i = 0; i < sectors(); ++i)
      std::memset(bytes_.data() + (i << kSectorShift), static_cast<int>((i + seed) & 0xff),
                  kSectorSize);
  }
  uint64_t flushes() const { return flushes_.load(); }

 private:
  const std::string name_;
  std::mutex mutex_;
  std::vector<std::byte> bytes_;
  std::atomic<uint64_t> flushes_ = 0;
};

// A buffer of `sectors` sectors, every byte `value`.
inline std::vector<std::byte> filled(uint64_t sectors, uint8_t value) {
  return std::vector<std::byte>(sectors << kSectorShift, std::byte{value});
}

// True when every byte of `bytes` is `value`.
inline bool all_are(std::span<const std::byte> bytes, uint8_t value) {
  return std::all_of(bytes.begin(), bytes.end(),
                     [value](std::byte b) { return b == std::byte{value}; });
}

}  // namespace dmnbd::test
