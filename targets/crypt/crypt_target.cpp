// crypt <cipher> <key> <iv_offset> <dev> <offset> [<#opt_params> <opt>...]
// dm-crypt (dm-crypt.c, 6.1): sector s of the target is sector offset + s of
// dev, encrypted. Every encryption sector (512 bytes, or sector_size) is one
// independent data unit whose IV comes from its IV sector (s + iv_offset,
// divided by sector_size / 512 with iv_large_sectors). The cipher, IV modes
// and keys: cipher_spec.hpp, sector_crypt.hpp, crypt_key.hpp.
//
// Options: allow_discards (discards reach dev; without it they do nothing),
// sector_size:<512..4096>, iv_large_sectors, and the kernel's CPU and
// workqueue tuning (same_cpu_crypt, submit_from_crypt_cpus,
// no_read_workqueue, no_write_workqueue), accepted and kept in the table:
// here large requests are always encrypted on the CPU pool and small ones
// on the loop that serves them. integrity:<bytes>:<type> needs a
// dm-integrity device below, which dmnbd does not have: refused.
// Messages, only while suspended: `key set <key>`, `key wipe`. A resume
// without a valid key is refused, as the kernel does.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>

#include "cipher_spec.hpp"
#include "crypt_key.hpp"
#include "dmnbd/arg_set.hpp"
#include "dmnbd/cpu_pool.hpp"
#include "dmnbd/target.hpp"
#include "sector_crypt.hpp"

namespace dmnbd {
namespace {

using crypt::KeyArgument;
using crypt::SectorCrypt;

// Below this a request is encrypted where it is served; above, on the CPU
// pool, in parts of at least kPartBytes.
constexpr size_t kOffloadBytes = 64 << 10;
constexpr size_t kPartBytes = 32 << 10;
// Write-zeroes is written as encrypted zeroes, this much at a time.
constexpr size_t kZeroChunkBytes = 1 << 20;

std::string to_hex(std::span<const uint8_t> bytes) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (uint8_t b : bytes) {
    out += kDigits[b >> 4];
    out += kDigits[b & 15];
  }
  return out;
}

class CryptTarget final : public Target {
 public:
  CryptTarget(const TargetContext& ctx, TargetArgs args) {
    if (args.size() < 5) throw TargetError("Not enough arguments");
    key_arg_ = crypt::parse_key_size(args[1]);
    // The options come first: the cipher needs the sector size.
    if (args.size() > 5) parse_options(args.subspan(5), ctx.length);
    cipher_string_ = args[0];
    sector_crypt_ = std::make_unique<SectorCrypt>(crypt::parse_cipher_spec(args[0]), sector_size_,
                                                  iv_large_sectors_);
    set_key(args[1]);
    const uint64_t step = sector_size_ >> kSectorShift;
    if (!scan_u64(args[2], iv_offset_) || (iv_offset_ & (step - 1)))
      throw TargetError("Invalid iv_offset sector");
    dev_name_ = args[3];
    dev_ = ctx.get_device(dev_name_);
    start_ = parse_sector(args[4], "Invalid device sector");
    length_ = ctx.length;
  }

  Task<Status> map(Bio bio) override {
    switch (bio.op) {
      case BioOp::flush:
        co_return co_await dev_->submit(bio);
      case BioOp::discard:
        if (!allow_discards_) co_return ok();  // advisory: nothing to do
        co_return co_await dev_->submit(bio.at(start_ + bio.sector));
      default:
        break;
    }
    // dm-crypt kills a bio that is not whole encryption sectors.
    const uint64_t step_mask = (sector_size_ >> kSectorShift) - 1;
    if ((bio.sector & step_mask) || (bio.sectors & step_mask)) co_return errno_status(EIO);
    if (bio.op == BioOp::read) co_return co_await read(bio);
    if (bio.op == BioOp::write) co_return co_await write(bio);
    co_return co_await write_zeroes(bio);
  }

  std::string table() const override { return table_with_key(key_text()); }

  std::string table_masked() const override {
    const std::string key = key_text();
    // What dmsetup prints without --showkeys: a keyring reference as it is,
    // anything else as as many zeroes.
    return table_with_key(key.starts_with(':') ? key : std::string(key.size(), '0'));
  }

  Task<std::string> message(std::vector<std::string> words) override {
    // The words may hold a key: wiped however the message ends.
    struct Wipe {
      std::vector<std::string>& words;
      ~Wipe() {
        for (auto& w : words) wipe_memory(w.data(), w.size());
      }
    } wipe{words};
    key_message(words);
    co_return std::string();
  }

