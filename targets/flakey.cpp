// flakey <dev> <offset> <up> <down> [<#features> <feature>...]: linear onto
// dev, except that from the table's load on, every (up + down) seconds the
// device is unreliable for `down` seconds. What "unreliable" means is the
// features' choice (the kernel's current set and rules):
//   error_reads                 reads fail with EIO
//   drop_writes                 writes (and discards, flushes) succeed and are thrown away
//   error_writes                writes (and discards, flushes) fail with EIO
//   corrupt_bio_byte <n> <r|w> <value> <flags>
//                               byte n (1-based) of matching bios is set to value
//   random_read_corrupt <p>     with probability p/1e9 a random byte of a read is randomised
//   random_write_corrupt <p>    the same for writes (a copy is written; the caller's data stays)
// No feature at all means error_reads + error_writes. Flag matching uses the
// kernel's bi_opf bits: a read is 0, a write 1 (REQ_OP_WRITE), plus REQ_FUA
// (1 << 17) for FUA writes; NBD carries no other request flags (no REQ_META).
#include <atomic>
#include <chrono>
#include <cstring>
#include <random>
#include <string_view>
#include <vector>

#include "dmnbd/arg_set.hpp"
#include "dmnbd/target.hpp"

namespace dmnbd {
namespace {

constexpr uint32_t kProbabilityBase = 1000000000;  // random_*_corrupt: 1e9 = always
constexpr uint32_t kReqOpWrite = 1;
constexpr uint32_t kReqFua = 1u << 17;

uint64_t random_u64() {
  thread_local std::mt19937_64 engine{std::random_device{}()};
  return engine();
}

class FlakeyTarget final : public Target {
 public:
  FlakeyTarget(const TargetContext& ctx, TargetArgs args)
      : start_time_(std::chrono::steady_clock::now()) {
    if (args.size() < 4) throw TargetError("Invalid argument count");
    ArgSet as(args);
    dev_name_ = *as.shift();
    offset_ = parse_sector(*as.shift(), "Invalid device sector");
    up_ = as.read(0, UINT32_MAX, "Invalid up interval");
    down_ = as.read(0, UINT32_MAX, "Invalid down interval");
    if (up_ + down_ == 0) throw TargetError("Total (up + down) interval is zero");
    if (uint32_t(up_ + down_) < up_) throw TargetError("Interval overflow");
    parse_features(as);
    dev_ = ctx.get_device(dev_name_);
    length_ = ctx.length;
  }

  Task<Status> map(Bio bio) override {
    if (!is_down()) co_return co_await pass(bio);
    // dmnbd's suspend flushes through the targets, the kernel's sends no
    // flush at all: a down window must not make suspend (and so reload) fail.
    if (bio.op == BioOp::flush && suspending_.load()) co_return co_await pass(bio);

    if (bio.op == BioOp::read) {
      if (error_reads_) co_return errno_status(EIO);
      Status st = co_await pass(bio);
      if (!st) corrupt_read(bio);
      co_return st;
    }
    // Everything else is a write as far as the kernel's bio_data_dir() goes.
    if (drop_writes_) co_return ok();
    if (error_writes_) co_return errno_status(EIO);
    if (bio.op != BioOp::write) co_return co_await pass(bio);

    const bool fixed = corrupt_byte_ && corrupt_write_ && flags_match(bio);
    const bool random = random_write_ && random_u64() % kProbabilityBase < random_write_;
    if (!fixed && !random) co_return co_await pass(bio);
    // Corrupt a copy: the data belongs to whoever sent the bio.
    std::vector<std::byte> copy(bio.data.begin(), bio.data.end());
    if (fixed) set_byte(copy, corrupt_byte_ - 1, corrupt_value_);
    if (random) set_random_byte(copy);
    Bio corrupted = bio;
    corrupted.data = copy;
    co_return co_await pass(corrupted);
  }

  Task<Status> block_status(uint64_t sector, uint64_t count, ExtentList& out) override {
    co_return co_await dev_->block_status(offset_ + sector, count, out);
  }

  std::string table() const override {
    std::string out = dev_name_ + " " + std::to_string(offset_) + " " + std::to_string(up_) + " " +
                      std::to_string(down_);
    const unsigned count = error_reads_ + drop_writes_ + error_writes_ + (corrupt_byte_ ? 5 : 0) +
                           (random_read_ ? 2 : 0) + (random_write_ ? 2 : 0);
    out += " " + std::to_string(count);
    if (error_reads_) out += " error_reads";
    if (drop_writes_)
      out += " drop_writes";
    else if (error_writes_)
      out += " error_writes";
    if (corrupt_byte_)
      out += " corrupt_bio_byte " + std::to_string(corrupt_byte_) +
             (corrupt_write_ ? " w " : " r ") + std::to_string(corrupt_value_) + " " +
             std::to_string(corrupt_flags_);
    if (random_read_) out += " random_read_corrupt " + std::to_string(random_read_);
    if (random_write_) out += " random_write_corrupt " + std::to_string(random_write_);
    return out;
  }

  Task<void> presuspend() override {
    suspending_ = true;
    co_return;
  }
  Task<void> resume() override {
    suspending_ = false;
    co_return;
  }

  // Flushes go through map(): a down window drops or fails them like writes.
  Task<Status> flush() override { return map(flush_bio()); }
  std::vector<DeviceArea> device_areas() const override { return {{dev_, offset_, length_}}; }

