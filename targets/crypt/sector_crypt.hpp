// A crypt table's cipher without its I/O: the keyed ciphers (one per subkey)
// and the IV generator, turning whole encryption sectors of plaintext into
// ciphertext and back exactly as dm-crypt's crypt_convert_block_skcipher()
// does. Any number of threads may convert at once: each borrows contexts of
// its own from a pool.
//
// IV modes, for the IV sector s of a data unit (dm-crypt.c):
//   plain      le32(s), zero-padded to the IV size
//   plain64    le64(s)
//   plain64be  be64(s) in the IV's last 8 bytes
//   essiv:H    le64(s) encrypted with the block cipher keyed by H(subkey)
//   benbi      be64((s << (9 - log2 block size)) + 1) in the last 8 bytes
//   null       zeroes
//   eboiv      le64(s * sector size) encrypted with the block cipher, subkey 0
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "block_cipher.hpp"
#include "cipher_spec.hpp"

namespace dmnbd::crypt {

enum class IvMode { none, plain, plain64, plain64be, essiv, benbi, null, eboiv };

class SectorCrypt {
 public:
  // crypt_alloc_tfms() and crypt_ctr_ivmode(): the cipher and IV mode the
  // spec names, no key yet. Throws TargetError.
  SectorCrypt(const CipherSpec& spec, uint32_t sector_size, bool iv_large_sectors);
  ~SectorCrypt();

  // crypt_setkey() and the IV's constructor: keys every subkey. Throws
  // TargetError ("Error decoding and setting key", "Error creating IV");
  // the old key stays when it does.
  void set_key(std::span<const uint8_t> key);
  // `key wipe`: forgets the key; conversions fail until the next set_key().
  void wipe_key();
  bool has_key() const;

  // Encrypts or decrypts `bytes` (whole encryption sectors) from `in` to
  // `out`, which are the same memory or do not overlap. `cc_sector`: the
  // first unit's sector counted as the kernel's cc_sector (sector in the
  // target + iv_offset, in 512-byte units). False when there is no key or
  // OpenSSL failed.
  bool convert(bool encrypt, uint64_t cc_sector, const uint8_t* in, uint8_t* out,
               size_t bytes) const;

  size_t key_count() const { return key_count_; }

 private:
  struct Contexts;
  std::unique_ptr<Contexts> borrow() const;
  void give_back(std::unique_ptr<Contexts> contexts) const;
  std::unique_ptr<Contexts> key_contexts(std::span<const uint8_t> key) const;
  void make_iv(const Contexts& c, uint64_t cc_sector, size_t subkey, uint8_t* iv) const;

  CipherAlgorithm algorithm_;
  IvMode iv_mode_ = IvMode::none;
  std::optional<std::string> essiv_hash_;
  size_t key_count_ = 1;
  size_t iv_size_ = 0;
  unsigned benbi_shift_ = 0;
  uint32_t sector_size_ = 512;
  unsigned sector_shift_ = 0;  // log2(sector_size / 512)
  bool iv_large_sectors_ = false;

  mutable std::mutex mutex_;
  std::unique_ptr<Contexts> prototype_;  // keyed; nullptr: no key
  mutable std::vector<std::unique_ptr<Contexts>> free_;
  uint64_t key_generation_ = 0;
};

}  // namespace dmnbd::crypt