  Task<void> postsuspend() override {
    suspended_ = true;
    co_return;
  }
  Task<Status> preresume() override {
    if (!sector_crypt_->has_key()) {
      spdlog::error("crypt: aborting resume - crypt key is not set.");
      co_return errno_status(EAGAIN);
    }
    co_return ok();
  }
  Task<void> resume() override {
    suspended_ = false;
    co_return;
  }

  uint32_t logical_block_size() const override { return sector_size_; }
  std::vector<DeviceArea> device_areas() const override { return {{dev_, start_, length_}}; }

 private:
  void parse_options(TargetArgs opts, uint64_t target_length) {
    ArgSet as(opts);
    uint32_t count = as.read_group(0, 8, "Invalid number of feature args");
    while (count--) {
      const std::string* opt = as.shift();
      if (!opt) throw TargetError("Not enough feature arguments");
      uint32_t size = 0;
      if (same_word(*opt, "allow_discards")) {
        allow_discards_ = true;
      } else if (same_word(*opt, "same_cpu_crypt")) {
        same_cpu_crypt_ = true;
      } else if (same_word(*opt, "submit_from_crypt_cpus")) {
        submit_from_crypt_cpus_ = true;
      } else if (same_word(*opt, "no_read_workqueue")) {
        no_read_workqueue_ = true;
      } else if (same_word(*opt, "no_write_workqueue")) {
        no_write_workqueue_ = true;
      } else if (opt->starts_with("integrity:")) {
        throw TargetError(
            "Integrity profile not supported. (integrity needs a dm-integrity device below "
            "crypt, which dmnbd does not have)");
      } else if (opt->starts_with("sector_size:") &&
                 scan_u32(std::string_view(*opt).substr(12), size)) {
        if (size < kSectorSize || size > 4096 || (size & (size - 1)))
          throw TargetError("Invalid feature value for sector_size");
        if (target_length & ((size >> kSectorShift) - 1))
          throw TargetError("Device size is not multiple of sector_size feature");
        sector_size_ = size;
      } else if (same_word(*opt, "iv_large_sectors")) {
        iv_large_sectors_ = true;
      } else {
        throw TargetError("Invalid feature arguments");
      }
    }
  }

  // `key set <key>` and `key wipe`, only while suspended.
  void key_message(const std::vector<std::string>& words) {
    const bool about_key = words.size() >= 2 && same_word(words[0], "key");
    if (about_key && !suspended_) throw TargetError("not suspended during key manipulation.");
    if (about_key && words.size() == 3 && same_word(words[1], "set")) {
      KeyArgument arg;
      try {
        arg = crypt::parse_key_size(words[2]);
      } catch (const TargetError&) {
        arg.size = key_arg_.size + 1;
      }
      if (arg.size != key_arg_.size) throw TargetError("the key size may not be changed");
      const KeyArgument old = key_arg_;
      key_arg_ = arg;
      try {
        set_key(words[2]);
      } catch (const TargetError&) {
        key_arg_ = old;  // the old key stays, as it does in the kernel
        throw;
      }
    } else if (about_key && words.size() == 2 && same_word(words[1], "wipe")) {
      wipe_key();
    } else {
      throw TargetError("unrecognised message received.");
    }
  }

  // crypt_set_key(): hex, "-" or a keyring key. The hex key is kept for the
  // table line (as cc->key is); a keyring key's bytes are not.
  void set_key(const std::string& text) {
    SecretBytes key = crypt::load_key(text, key_arg_);
    sector_crypt_->set_key(key.bytes());
    key_ = key_arg_.keyring.empty() ? std::move(key) : SecretBytes();
  }

  // crypt_wipe_key(): the table then shows a key of zeroes.
  void wipe_key() {
    sector_crypt_->wipe_key();
    key_ = SecretBytes(key_arg_.size);
    key_arg_.keyring.clear();
  }

  std::string key_text() const {
    if (!key_arg_.size) return "-";
    if (!key_arg_.keyring.empty())
      return ":" + std::to_string(key_arg_.size) + ":" + key_arg_.keyring;
    return to_hex(key_.bytes());
  }

  std::string table_with_key(const std::string& key) const {
    std::string out = cipher_string_ + " " + key + " " + std::to_string(iv_offset_) + " " +
                      dev_name_ + " " + std::to_string(start_);
    const unsigned count = allow_discards_ + same_cpu_crypt_ + submit_from_crypt_cpus_ +
                           no_read_workqueue_ + no_write_workqueue_ +
                           (sector_size_ != kSectorSize) + iv_large_sectors_;
    if (!count) return out;
    out += " " + std::to_string(count);
    if (allow_discards_) out += " allow_discards";
    if (same_cpu_crypt_) out += " same_cpu_crypt";
    if (submit_from_crypt_cpus_) out += " submit_from_crypt_cpus";
    if (no_read_workqueue_) out += " no_read_workqueue";
    if (no_write_workqueue_) out += " no_write_workqueue";
    if (sector_size_ != kSectorSize) out += " sector_size:" + std::to_string(sector_size_);
    if (iv_large_sectors_) out += " iv_large_sectors";
    return out;
  }

