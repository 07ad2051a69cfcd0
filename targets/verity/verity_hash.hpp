// The digest dm-verity computes, through OpenSSL's EVP API: the kernel's
// crypto API name (sha256, sha1, sha512, ...) mapped to an OpenSSL digest,
// and the salt where the table's version puts it:
//   version 1: H(salt || block)   (verity_hash_init)
//   version 0: H(block || salt)   (Chrome OS; verity_hash_final)
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

typedef struct evp_md_st EVP_MD;

namespace dmnbd::verity {

inline constexpr unsigned kMaxDigestSize = 64;  // EVP_MAX_MD_SIZE

class VerityHash {
 public:
  // nullptr when `kernel_name` names no digest OpenSSL has (the kernel's
  // "Cannot initialize hash function"). Names are matched as the kernel's
  // crypto_alloc_ahash() does, case included; "<name>-generic" is <name>.
  static std::unique_ptr<VerityHash> create(const std::string& kernel_name);
  ~VerityHash();
  VerityHash(const VerityHash&) = delete;
  VerityHash& operator=(const VerityHash&) = delete;

  unsigned digest_size() const { return digest_size_; }

  // The salt and where it goes; set once, before any digest().
  void set_salt(unsigned version, std::vector<uint8_t> salt);

  // The salted digest of `data` into out[0, digest_size()). Any thread, at
  // once: each thread keeps its own EVP_MD_CTX. False only when OpenSSL
  // fails (out of memory): the caller fails the I/O, as the kernel does
  // when crypto_ahash_*() fails.
  bool digest(std::span<const std::byte> data, uint8_t* out) const;

 private:
  explicit VerityHash(EVP_MD* md);
  EVP_MD* md_;
  unsigned digest_size_;
  unsigned version_ = 1;
  std::vector<uint8_t> salt_;
};

}  // namespace dmnbd::verity
