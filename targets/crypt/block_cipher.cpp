#include "block_cipher.hpp"

#include <array>
#include <cstring>

#include "dmnbd/status.hpp"

namespace dmnbd::crypt {

// A block cipher both the kernel and OpenSSL have, by the kernel's name.
struct CipherFamily {
  const char* kernel_name;
  const char* openssl_name;
  bool bits_in_name;  // AES-256-CBC, but SM4-CBC
  size_t block_size;
  std::array<size_t, 3> key_sizes;  // bytes; 0 = none
};

namespace {

using Family = CipherFamily;

constexpr Family kFamilies[] = {
    {"aes", "AES", true, 16, {16, 24, 32}},
    {"camellia", "CAMELLIA", true, 16, {16, 24, 32}},
    {"aria", "ARIA", true, 16, {16, 24, 32}},
    {"sm4", "SM4", false, 16, {16, 0, 0}},
    {"des3_ede", "DES-EDE3", false, 8, {24, 0, 0}},
};
constexpr const char* kModes[] = {"ecb", "cbc", "ctr", "xts"};
constexpr const char* kNullCipher = "cipher_null";

const Family* find_family(const std::string& name) {
  for (const Family& f : kFamilies)
    if (name == f.kernel_name) return &f;
  return nullptr;
}

std::string upper(std::string s) {
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

// OpenSSL's name of `mode` of the family with a key of `key_bytes`, or ""
// when the family has no such key length. XTS keys are two cipher keys.
std::string openssl_name(const Family& f, const std::string& mode, size_t key_bytes) {
  const size_t cipher_key = mode == "xts" ? key_bytes / 2 : key_bytes;
  if (mode == "xts" && key_bytes % 2) return {};
  bool valid = false;
  for (size_t k : f.key_sizes) valid |= k && k == cipher_key;
  if (!valid) return {};
  std::string name = f.openssl_name;
  if (f.bits_in_name) name += "-" + std::to_string(cipher_key * 8);
  return name + "-" + upper(mode);
}

EvpCipher fetch(const std::string& name) {
  return EvpCipher(name.empty() ? nullptr : EVP_CIPHER_fetch(nullptr, name.c_str(), nullptr));
}

bool offers(const Family& f, const std::string& mode) {
  for (size_t k : f.key_sizes)
    if (k && fetch(openssl_name(f, mode, mode == "xts" ? 2 * k : k))) return true;
  return false;
}

}  // namespace

std::unique_ptr<CipherContext> CipherContext::make(const EVP_CIPHER* cipher,
                                                   std::span<const uint8_t> key, bool encrypt) {
  auto out = std::make_unique<CipherContext>();
  if (!cipher) return out;  // cipher_null: a copy
  out->ctx_ = EVP_CIPHER_CTX_new();
  if (!out->ctx_ || static_cast<size_t>(EVP_CIPHER_get_key_length(cipher)) != key.size() ||
      EVP_CipherInit_ex2(out->ctx_, cipher, key.data(), nullptr, encrypt, nullptr) != 1)
    return nullptr;
  EVP_CIPHER_CTX_set_padding(out->ctx_, 0);  // data units are whole blocks
  return out;
}

CipherContext::~CipherContext() {
  EVP_CIPHER_CTX_free(ctx_);
}

std::unique_ptr<CipherContext> CipherContext::clone() const {
  auto out = std::make_unique<CipherContext>();
  if (!ctx_) return out;
  out->ctx_ = EVP_CIPHER_CTX_new();
  if (!out->ctx_ || EVP_CIPHER_CTX_copy(out->ctx_, ctx_) != 1) return nullptr;
  return out;
}

bool CipherContext::run(std::span<const uint8_t> iv, const uint8_t* in, uint8_t* out,
                        size_t bytes) {
  if (!ctx_) {
    if (in != out) std::memcpy(out, in, bytes);
    return true;
  }
  if (!iv.empty() && EVP_CipherInit_ex2(ctx_, nullptr, nullptr, iv.data(), -1, nullptr) != 1)
    return false;
  int done = 0;
  return EVP_CipherUpdate(ctx_, out, &done, in, static_cast<int>(bytes)) == 1 &&
         static_cast<size_t>(done) == bytes;
}

CipherAlgorithm::CipherAlgorithm(const std::string& chainmode, const std::string& cipher)
    : mode_(chainmode) {
  if (cipher == kNullCipher) {
    if (chainmode != "ecb")
      throw TargetError("Error allocating crypto tfm (cipher_null has only ecb)");
    null_ = true;
    return;
  }
  family_ = find_family(cipher);
  if (!family_)
    throw TargetError("Error allocating crypto tfm (no cipher " + cipher +
                      " here; there are: " + available_ciphers() + ")");
  if (!offers(*family_, chainmode))
    throw TargetError("Error allocating crypto tfm (no " + chainmode + "(" + cipher +
                      ") here; there are: " + available_ciphers() + ")");
  block_size_ = chainmode == "ctr" ? 1 : family_->block_size;  // ctr is a stream mode
  iv_size_ = chainmode == "ecb" ? 0 : family_->block_size;
}

std::unique_ptr<CipherContext> CipherAlgorithm::keyed(std::span<const uint8_t> key,
                                                      bool encrypt) const {
  if (null_) return CipherContext::make(nullptr, key, encrypt);
  EvpCipher cipher = fetch(openssl_name(*family_, mode_, key.size()));
  return cipher ? CipherContext::make(cipher.get(), key, encrypt) : nullptr;
}

std::unique_ptr<CipherContext> CipherAlgorithm::keyed_block_cipher(
    std::span<const uint8_t> key) const {
  if (null_) return CipherContext::make(nullptr, key, true);
  EvpCipher cipher = fetch(openssl_name(*family_, "ecb", key.size()));
  return cipher ? CipherContext::make(cipher.get(), key, true) : nullptr;
}

std::string available_ciphers() {
  static const std::string list = [] {
    std::string out;
    for (const Family& f : kFamilies) {
      std::string modes;
      for (const char* m : kModes)
        if (offers(f, m)) modes += (modes.empty() ? "" : ", ") + std::string(m);
      if (modes.empty()) continue;
      out += (out.empty() ? "" : ", ") + std::string(f.kernel_name) + " (" + modes + ")";
    }
    return out + ", cipher_null (ecb)";
  }();
  return list;
}

}  // namespace dmnbd::crypt
