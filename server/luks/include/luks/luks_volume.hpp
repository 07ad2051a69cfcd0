// LUKS1 and LUKS2 volumes made by `cryptsetup luksFormat`, opened through
// libcryptsetup: the passphrase unlocks the volume key, and the result is the
// crypt table line cryptsetup itself would load into the kernel for the
// volume. Creating, changing and reencrypting volumes stays with cryptsetup.
#pragma once
#include <cstdint>
#include <filesystem>
#include <span>
#include <stdexcept>
#include <string>

#include "dmnbd/secret_bytes.hpp"

namespace dmnbd {

// A volume that cannot be opened, with the reason ("no key slot matches the
// passphrase for FILE", "FILE is not a LUKS device: ..."). Never holds a secret.
class LuksError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// What `cryptsetup open` takes beyond the passphrase.
struct LuksOptions {
  bool allow_discards = false;  // --allow-discards
};

// A crypt table line holding a volume key in hex: wiped when destroyed or
// overwritten. Move-only; the text is never reallocated once built.
class LuksTable {
 public:
  LuksTable() = default;
  LuksTable(std::string text, uint64_t sectors) : text_(std::move(text)), sectors_(sectors) {}
  ~LuksTable() { wipe(); }
  LuksTable(LuksTable&& other) noexcept = default;
  LuksTable& operator=(LuksTable&& other) noexcept {
    wipe();
    text_ = std::move(other.text_);
    sectors_ = other.sectors_;
    return *this;
  }
  LuksTable(const LuksTable&) = delete;
  LuksTable& operator=(const LuksTable&) = delete;

  const std::string& text() const { return text_; }
  uint64_t sectors() const { return sectors_; }

 private:
  void wipe() { wipe_memory(text_.data(), text_.size()); }
  std::string text_;
  uint64_t sectors_ = 0;
};

// `0 <sectors> crypt <cipher>-<mode> <hex key> <iv_offset> <file> <offset>[ <n> <features>]`
// for the LUKS volume in `file` (a regular file or block device; the table
// names it by its absolute path). Blocking: the keyslot's PBKDF runs here
// (Argon2 may take seconds and its configured memory). Throws LuksError.
LuksTable luks_table(const std::filesystem::path& file, std::span<const uint8_t> passphrase,
                     const LuksOptions& options = {});

// The passphrase in a key file, as `cryptsetup --key-file FILE` reads it: the
// whole file, newlines and all, at most 8 MiB. With `private_only`, a regular
// file that group or others may access is refused (with the chmod to run),
// as ssh refuses a private key. "-" is stdin, read to its end. Throws LuksError.
SecretBytes read_key_file(const std::filesystem::path& path, bool private_only);

// A passphrase from `fd` as cryptsetup reads one from a terminal or a pipe
// without --key-file: up to the first newline (not included) or the end.
SecretBytes read_passphrase_line(int fd);

}  // namespace dmnbd