  // Encrypts or decrypts whole encryption sectors: on this loop when small,
  // else in parts side by side on the CPU pool.
  Task<bool> convert(bool encrypt, uint64_t sector, const std::byte* in, std::byte* out,
                     size_t bytes) {
    const auto* from = reinterpret_cast<const uint8_t*>(in);
    auto* to = reinterpret_cast<uint8_t*>(out);
    const uint64_t cc_sector = sector + iv_offset_;
    if (bytes < kOffloadBytes)
      co_return sector_crypt_->convert(encrypt, cc_sector, from, to, bytes);
    const size_t units = bytes / sector_size_;
    const size_t parts = std::min(cpu_pool_threads(), bytes / kPartBytes);
    const size_t units_per_part = (units + parts - 1) / parts;
    std::atomic<bool> good = true;
    std::function<void(size_t)> work = [&](size_t part) {
      const size_t first = part * units_per_part;
      const size_t count = std::min(units, first + units_per_part) - std::min(units, first);
      if (!count) return;
      const size_t at = first * sector_size_;
      const uint64_t part_sector = cc_sector + (at >> kSectorShift);
      if (!sector_crypt_->convert(encrypt, part_sector, from + at, to + at, count * sector_size_))
        good = false;
    };
    co_await run_on_cpu_pool(parts, work);
    co_return good.load();
  }

  Task<Status> read(Bio bio) {
    Bio ciphertext = bio.at(start_ + bio.sector);
    ciphertext.reads_zero = nullptr;  // zeroes below are not zeroes here
    if (Status st = co_await dev_->submit(ciphertext)) co_return st;
    const bool good =
        co_await convert(false, bio.sector, bio.data.data(), bio.data.data(), bio.data.size());
    co_return good ? ok() : errno_status(EIO);
  }

  // The caller's plaintext stays as it is: the ciphertext goes out of a
  // buffer of its own.
  Task<Status> write(Bio bio) {
    auto buffer = std::make_unique_for_overwrite<std::byte[]>(bio.data.size());
    const bool good =
        co_await convert(true, bio.sector, bio.data.data(), buffer.get(), bio.data.size());
    if (!good) co_return errno_status(EIO);
    Bio ciphertext = bio.at(start_ + bio.sector);
    ciphertext.data = std::span(buffer.get(), bio.data.size());
    co_return co_await dev_->submit(ciphertext);
  }

  // The kernel's dm-crypt takes no write-zeroes bios; the block layer then
  // writes zero pages, which crypt encrypts. Done here the same way.
  Task<Status> write_zeroes(Bio bio) {
    if (bio.flags & kBioFastZero) co_return errno_status(EOPNOTSUPP);
    const uint64_t chunk_sectors = kZeroChunkBytes >> kSectorShift;
    // write() encrypts into a buffer of its own: these stay zeroes.
    auto zeroes = std::make_unique<std::byte[]>(kZeroChunkBytes);
    for (uint64_t done = 0; done < bio.sectors;) {
      const uint64_t n = std::min(chunk_sectors, bio.sectors - done);
      Bio part{.op = BioOp::write,
               .sector = bio.sector + done,
               .sectors = n,
               .data = std::span(zeroes.get(), n << kSectorShift),
               .flags = bio.flags & kBioFua};
      if (Status st = co_await write(part)) co_return st;
      done += n;
    }
    co_return ok();
  }

  std::string cipher_string_;
  KeyArgument key_arg_;
  SecretBytes key_;  // a hex key, for the table line
  std::unique_ptr<SectorCrypt> sector_crypt_;
  uint64_t iv_offset_ = 0;
  std::string dev_name_;
  std::shared_ptr<BlockDevice> dev_;
  uint64_t start_ = 0;
  uint64_t length_ = 0;
  uint32_t sector_size_ = kSectorSize;
  bool iv_large_sectors_ = false;
  bool allow_discards_ = false, same_cpu_crypt_ = false, submit_from_crypt_cpus_ = false,
       no_read_workqueue_ = false, no_write_workqueue_ = false;
  std::atomic<bool> suspended_ = false;
};

}  // namespace

DMNBD_REGISTER_TARGET("crypt", CryptTarget, 1, 24, 0);

}  // namespace dmnbd
