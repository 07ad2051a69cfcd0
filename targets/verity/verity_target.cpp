// verity <version> <dev> <hash_dev> <data_block_size> <hash_block_size>
//        <#data blocks> <hash_start_block> <alg> <root digest> <salt|->
//        [<#opt_params> <opt>...]
// A read-only device whose every block read is checked against a hash tree
// (veritysetup format's) up to a root digest given in the table, as the
// kernel's dm-verity: a block that does not match fails its read with EIO and
// turns the status from V to C. Table and options: verity_params.hpp; the
// tree and its cache of verified hash blocks: hash_tree.hpp.
//
// What a mismatch does (the options, as the kernel's verity_handle_err()):
//   (none)                  the read fails with EIO
//   ignore_corruption       logged and counted, the data is returned as read
//   restart_on_corruption,  the kernel reboots or panics. A server must not:
//   panic_on_corruption     here the read fails with EIO, the device is marked
//                           dead (every later read fails with EIO too, as none
//                           would succeed after a reboot into a corrupt image
//                           until it is fixed and the table reloaded), and an
//                           event is raised for `dmnbd wait`.
// Writes fail with EIO (the kernel kills them); discards and write-zeroes
// with EOPNOTSUPP, as dm does for a target with no discard bios; flushes
// succeed and reach no device (verity has no flush bios).
//
// The data block size is the device's logical block size (verity_io_hints):
// the Device reads smaller or unaligned requests as whole blocks, each one
// checked; a bio that reaches map() unaligned anyway fails with EIO, as the
// kernel's "unaligned io".
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "dmnbd/cpu_pool.hpp"
#include "dmnbd/target.hpp"
#include "hash_tree.hpp"
#include "verity_params.hpp"

namespace dmnbd::verity {
namespace {

constexpr int kMaxCorruptedErrs = 100;  // DM_VERITY_MAX_CORRUPTED_ERRS
// Verified hash blocks kept in memory: with sha256 and 4 KiB blocks, the
// level-0 blocks of 2 GiB of data.
constexpr size_t kVerifiedBytes = 16u << 20;
// Data hashed on the event loop up to this size; larger reads are split
// across the CPU pool.
constexpr size_t kInlineHashBytes = 64u << 10;

// DMERR_LIMIT: the kernel's default ratelimit, 10 messages per 5 seconds.
class RateLimit {
 public:
  bool allow() {
    std::lock_guard lk(mutex_);
    const auto now = std::chrono::steady_clock::now();
    if (now - begin_ > std::chrono::seconds(5)) {
      if (missed_) spdlog::warn("verity: {} callbacks suppressed", missed_);
      begin_ = now;
      printed_ = missed_ = 0;
    }
    if (printed_ < 10) {
      ++printed_;
      return true;
    }
    ++missed_;
    return false;
  }

 private:
  std::mutex mutex_;
  std::chrono::steady_clock::time_point begin_{};
  int printed_ = 0, missed_ = 0;
};

enum class BlockType { data, metadata };

class VerityTarget final : public Target {
 public:
  VerityTarget(const TargetContext& ctx, TargetArgs args)
      : p_(parse_verity_params(ctx, args)),
        geo_(p_.geometry),
        length_(ctx.length),
        raise_event_(ctx.raise_event),
        tree_(*p_.hash_dev, geo_, *p_.hash, p_.root_digest, kVerifiedBytes) {
    if (p_.check_at_most_once)
      validated_ = std::make_unique<std::atomic<uint64_t>[]>((geo_.data_blocks + 63) / 64);
  }

  Task<Status> map(Bio bio) override {
    if (bio.op == BioOp::flush) co_return ok();
    if (bio.op == BioOp::discard || bio.op == BioOp::write_zeroes)
      co_return errno_status(EOPNOTSUPP);
    const unsigned shift = geo_.data_block_bits - kSectorShift;
    if ((bio.sector | bio.sectors) & ((uint64_t{1} << shift) - 1)) {
      if (limit_.allow()) spdlog::error("verity: unaligned io");
      co_return errno_status(EIO);
    }
    if (bio.end() >> shift > geo_.data_blocks) {
      if (limit_.allow()) spdlog::error("verity: io out of range");
      co_return errno_status(EIO);
    }
    if (bio.op != BioOp::read) co_return errno_status(EIO);
    if (dead_.load()) co_return errno_status(EIO);
    const Status st = co_await p_.data_dev->submit(bio);  // data_start is 0
    if (st) co_return st;
    co_return co_await verify(bio);
  }