 private:
  void parse_features(ArgSet& as) {
    uint32_t count = 0;
    if (as.left()) count = as.read_group(0, 11, "Invalid number of feature args");
    while (count) {
      const std::string* name = as.shift();
      --count;
      if (!name) throw TargetError("Insufficient feature arguments");
      if (same_word(*name, "error_reads")) {
        if (error_reads_) throw TargetError("Feature error_reads duplicated");
        error_reads_ = true;
      } else if (same_word(*name, "drop_writes")) {
        if (drop_writes_) throw TargetError("Feature drop_writes duplicated");
        drop_writes_ = true;
        if (error_writes_)
          throw TargetError("Feature drop_writes conflicts with feature error_writes");
      } else if (same_word(*name, "error_writes")) {
        if (error_writes_) throw TargetError("Feature error_writes duplicated");
        error_writes_ = true;
        if (drop_writes_)
          throw TargetError("Feature error_writes conflicts with feature drop_writes");
      } else if (same_word(*name, "corrupt_bio_byte")) {
        if (corrupt_byte_) throw TargetError("Feature corrupt_bio_byte duplicated");
        if (count < 4) throw TargetError("Feature corrupt_bio_byte requires 4 parameters");
        corrupt_byte_ = as.read(1, UINT32_MAX, "Invalid corrupt bio byte");
        const std::string* dir = as.shift();
        if (dir && same_word(*dir, "w"))
          corrupt_write_ = true;
        else if (dir && same_word(*dir, "r"))
          corrupt_write_ = false;
        else
          throw TargetError("Invalid corrupt bio direction (r or w)");
        corrupt_value_ = as.read(0, 255, "Invalid corrupt value to write into bio byte (0-255)");
        corrupt_flags_ = as.read(0, UINT32_MAX, "Invalid corrupt bio flags mask");
        count -= 4;
      } else if (same_word(*name, "random_read_corrupt")) {
        if (random_read_) throw TargetError("Feature random_read_corrupt duplicated");
        if (!count) throw TargetError("Feature random_read_corrupt requires a parameter");
        random_read_ = as.read(0, kProbabilityBase, "Invalid random corrupt argument");
        --count;
      } else if (same_word(*name, "random_write_corrupt")) {
        if (random_write_) throw TargetError("Feature random_write_corrupt duplicated");
        if (!count) throw TargetError("Feature random_write_corrupt requires a parameter");
        random_write_ = as.read(0, kProbabilityBase, "Invalid random corrupt argument");
        --count;
      } else {
        throw TargetError("Unrecognised flakey feature requested");
      }
    }
    const bool corrupts_writes = (corrupt_byte_ && corrupt_write_) || random_write_;
    const bool corrupts_reads = (corrupt_byte_ && !corrupt_write_) || random_read_;
    if (drop_writes_ && corrupts_writes)
      throw TargetError(
          "drop_writes is incompatible with random_write_corrupt or corrupt_bio_byte with the "
          "WRITE flag set");
    if (error_writes_ && corrupts_writes)
      throw TargetError(
          "error_writes is incompatible with random_write_corrupt or corrupt_bio_byte with the "
          "WRITE flag set");
    if (error_reads_ && corrupts_reads)
      throw TargetError(
          "error_reads is incompatible with random_read_corrupt or corrupt_bio_byte with the "
          "READ flag set");
    if (!corrupt_byte_ && !error_reads_ && !drop_writes_ && !error_writes_ && !random_read_ &&
        !random_write_)
      error_reads_ = error_writes_ = true;  // no features: all I/O fails while down
  }

  // Whole seconds since the table was loaded, as the kernel counts jiffies / HZ.
  bool is_down() const {
    const auto elapsed = std::chrono::duration_cast<std::chrono::seconds>(
                             std::chrono::steady_clock::now() - start_time_)
                             .count();
    return static_cast<uint64_t>(elapsed) % (uint64_t{up_} + down_) >= up_;
  }

  Task<Status> pass(Bio bio) {
    if (bio.op == BioOp::flush) co_return co_await dev_->submit(bio);
    co_return co_await dev_->submit(bio.at(offset_ + bio.sector));
  }

  bool flags_match(const Bio& bio) const {
    uint32_t opf = 0;
    if (bio.op == BioOp::write) opf = kReqOpWrite | ((bio.flags & kBioFua) ? kReqFua : 0);
    return (opf & corrupt_flags_) == corrupt_flags_;
  }

  void corrupt_read(const Bio& bio) {
    if (corrupt_byte_ && !corrupt_write_ && flags_match(bio))
      set_byte(bio.data, corrupt_byte_ - 1, corrupt_value_);
    if (random_read_ && random_u64() % kProbabilityBase < random_read_) set_random_byte(bio.data);
  }

  // A byte past the end of the bio is left alone, as in the kernel.
  static void set_byte(std::span<std::byte> data, uint64_t index, uint32_t value) {
    if (index < data.size()) data[index] = static_cast<std::byte>(value);
  }
  static void set_random_byte(std::span<std::byte> data) {
    if (data.empty()) return;
    const uint64_t index = random_u64() % data.size();
    data[index] = static_cast<std::byte>(random_u64() & 0xff);
  }

  const std::chrono::steady_clock::time_point start_time_;
  std::string dev_name_;
  uint64_t offset_ = 0;
  uint64_t length_ = 0;
  uint32_t up_ = 0, down_ = 0;
  bool error_reads_ = false, drop_writes_ = false, error_writes_ = false;
  uint32_t corrupt_byte_ = 0;  // 1-based; 0 = off
  bool corrupt_write_ = false;
  uint32_t corrupt_value_ = 0, corrupt_flags_ = 0;
  uint32_t random_read_ = 0, random_write_ = 0;
  std::shared_ptr<BlockDevice> dev_;
  std::atomic<bool> suspending_ = false;  // from presuspend to resume
};

}  // namespace

DMNBD_REGISTER_TARGET("flakey", FlakeyTarget, 1, 5, 0);

}  // namespace dmnbd
