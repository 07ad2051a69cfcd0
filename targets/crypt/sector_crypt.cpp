#include "sector_crypt.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <bit>
#include <cstring>

#include "dmnbd/little_endian.hpp"
#include "dmnbd/secret_bytes.hpp"
#include "dmnbd/status.hpp"

namespace dmnbd::crypt {

// One thread's keyed ciphers: per subkey an encrypting and a decrypting
// context, and the IV cipher (ESSIV: per subkey; EBOIV: subkey 0's).
struct SectorCrypt::Contexts {
  uint64_t generation = 0;
  std::vector<std::unique_ptr<CipherContext>> enc, dec, iv;

  std::unique_ptr<Contexts> clone() const {
    auto out = std::make_unique<Contexts>();
    out->generation = generation;
    if (!copy(enc, out->enc) || !copy(dec, out->dec) || !copy(iv, out->iv)) return nullptr;
    return out;
  }

 private:
  static bool copy(const std::vector<std::unique_ptr<CipherContext>>& from,
                   std::vector<std::unique_ptr<CipherContext>>& to) {
    for (const auto& c : from) {
      to.push_back(c->clone());
      if (!to.back()) return false;
    }
    return true;
  }
};

namespace {

[[noreturn]] void refuse_key(const std::string& why) {
  throw TargetError("Error decoding and setting key (" + why + ")");
}

IvMode parse_iv_mode(const std::string& name) {
  static const std::pair<const char*, IvMode> kModes[] = {
      {"plain", IvMode::plain}, {"plain64", IvMode::plain64}, {"plain64be", IvMode::plain64be},
      {"essiv", IvMode::essiv}, {"benbi", IvMode::benbi},     {"null", IvMode::null},
      {"eboiv", IvMode::eboiv},
  };
  for (const auto& [word, mode] : kModes)
    if (name == word) return mode;
  for (const char* kernel_only : {"lmk", "tcw", "random", "elephant"})
    if (name == kernel_only)
      throw TargetError("Invalid IV mode (" + name +
                        " is not supported by dmnbd; it has plain, plain64, plain64be, essiv, "
                        "benbi, null and eboiv)");
  throw TargetError("Invalid IV mode");
}

struct EvpMdFree {
  void operator()(EVP_MD* md) const { EVP_MD_free(md); }
};
using EvpMd = std::unique_ptr<EVP_MD, EvpMdFree>;

EvpMd fetch_digest(const std::string& name) {
  return EvpMd(EVP_MD_fetch(nullptr, name.c_str(), nullptr));
}

void put_be64(uint8_t* at, uint64_t v) {
  for (int i = 0; i < 8; ++i) at[i] = static_cast<uint8_t>(v >> (56 - 8 * i));
}

}  // namespace

SectorCrypt::SectorCrypt(const CipherSpec& spec, uint32_t sector_size, bool iv_large_sectors)
    : algorithm_(spec.chainmode, spec.cipher),
      essiv_hash_(spec.essiv_hash),
      key_count_(spec.key_count),
      sector_size_(sector_size),
      sector_shift_(static_cast<unsigned>(std::countr_zero(sector_size)) - 9),
      iv_large_sectors_(iv_large_sectors) {
  if (essiv_hash_ && (!fetch_digest(*essiv_hash_) ||
                      algorithm_.iv_size() != algorithm_.block_size() || algorithm_.is_null()))
    throw TargetError("Error allocating crypto tfm (no essiv(" + spec.chainmode + "(" +
                      spec.cipher + ")," + *essiv_hash_ + ") here)");
  // At least a 64-bit sector number fits, as the kernel sizes its IV buffer.
  iv_size_ = algorithm_.iv_size() ? std::max<size_t>(algorithm_.iv_size(), 8) : 0;
  if (!iv_size_ && spec.iv_mode) {
    spdlog::warn("crypt: Selected cipher does not support IVs");
  } else if (spec.iv_mode) {
    iv_mode_ = parse_iv_mode(*spec.iv_mode);
  }
  benbi_shift_ = 9 - static_cast<unsigned>(std::countr_zero(algorithm_.block_size()));
}

SectorCrypt::~SectorCrypt() = default;

std::unique_ptr<SectorCrypt::Contexts> SectorCrypt::key_contexts(
    std::span<const uint8_t> key) const {
  // Extra bytes past key_count whole subkeys are ignored, as the kernel does.
  const size_t subkey_size = key.size() / key_count_;
  auto c = std::make_unique<Contexts>();
  for (size_t i = 0; i < key_count_; ++i) {
    const auto subkey = key.subspan(i * subkey_size, subkey_size);
    c->enc.push_back(algorithm_.keyed(subkey, true));
    c->dec.push_back(algorithm_.keyed(subkey, false));
    if (!c->enc.back() || !c->dec.back()) {
      const size_t half = subkey.size() / 2;
      if (subkey.size() && subkey.size() % 2 == 0 &&
          std::equal(subkey.begin(), subkey.begin() + half, subkey.begin() + half))
        refuse_key("OpenSSL refuses an xts key whose two halves are equal");
      refuse_key("the cipher takes no key of " + std::to_string(subkey.size()) + " bytes");
    }
    if (essiv_hash_) {
      uint8_t salt[EVP_MAX_MD_SIZE];
      unsigned salt_size = 0;
      EvpMd md = fetch_digest(*essiv_hash_);
      if (EVP_Digest(subkey.data(), subkey.size(), salt, &salt_size, md.get(), nullptr) != 1)
        refuse_key("hashing the ESSIV salt failed");
      c->iv.push_back(algorithm_.keyed_block_cipher(std::span(salt, salt_size)));
      wipe_memory(salt, sizeof salt);
      if (!c->iv.back())
        refuse_key("the block cipher takes no " + std::to_string(salt_size) + "-byte " +
                   *essiv_hash_ + " salt as its ESSIV key");
    }
  }
  if (iv_mode_ == IvMode::eboiv) {
    if (algorithm_.block_size() != iv_size_)
      throw TargetError(
          "Error creating IV (Block size of EBOIV cipher does not match IV size "
          "of block cipher)");
    c->iv.push_back(algorithm_.keyed_block_cipher(key.subspan(0, subkey_size)));
  }
  return c;
}

void SectorCrypt::set_key(std::span<const uint8_t> key) {
  std::unique_ptr<Contexts> keyed = key_contexts(key);
  std::lock_guard lk(mutex_);
  keyed->generation = ++key_generation_;
  prototype_ = std::move(keyed);
  free_.clear();
}

void SectorCrypt::wipe_key() {
  std::lock_guard lk(mutex_);
  ++key_generation_;
  prototype_.reset();
  free_.clear();
}

bool SectorCrypt::has_key() const {
  std::lock_guard lk(mutex_);
  return prototype_ != nullptr;
}

std::unique_ptr<SectorCrypt::Contexts> SectorCrypt::borrow() const {
  std::unique_ptr<Contexts> prototype_copy;
  {
    std::lock_guard lk(mutex_);
    if (!free_.empty()) {
      auto c = std::move(free_.back());
      free_.pop_back();
      return c;
    }
    if (!prototype_) return nullptr;
    prototype_copy = prototype_->clone();
  }
  return prototype_copy;
}

void SectorCrypt::give_back(std::unique_ptr<Contexts> contexts) const {
  std::lock_guard lk(mutex_);
  if (contexts->generation == key_generation_) free_.push_back(std::move(contexts));
}

void SectorCrypt::make_iv(const Contexts& c, uint64_t cc_sector, size_t subkey, uint8_t* iv) const {
  const uint64_t s = iv_large_sectors_ ? cc_sector >> sector_shift_ : cc_sector;
  std::memset(iv, 0, iv_size_);
  auto* at = reinterpret_cast<std::byte*>(iv);
  switch (iv_mode_) {
    case IvMode::plain:
      put_le32(at, static_cast<uint32_t>(s));
      break;
    case IvMode::plain64:
    case IvMode::essiv:
      put_le64(at, s);
      break;
    case IvMode::plain64be:
      put_be64(iv + iv_size_ - 8, s);
      break;
    case IvMode::benbi:
      put_be64(iv + iv_size_ - 8, (s << benbi_shift_) + 1);
      break;
    case IvMode::eboiv:
      put_le64(at, s * sector_size_);
      break;
    case IvMode::null:
    case IvMode::none:
      break;
  }
  if (essiv_hash_) c.iv[subkey]->run({}, iv, iv, iv_size_);
  if (iv_mode_ == IvMode::eboiv) c.iv[0]->run({}, iv, iv, iv_size_);
}

bool SectorCrypt::convert(bool encrypt, uint64_t cc_sector, const uint8_t* in, uint8_t* out,
                          size_t bytes) const {
  std::unique_ptr<Contexts> c = borrow();
  if (!c) return false;
  const uint64_t step = sector_size_ >> 9;
  const std::span<const uint8_t> no_iv;
  alignas(16) uint8_t iv[32];
  const std::span<const uint8_t> iv_span = iv_size_ ? std::span(iv, algorithm_.iv_size()) : no_iv;
  bool good = true;
  for (size_t at = 0; good && at < bytes; at += sector_size_, cc_sector += step) {
    const size_t subkey = cc_sector & (key_count_ - 1);
    if (iv_size_) make_iv(*c, cc_sector, subkey, iv);
    CipherContext& cipher = encrypt ? *c->enc[subkey] : *c->dec[subkey];
    good = cipher.run(iv_span, in + at, out + at, sector_size_);
  }
  give_back(std::move(c));
  return good;
}

}  // namespace dmnbd::crypt
