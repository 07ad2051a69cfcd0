#include "verity_hash.hpp"

#include <openssl/evp.h>

#include <stdexcept>
#include <string_view>

namespace dmnbd::verity {
namespace {

// The kernel's crypto API names of the digests OpenSSL's default provider has.
struct NameMap {
  const char* kernel;
  const char* openssl;
};
constexpr NameMap kNames[] = {
    {"sha1", "SHA1"},
    {"sha224", "SHA224"},
    {"sha256", "SHA256"},
    {"sha384", "SHA384"},
    {"sha512", "SHA512"},
    {"sha3-224", "SHA3-224"},
    {"sha3-256", "SHA3-256"},
    {"sha3-384", "SHA3-384"},
    {"sha3-512", "SHA3-512"},
    {"md5", "MD5"},
    {"sm3", "SM3"},
    {"rmd160", "RIPEMD160"},
    {"blake2b-512", "BLAKE2B-512"},
};

const char* openssl_name(std::string_view name) {
  constexpr std::string_view kGeneric = "-generic";
  if (name.size() > kGeneric.size() && name.ends_with(kGeneric))
    name.remove_suffix(kGeneric.size());
  for (const NameMap& n : kNames)
    if (name == n.kernel) return n.openssl;
  return nullptr;
}

// One context per thread, reused for every digest it computes.
EVP_MD_CTX* thread_ctx() {
  struct Holder {
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    ~Holder() { EVP_MD_CTX_free(ctx); }
  };
  thread_local Holder holder;
  return holder.ctx;
}

}  // namespace

std::unique_ptr<VerityHash> VerityHash::create(const std::string& kernel_name) {
  const char* name = openssl_name(kernel_name);
  if (!name || !EVP_get_digestbyname(name)) return nullptr;
  // An explicitly fetched digest: EVP_DigestInit_ex() with it skips the
  // provider lookup a legacy EVP_MD costs on every block.
  EVP_MD* md = EVP_MD_fetch(nullptr, name, nullptr);
  if (!md) return nullptr;
  return std::unique_ptr<VerityHash>(new VerityHash(md));
}

VerityHash::VerityHash(EVP_MD* md)
    : md_(md), digest_size_(static_cast<unsigned>(EVP_MD_get_size(md))) {}

VerityHash::~VerityHash() {
  EVP_MD_free(md_);
}

void VerityHash::set_salt(unsigned version, std::vector<uint8_t> salt) {
  version_ = version;
  salt_ = std::move(salt);
}

bool VerityHash::digest(std::span<const std::byte> data, uint8_t* out) const {
  EVP_MD_CTX* ctx = thread_ctx();
  bool good = ctx && EVP_DigestInit_ex(ctx, md_, nullptr) == 1;
  if (good && !salt_.empty() && version_ >= 1)
    good = EVP_DigestUpdate(ctx, salt_.data(), salt_.size()) == 1;
  if (good) good = EVP_DigestUpdate(ctx, data.data(), data.size()) == 1;
  if (good && !salt_.empty() && version_ == 0)
    good = EVP_DigestUpdate(ctx, salt_.data(), salt_.size()) == 1;
  unsigned len = 0;
  return good && EVP_DigestFinal_ex(ctx, out, &len) == 1;
}

}  // namespace dmnbd::verity