  Task<Status> flush() override { co_return ok(); }

  uint32_t logical_block_size() const override { return 1u << geo_.data_block_bits; }

  std::string table() const override { return verity_table_line(p_); }
  std::string status() const override { return hash_failed_.load() ? "C" : "V"; }

  Task<void> postsuspend() override {
    tree_.reset();
    co_return;
  }

  // The kernel's iterate_devices reports the data area only; the hash area
  // is here too so that the hash device counts as open and as a dependency.
  std::vector<DeviceArea> device_areas() const override {
    const unsigned hash_shift = geo_.hash_block_bits - kSectorShift;
    return {{p_.data_dev, 0, length_},
            {p_.hash_dev, geo_.hash_start << hash_shift,
             (geo_.hash_blocks - geo_.hash_start) << hash_shift}};
  }

 private:
  bool validated(uint64_t block) const {
    return validated_ &&
           (validated_[block / 64].load(std::memory_order_relaxed) >> (block % 64)) & 1;
  }
  void set_validated(uint64_t block) {
    if (validated_)
      validated_[block / 64].fetch_or(uint64_t{1} << (block % 64), std::memory_order_relaxed);
  }

  std::span<std::byte> block_data(const Bio& bio, uint64_t i) const {
    const size_t size = size_t{1} << geo_.data_block_bits;
    return bio.data.subspan(i * size, size);
  }

  // verity_verify_io(): every block of the bio (already read), in order.
  Task<Status> verify(Bio bio) {
    const unsigned ds = geo_.digest_size;
    const uint64_t first = bio.sector >> (geo_.data_block_bits - kSectorShift);
    const uint64_t n = bio.sectors >> (geo_.data_block_bits - kSectorShift);
    // Per block: 0 skip (validated before), 1 zero block, 2 hash it, 3 mismatch.
    std::vector<uint8_t> state(n, 2);
    std::vector<uint8_t> want(n * ds);

    // The digests each block must have, for runs of blocks not validated yet.
    HashTree::Lookup lookup;
    uint64_t resolved = 0;
    while (resolved < n) {
      if (validated(first + resolved)) {
        state[resolved++] = 0;
        continue;
      }
      uint64_t run = 1;
      while (resolved + run < n && !validated(first + resolved + run)) ++run;
      lookup.clear();
      co_await tree_.digests(first + resolved, run, want.data() + resolved * ds,
                             p_.mode == VerityMode::logging, &lookup);
      for (uint64_t hash_block : lookup.ignored) handle_error(BlockType::metadata, hash_block);
      resolved += lookup.resolved;
      if (lookup.error || lookup.corrupt) break;
    }
    if (!p_.zero_digest.empty())
      for (uint64_t i = 0; i < resolved; ++i)
        if (state[i] == 2 && std::memcmp(want.data() + i * ds, p_.zero_digest.data(), ds) == 0)
          state[i] = 1;

    // Hash the data: on the loop when small, across the CPU pool otherwise.
    bool hash_failed = false;
    const size_t bytes = resolved << geo_.data_block_bits;
    if (bytes < kInlineHashBytes) {
      hash_failed = !check_blocks(bio, 0, resolved, state.data(), want.data());
    } else {
      const size_t parts = std::min(cpu_pool_threads(), bytes / kInlineHashBytes);
      std::atomic<bool> failed = false;
      std::function<void(size_t)> work = [&, parts](size_t part) {
        const uint64_t lo = resolved * part / parts, hi = resolved * (part + 1) / parts;
        if (!check_blocks(bio, lo, hi, state.data(), want.data())) failed = true;
      };
      Task<void> pooled = run_on_cpu_pool(parts, std::move(work));
      co_await std::move(pooled);
      hash_failed = failed.load();
    }
    if (hash_failed) co_return errno_status(ENOMEM);

    for (uint64_t i = 0; i < resolved; ++i) {
      if (state[i] == 1) {
        std::span<std::byte> data = block_data(bio, i);
        std::memset(data.data(), 0, data.size());
      } else if (state[i] == 2) {
        set_validated(first + i);
      } else if (state[i] == 3) {
        const bool fixed = co_await recheck(bio, i, want.data() + i * ds);
        if (fixed) {
          set_validated(first + i);
        } else if (handle_error(BlockType::data, first + i)) {
          co_return errno_status(EIO);
        }
      }
    }
    if (lookup.error) co_return lookup.error;
    if (lookup.corrupt && handle_error(BlockType::metadata, lookup.corrupt_block))
      co_return errno_status(EIO);
    co_return ok();
  }

