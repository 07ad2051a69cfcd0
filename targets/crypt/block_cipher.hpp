// The ciphers a crypt table can name, on OpenSSL's EVP (AES-NI where the CPU
// has it): the kernel's crypto API names mapped to OpenSSL's. What the
// kernel's crypt_alloc_tfms() finds before any key is known is a
// CipherAlgorithm; keyed, one direction, it is a CipherContext.
#pragma once
#include <openssl/evp.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

namespace dmnbd::crypt {

struct EvpCipherFree {
  void operator()(EVP_CIPHER* c) const { EVP_CIPHER_free(c); }
};
using EvpCipher = std::unique_ptr<EVP_CIPHER, EvpCipherFree>;

// One direction of a keyed cipher. OpenSSL wipes the key schedule when the
// context is freed.
class CipherContext {
 public:
  CipherContext() = default;
  // nullptr when OpenSSL refuses the key (wrong length, XTS halves equal).
  static std::unique_ptr<CipherContext> make(const EVP_CIPHER* cipher, std::span<const uint8_t> key,
                                             bool encrypt);
  ~CipherContext();
  CipherContext(const CipherContext&) = delete;
  CipherContext& operator=(const CipherContext&) = delete;
  // A copy with its own state, for another thread.
  std::unique_ptr<CipherContext> clone() const;

  // One data unit: `in` to `out` (the same bytes, or not overlapping at
  // all), with `iv` (empty for a cipher without one). False on an OpenSSL error.
  bool run(std::span<const uint8_t> iv, const uint8_t* in, uint8_t* out, size_t bytes);

 private:
  EVP_CIPHER_CTX* ctx_ = nullptr;
};

class CipherAlgorithm {
 public:
  // `chainmode(cipher)`, e.g. xts(aes); throws TargetError("Error allocating
  // crypto tfm ...") when OpenSSL has no such thing.
  CipherAlgorithm(const std::string& chainmode, const std::string& cipher);

  // crypto_skcipher_blocksize() and crypto_skcipher_ivsize().
  size_t block_size() const { return block_size_; }
  size_t iv_size() const { return iv_size_; }
  bool is_null() const { return null_; }

  // The keyed cipher of this mode, or of the block cipher alone in ECB (what
  // ESSIV and EBOIV encrypt IVs with); nullptr when the key length is wrong.
  std::unique_ptr<CipherContext> keyed(std::span<const uint8_t> key, bool encrypt) const;
  std::unique_ptr<CipherContext> keyed_block_cipher(std::span<const uint8_t> key) const;

 private:
  const struct CipherFamily* family_ = nullptr;
  std::string mode_;
  size_t block_size_ = 1;
  size_t iv_size_ = 0;
  bool null_ = false;
};

// What OpenSSL offers, for error messages and the README: "aes (ecb, cbc,
// ctr, xts), camellia (...), ...".
std::string available_ciphers();

}  // namespace dmnbd::crypt
