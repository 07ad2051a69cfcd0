// A disk that can lose power, for crash tests (LevelDB's fault-injection Env,
// for a block device). It passes bios to the disk below, and remembers what
// that disk would keep if the power went now: the bytes of every sector as of
// the last moment they were made durable.
//   - A write (and a discard or write-zeroes, taken as a write of zeroes) is
//     volatile until something makes it durable.
//   - A write with FUA is durable for its own sectors once it completed.
//   - A flush that completes makes durable every write that had completed
//     when the flush was sent; a write still in flight then is not covered.
//   - crash() loses power: the device waits for the bios in flight, then puts
//     back the durable bytes of every sector a volatile write touched, the
//     worst a disk may do. With a seed, each volatile write is instead kept or
//     lost at random (in the order they completed), which a disk with a
//     write-back cache may also do. Then the power comes back.
// Between power_off() (or power_off_after()) and crash(), every bio fails
// with EIO and nothing more reaches the disk: a crash at that point.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "dmnbd/block_device.hpp"
#include "dmnbd/park.hpp"

namespace dmnbd::test {

class CrashDevice final : public BlockDevice {
 public:
  explicit CrashDevice(std::shared_ptr<BlockDevice> disk, std::string name = "crash")
      : name_(std::move(name)), disk_(std::move(disk)) {}

  std::string name() const override { return name_; }
  uint64_t sectors() const override { return disk_->sectors(); }

  Task<Status> submit(Bio bio) override {
    if (!enter(bio)) co_return errno_status(EIO);
    Status st = co_await submit_entered(bio);
    leave();
    co_return st;
  }

  Task<Status> block_status(uint64_t sector, uint64_t count, ExtentList& out) override {
    co_return co_await disk_->block_status(sector, count, out);
  }

  // From now on every bio fails with EIO, until crash().
  void power_off() {
    std::lock_guard lk(mutex_);
    powered_ = false;
  }
  // The power goes once `n` more writes or flushes have been let through:
  // the one after them fails, and so does everything until crash().
  void power_off_after(uint64_t n) {
    std::lock_guard lk(mutex_);
    allowed_ = n;
  }

  // Loses power (see the top), restores what the disk keeps, powers back on.
  // Fails only if the disk below refuses the restoring writes.
  Task<Status> crash(std::optional<uint64_t> keep_seed = std::nullopt) {
    power_off();
    co_await park_until_woken([this](std::function<void()> wake) {
      std::lock_guard lk(mutex_);
      if (in_flight_ == 0)
        wake();
      else
        drained_.push_back(std::move(wake));
    });
    std::map<uint64_t, Durable> image;
    {
      std::lock_guard lk(mutex_);
      if (keep_seed) {
        std::mt19937_64 random(*keep_seed);
        for (Write* w : completed_in_order(UINT64_MAX))
          if (random() & 1) make_durable(*w);
      }
      image.swap(durable_);
      writes_.clear();
    }
    // Restore in runs of adjacent sectors.
    for (auto it = image.begin(); it != image.end();) {
      std::vector<std::byte> run;
      const uint64_t first = it->first;
      for (uint64_t s = first; it != image.end() && it->first == s; ++it, ++s)
        run.insert(run.end(), it->second.bytes.begin(), it->second.bytes.end());
      const uint64_t count = run.size() >> kSectorShift;
      if (Status st = co_await disk_->submit(
              {.op = BioOp::write, .sector = first, .sectors = count, .data = run}))
        co_return st;
    }
    std::lock_guard lk(mutex_);
    powered_ = true;
    allowed_ = UINT64_MAX;
    co_return ok();
  }

  // Writes sent and not yet durable.
  size_t volatile_writes() const {
    std::lock_guard lk(mutex_);
    return writes_.size();
  }
  bool powered() const {
    std::lock_guard lk(mutex_);
    return powered_;
  }

 private:
  struct Durable {
    std::vector<std::byte> bytes;  // one sector
    uint64_t seq = 0;              // completion order of the write it came from; 0: before any
  };
  struct Write {
    uint64_t sector = 0;
    std::vector<std::byte> bytes;  // what it wrote
    bool fua = false;
    uint64_t done_seq = 0;  // 0 while in flight
  };

  static bool modifies(BioOp op) {
    return op == BioOp::write || op == BioOp::discard || op == BioOp::write_zeroes;
  }

  bool enter(const Bio& bio) {
    std::lock_guard lk(mutex_);
    if (powered_ && bio.op != BioOp::read) {
      if (allowed_ == 0)
        powered_ = false;
      else if (allowed_ != UINT64_MAX)
        --allowed_;
    }
    if (!powered_) return false;
    ++in_flight_;
    return true;
  }