  // Hashes blocks [lo, hi) in state 2 and marks those that mismatch 3.
  // False if OpenSSL failed.
  bool check_blocks(const Bio& bio, uint64_t lo, uint64_t hi, uint8_t* state,
                    const uint8_t* want) const {
    const unsigned ds = geo_.digest_size;
    uint8_t real[kMaxDigestSize];
    for (uint64_t i = lo; i < hi; ++i) {
      if (state[i] != 2) continue;
      if (!p_.hash->digest(block_data(bio, i), real)) return false;
      if (std::memcmp(real, want + i * ds, ds) != 0) state[i] = 3;
    }
    return true;
  }

  // verity_recheck(): the block read again on its own; if it matches now
  // (it changed under the first read), its new bytes are the answer.
  Task<bool> recheck(Bio bio, uint64_t i, const uint8_t* want) {
    const size_t size = size_t{1} << geo_.data_block_bits;
    std::vector<std::byte> again(size);
    const uint64_t sector = bio.sector + (i << (geo_.data_block_bits - kSectorShift));
    const Bio reread{.op = BioOp::read,
                     .sector = sector,
                     .sectors = size >> kSectorShift,
                     .data = std::span<std::byte>(again)};
    const Status st = co_await p_.data_dev->submit(reread);
    if (st) co_return false;
    uint8_t real[kMaxDigestSize];
    if (!p_.hash->digest(again, real) || std::memcmp(real, want, geo_.digest_size) != 0)
      co_return false;
    std::memcpy(block_data(bio, i).data(), again.data(), size);
    co_return true;
  }

  // verity_handle_err(): true if the I/O must fail.
  bool handle_error(BlockType type, uint64_t block) {
    hash_failed_ = true;  // visible in the status in every mode
    int ce = corrupted_errs_.load();
    bool counted = false;
    while (ce < kMaxCorruptedErrs)
      if (corrupted_errs_.compare_exchange_weak(ce, ce + 1)) {
        counted = true;
        break;
      }
    if (counted) {
      if (limit_.allow())
        spdlog::error("verity: {}: {} block {} is corrupted", p_.data_dev_name,
                      type == BlockType::data ? "data" : "metadata", block);
      if (ce + 1 == kMaxCorruptedErrs)
        spdlog::error("verity: {}: reached maximum errors", p_.data_dev_name);
    }
    switch (p_.mode) {
      case VerityMode::logging:
        return false;
      case VerityMode::restart:
      case VerityMode::panic:
        if (!dead_.exchange(true)) {
          spdlog::error(
              "verity: {}: dm-verity device corrupted: {} (not done by a server: every "
              "read of the device fails from now on)",
              p_.data_dev_name,
              p_.mode == VerityMode::restart ? "restart_on_corruption" : "panic_on_corruption");
          raise_event_();
        }
        return true;
      case VerityMode::eio:
        break;
    }
    return true;
  }

  VerityParams p_;
  const VerityGeometry& geo_;
  const uint64_t length_;
  const std::function<void()> raise_event_;
  HashTree tree_;
  std::unique_ptr<std::atomic<uint64_t>[]> validated_;  // check_at_most_once
  std::atomic<bool> hash_failed_ = false;
  std::atomic<int> corrupted_errs_ = 0;
  std::atomic<bool> dead_ = false;  // restart/panic_on_corruption after a mismatch
  RateLimit limit_;
};

}  // namespace

DMNBD_REGISTER_TARGET("verity", VerityTarget, 1, 9, 0);

}  // namespace dmnbd::verity