  void leave() {
    std::vector<std::function<void()>> wake;
    {
      std::lock_guard lk(mutex_);
      if (--in_flight_ == 0) wake.swap(drained_);
    }
    for (auto& w : wake) w();
  }

  Task<Status> submit_entered(Bio bio) {
    if (bio.op == BioOp::flush) co_return co_await flush(bio);
    if (!modifies(bio.op)) co_return co_await disk_->submit(bio);
    if (bio.end() > sectors()) co_return errno_status(EIO);
    if (Status st = co_await save_pre_image(bio.sector, bio.sectors)) co_return st;
    uint64_t id = 0;
    {
      std::lock_guard lk(mutex_);
      // The power may have gone while the old bytes were read.
      if (!powered_) co_return errno_status(EIO);
      Write w{.sector = bio.sector, .fua = (bio.flags & kBioFua) != 0};
      if (bio.op == BioOp::write)
        w.bytes.assign(bio.data.begin(), bio.data.end());
      else
        w.bytes.assign(bio.bytes(), std::byte{0});
      id = next_id_++;
      writes_.emplace(id, std::move(w));
    }
    Status st = co_await disk_->submit(bio);
    std::lock_guard lk(mutex_);
    auto it = writes_.find(id);
    if (it == writes_.end()) co_return st;  // crashed meanwhile
    if (st) {
      // A failed write may have landed in part or not at all: it stays
      // undone at a crash, and no flush makes it durable.
      writes_.erase(it);
    } else if (it->second.fua) {
      it->second.done_seq = ++done_seq_;
      make_durable(it->second);
      writes_.erase(it);
    } else {
      it->second.done_seq = ++done_seq_;
    }
    co_return st;
  }

  Task<Status> flush(Bio bio) {
    uint64_t covered = 0;
    {
      std::lock_guard lk(mutex_);
      covered = done_seq_;
    }
    Status st = co_await disk_->submit(bio);
    if (st) co_return st;
    std::lock_guard lk(mutex_);
    for (Write* w : completed_in_order(covered)) make_durable(*w);
    std::erase_if(writes_, [covered](const auto& kv) {
      return kv.second.done_seq != 0 && kv.second.done_seq <= covered;
    });
    co_return ok();
  }

  // Before a sector is first written, its bytes on the disk are durable ones.
  Task<Status> save_pre_image(uint64_t sector, uint64_t count) {
    {
      std::lock_guard lk(mutex_);
      bool all_saved = true;
      for (uint64_t s = sector; s < sector + count && all_saved; ++s)
        all_saved = durable_.count(s) != 0;
      if (all_saved) co_return ok();
    }
    std::vector<std::byte> old(count << kSectorShift);
    if (Status st = co_await disk_->submit(
            {.op = BioOp::read, .sector = sector, .sectors = count, .data = old}))
      co_return st;
    // A write that got there first saved its sectors before it changed them.
    std::lock_guard lk(mutex_);
    for (uint64_t i = 0; i < count; ++i) {
      auto from = old.begin() + static_cast<ptrdiff_t>(i << kSectorShift);
      durable_.try_emplace(sector + i, Durable{{from, from + kSectorSize}, 0});
    }
    co_return ok();
  }

  // The completed volatile writes with done_seq <= up_to, oldest first.
  std::vector<Write*> completed_in_order(uint64_t up_to) {
    std::vector<Write*> out;
    for (auto& [id, w] : writes_)
      if (w.done_seq != 0 && w.done_seq <= up_to) out.push_back(&w);
    std::sort(out.begin(), out.end(), [](Write* a, Write* b) { return a->done_seq < b->done_seq; });
    return out;
  }

  // Its bytes become what the disk keeps, unless a write that completed later
  // is durable there already (a FUA write during a flush).
  void make_durable(const Write& w) {
    const uint64_t count = w.bytes.size() >> kSectorShift;
    for (uint64_t i = 0; i < count; ++i) {
      Durable& d = durable_[w.sector + i];
      if (d.seq > w.done_seq) continue;
      auto from = w.bytes.begin() + static_cast<ptrdiff_t>(i << kSectorShift);
      d.bytes.assign(from, from + kSectorSize);
      d.seq = w.done_seq;
    }
  }

  const std::string name_;
  const std::shared_ptr<BlockDevice> disk_;
  mutable std::mutex mutex_;  // everything below
  bool powered_ = true;
  uint64_t allowed_ = UINT64_MAX;  // writes and flushes until the power goes
  size_t in_flight_ = 0;
  std::vector<std::function<void()>> drained_;
  // Sectors written since the device was made (or last crashed): their bytes
  // as the disk keeps them.
  std::map<uint64_t, Durable> durable_;
  std::map<uint64_t, Write> writes_;  // volatile writes by id, in flight or completed
  uint64_t next_id_ = 1;
  uint64_t done_seq_ = 0;
};

}  // namespace dmnbd::test
