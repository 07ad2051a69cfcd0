// crypt: known answers from cryptsetup for each IV mode and cipher, every
// constructor error in the kernel's words, keycount, sector_size and
// iv_large_sectors, iv_offset, the key messages and the resume they guard,
// masked tables, write-zeroes, discards, requests encrypted on the CPU pool,
// and requests smaller than the encryption sector.
#include <keyutils.h>
#include <openssl/evp.h>

#include <gtest/gtest.h>

#include "dm/table.hpp"
#include "test_support.hpp"

namespace dmnbd {
namespace {

using test::run_sync;

std::string hex_of(std::span<const uint8_t> bytes) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  for (uint8_t b : bytes) out += std::string{kDigits[b >> 4], kDigits[b & 15]};
  return out;
}

// The vectors' key: byte i is (37 i + 11) mod 256.
std::string pattern_key(size_t bytes) {
  std::vector<uint8_t> key(bytes);
  for (size_t i = 0; i < bytes; ++i) key[i] = static_cast<uint8_t>(i * 37 + 11);
  return hex_of(key);
}

// The vectors' plaintext: byte i is (7 i + 3) mod 256.
std::vector<std::byte> pattern_plaintext(size_t bytes) {
  std::vector<std::byte> out(bytes);
  for (size_t i = 0; i < bytes; ++i) out[i] = static_cast<std::byte>(i * 7 + 3);
  return out;
}

std::string sha256_of(std::span<const std::byte> data) {
  uint8_t digest[32];
  unsigned size = 0;
  EVP_Digest(data.data(), data.size(), digest, &size, EVP_sha256(), nullptr);
  return hex_of(std::span(digest, size));
}

class CryptTest : public ::testing::Test {
 protected:
  void SetUp() override { make_zero_file("c.img", 4 << 20); }
  void make_zero_file(const std::string& name, size_t size) {
    std::vector<char> zeroes(size);
    std::ofstream(dir_ / name, std::ios::binary).write(zeroes.data(), zeroes.size());
  }
  std::shared_ptr<Table> build(const std::string& text) {
    return Table::build(text, resolver_, false);
  }
  std::string error_of(const std::string& text) { return test::build_error(text, resolver_); }
  static Status write(Target& t, uint64_t sector, std::span<std::byte> data) {
    return run_sync(
        t.map({.op = BioOp::write, .sector = sector, .sectors = data.size() / 512, .data = data}));
  }
  static Status read(Target& t, uint64_t sector, std::span<std::byte> data) {
    return run_sync(
        t.map({.op = BioOp::read, .sector = sector, .sectors = data.size() / 512, .data = data}));
  }
  std::vector<std::byte> file(const std::string& name = "c.img") {
    return test::read_file_bytes(dir_ / name);
  }
  std::string msg(Target& t, std::vector<std::string> words) {
    try {
      return run_sync(t.message(std::move(words)));
    } catch (const TargetError& e) {
      return std::string("error: ") + e.what();
    }
  }
  test::TempDir dir_;
  test::DirResolver resolver_{dir_.path()};
};

struct KnownAnswer {
  const char* cipher;
  size_t key_bytes;
  uint32_t sector_size;
  const char* sha256;  // of the ciphertext of 16 KiB of pattern_plaintext
};

// Made by `cryptsetup reencrypt --encrypt --type luks2 --cipher C --key-size
// 8K --sector-size S --volume-key-file <pattern key>` over a file starting
// with the plaintext (cryptsetup 2.6.1, its own userspace IV generators):
// the sha256 of the first 16 KiB of the data segment.
const KnownAnswer kAnswers[] = {
    {"aes-xts-plain64", 64, 512,
     "4fbcfb1790598e8a4b63e7d10ba8259f13eccd20c8d65fa0b214a5337511fcfd"},
    {"aes-xts-plain64", 32, 4096,
     "0775cf5d4e53bcdda6e02cedcd07ace5e969aa99f97afa201693293c27d49ec8"},
    {"aes-cbc-essiv:sha256", 32, 512,
     "6a379bf7035f6b85f851ce4f427a91f214f46a1b9dcc333b84536a6406455c5c"},
    {"aes-cbc-essiv:sha256", 32, 4096,
     "4d9e1503e03260af4dc5388390f54d98a808fc8ab80e55180fc086c13f65ae44"},
    {"aes-xts-essiv:sha256", 64, 512,
     "99af9dd09a69c70c00cf6d469173641af75e4125dd78832d79b9379c66a0eccc"},
    {"aes-cbc-plain", 16, 512, "6ebeb832d1d0f4733f64ca14b62d664f5dffb699c65cdceeba3ada7ddc66956a"},
    {"aes-cbc-plain64", 24, 512,
     "d5457b71b3dd9477d2f4c93ba24acb2abd7cbadbe1913155d99959a138d6229f"},
    {"aes-cbc-plain64be", 32, 512,
     "c3883fc235cdde1f90616dc3bd3dc1ff9dc60d1ccc11961037feb1592f0375f1"},
    {"aes-cbc-benbi", 32, 512, "7bbc267b976ef84b07d5b997d4a184c583cb2d4a527a53eecc9dc5c4f680fd67"},
    {"aes-cbc-null", 32, 512, "06a8ed066e268a99b156a5c3f4927fab69abfc0d9921589be3f0ac9fa0c8ddf7"},
    {"aes-ecb", 32, 512, "1e34ed9de1aed7efcdd3d1f825b03ec511bccfdaf5ead6e50491bf2fe5109aa9"},
    {"aes-cbc-eboiv", 32, 512, "c519decd1a4cf10b1ffc751db34f777a4b2150c7a359d3da96d0b2db028cb24e"},
    {"aes-ctr-plain64", 32, 512,
     "1da09cbd4ee66fbc9b8f376028b77d246c06a00716d7cf9de911ac1b4963c10e"},
    {"camellia-cbc-plain64", 32, 512,
     "8243bcb17d26b0936987f1cf85e597f9b62888b2e6c2e84e8545475105f858fa"},
};

TEST_F(CryptTest, EachCipherAndIvModeMatchesCryptsetup) {
  for (const KnownAnswer& v : kAnswers) {
    SCOPED_TRACE(std::string(v.cipher) + " " + std::to_string(v.key_bytes) + " " +
                 std::to_string(v.sector_size));
    make_zero_file("v.img", 16384);
    std::string line =
        "0 32 crypt " + std::string(v.cipher) + " " + pattern_key(v.key_bytes) + " 0 v.img 0";
    if (v.sector_size != 512) line += " 1 sector_size:" + std::to_string(v.sector_size);
    auto table = build(line);
    Target& t = *table->entries()[0].target;
    std::vector<std::byte> plain = pattern_plaintext(16384);
    ASSERT_FALSE(write(t, 0, plain));
    EXPECT_EQ(sha256_of(file("v.img")), v.sha256);
    std::vector<std::byte> back(16384);
    ASSERT_FALSE(read(t, 0, back));
    EXPECT_EQ(back, plain);
  }
}

TEST_F(CryptTest, ConstructorErrorsAreTheKernels) {
  const std::string k32 = pattern_key(32), k64 = pattern_key(64);
  const std::pair<std::string, std::string> cases[] = {
      {"0 8 crypt aes-xts-plain64 " + k64 + " 0 c.img", "crypt: Not enough arguments"},
      {"0 8 crypt aes-xts-plain64 :x:user:k 0 c.img 0", "crypt: Cannot parse key size"},
      {"0 8 crypt aes(xts)-plain64 " + k64 + " 0 c.img 0", "crypt: Bad cipher specification"},
      {"0 8 crypt aes:3-cbc-plain " + k32 + " 0 c.img 0",
       "crypt: Bad cipher key count specification"},
      {"0 8 crypt aes:0-cbc-plain " + k32 + " 0 c.img 0",
       "crypt: Bad cipher key count specification"},
      {"0 8 crypt aes-cbc " + k32 + " 0 c.img 0", "crypt: IV mechanism required"},
      {"0 8 crypt aes-cbc-essiv " + k32 + " 0 c.img 0",
       "crypt: Digest algorithm missing for ESSIV mode"},
      {"0 8 crypt aes-cbc-nonsense " + k32 + " 0 c.img 0", "crypt: Invalid IV mode"},
      {"0 8 crypt aes-cbc-plain " + k32 + " x c.img 0", "crypt: Invalid iv_offset sector"},
      {"0 8 crypt aes-cbc-plain " + k32 + " 4 c.img 0 1 sector_size:4096",
       "crypt: Invalid iv_offset sector"},
      {"0 8 crypt aes-cbc-plain " + k32 + " 0 c.img x", "crypt: Invalid device sector"},
      {"0 8 crypt aes-cbc-plain " + k32 + " 0 c.img 0 1 sector_size:1000",
       "crypt: Invalid feature value for sector_size"},
      {"0 8 crypt aes-cbc-plain " + k32 + " 0 c.img 0 1 sector_size:8192",
       "crypt: Invalid feature value for sector_size"},
      {"0 12 crypt aes-cbc-plain " + k32 + " 0 c.img 0 1 sector_size:4096",
       "crypt: Device size is not multiple of sector_size feature"},
      {"0 8 crypt aes-cbc-plain " + k32 + " 0 c.img 0 1 bogus", "crypt: Invalid feature arguments"},
      {"0 8 crypt aes-cbc-plain " + k32 + " 0 c.img 0 2 allow_discards",
       "crypt: Invalid number of feature args"},
      {"0 8 crypt aes-cbc-plain " + k32 + " 0 c.img 0 x", "crypt: Invalid number of feature args"},
      {"0 8 crypt aes-cbc-plain zz" + k32.substr(2) + " 0 c.img 0",
       "crypt: Error decoding and setting key (the key is not hexadecimal)"},
      {"0 8 crypt aes-cbc-plain - 0 c.img 0",
       "crypt: Error decoding and setting key (the cipher takes no key of 0 bytes)"},
      {"0 8 crypt aes-cbc-plain " + pattern_key(20) + " 0 c.img 0",
       "crypt: Error decoding and setting key (the cipher takes no key of 20 bytes)"},
      {"0 8 crypt aes-cbc-essiv:sha1 " + k32 + " 0 c.img 0",
       "crypt: Error decoding and setting key (the block cipher takes no 20-byte sha1 salt as its "
       "ESSIV key)"},
      {"0 8 crypt aes-ctr-eboiv " + k32 + " 0 c.img 0",
       "crypt: Error creating IV (Block size of EBOIV cipher does not match IV size of block "
       "cipher)"},
      {"0 8 crypt aes-xts-plain64 " + std::string(128, '0') + " 0 c.img 0",
       "crypt: Error decoding and setting key (OpenSSL refuses an xts key whose two halves are "
       "equal)"},
      {"0 8 crypt capi:xts-plain64 " + k64 + " 0 c.img 0", "crypt: Error allocating crypto tfm"},
      {"0 8 crypt aes-cbc-plain " + k32 + " 0 nosuch.img 0", "(some error)"},
  };
  for (const auto& [table, want] : cases) {
    SCOPED_TRACE(table);
    const std::string got = error_of(table);
    if (want == "(some error)")
      EXPECT_NE(got, "(built)");
    else
      EXPECT_EQ(got, want);
  }
  // Errors that go on with a reason of dmnbd's own.
  EXPECT_TRUE(error_of("0 8 crypt aes-cbc-lmk " + k32 + " 0 c.img 0")
                  .starts_with("crypt: Invalid IV mode (lmk is not supported by dmnbd"));
  EXPECT_TRUE(error_of("0 8 crypt serpent-xts-plain64 " + k64 + " 0 c.img 0")
                  .starts_with("crypt: Error allocating crypto tfm (no cipher serpent here"));
  EXPECT_TRUE(error_of("0 8 crypt aes-cbc-essiv:nosuchhash " + k32 + " 0 c.img 0")
                  .starts_with("crypt: Error allocating crypto tfm"));
  EXPECT_TRUE(error_of("0 8 crypt aes-cbc-plain " + k32 + " 0 c.img 0 1 integrity:28:aead")
                  .starts_with("crypt: Integrity profile not supported."));
  EXPECT_TRUE(error_of("0 8 crypt aes-cbc-plain :32:logon:k 0 c.img 0")
                  .starts_with("crypt: Error decoding and setting key (the kernel gives no "
                               "process the payload of a logon key"));
  // And what builds.
  for (const std::string& good : std::vector<std::string>{
           "0 8 crypt cipher_null-ecb - 0 c.img 0",
           "0 8 crypt capi:xts(aes)-plain64 " + k64 + " 0 c.img 0",
           "0 8 crypt capi:cbc(aes)-essiv:sha256 " + k32 + " 0 c.img 0",
           "0 8 crypt aes " + pattern_key(16) + " 0 c.img 0",  // aes-cbc-plain
           "0 8 crypt aes-ecb-plain64 " + k32 + " 0 c.img 0",  // ecb: the IV mode is ignored
           "0 8 crypt aes:4-cbc-plain64 " + pattern_key(64) + " 7 c.img 5",
           "0 8 crypt aes-xts-plain64 " + k64 +
               " 0 c.img 0 6 same_cpu_crypt submit_from_crypt_cpus no_read_workqueue "
               "no_write_workqueue iv_large_sectors sector_size:4096",
       })
    EXPECT_EQ(error_of(good), "(built)") << good;
}

TEST_F(CryptTest, TableLinesInTheKernelsOrderAndMaskedAsDmsetupShowsThem) {
  const std::string k64 = pattern_key(64);
  auto table = build("0 8 crypt aes-xts-plain64 " + k64 +
                     " 16 c.img 8 4 iv_large_sectors sector_size:4096 allow_discards "
                     "no_read_workqueue\n");
  const std::string rest =
      " 16 c.img 8 4 allow_discards no_read_workqueue sector_size:4096 "
      "iv_large_sectors\n";
  EXPECT_EQ(table->table_text(Table::Keys::shown), "0 8 crypt aes-xts-plain64 " + k64 + rest);
  EXPECT_EQ(table->table_text(), "0 8 crypt aes-xts-plain64 " + std::string(128, '0') + rest);
  EXPECT_EQ(table->status_text(), "0 8 crypt\n");
  EXPECT_EQ(table->logical_block_size(), 4096u);
  // dmsetup masks "-" as well, character for character.
  EXPECT_EQ(build("0 8 crypt cipher_null-ecb - 0 c.img 0")->table_text(),
            "0 8 crypt cipher_null-ecb 0 0 c.img 0\n");
}

TEST_F(CryptTest, AKeyringKeyIsReadAndShownByItsReference) {
  std::vector<uint8_t> key(32);
  for (size_t i = 0; i < key.size(); ++i) key[i] = static_cast<uint8_t>(i * 37 + 11);
  const std::string desc = "dmnbd-crypt-test-" + std::to_string(getpid());
  if (add_key("user", desc.c_str(), key.data(), key.size(), KEY_SPEC_PROCESS_KEYRING) < 0)
    GTEST_SKIP() << "no kernel keyring here: " << std::strerror(errno);
  auto by_ref = build("0 32 crypt aes-cbc-essiv:sha256 :32:user:" + desc + " 0 c.img 0");
  const std::string line = "0 32 crypt aes-cbc-essiv:sha256 :32:user:" + desc + " 0 c.img 0\n";
  EXPECT_EQ(by_ref->table_text(), line);  // references are not secret
  EXPECT_EQ(by_ref->table_text(Table::Keys::shown), line);
  // The same key in hex writes the same ciphertext.
  make_zero_file("h.img", 4 << 20);
  auto by_hex = build("0 32 crypt aes-cbc-essiv:sha256 " + pattern_key(32) + " 0 h.img 0");
  std::vector<std::byte> plain = pattern_plaintext(16384);
  ASSERT_FALSE(write(*by_ref->entries()[0].target, 0, plain));
  ASSERT_FALSE(write(*by_hex->entries()[0].target, 0, plain));
  EXPECT_EQ(file("c.img"), file("h.img"));
  EXPECT_TRUE(error_of("0 8 crypt aes-cbc-plain :16:user:" + desc + " 0 c.img 0")
                  .starts_with("crypt: Error decoding and setting key (key " + desc +
                               " holds 32 bytes, not 16)"));
  EXPECT_TRUE(error_of("0 8 crypt aes-cbc-plain :32:user:no-such-" + desc + " 0 c.img 0")
                  .starts_with("crypt: Error decoding and setting key (no user key"));
}

// Sector s uses subkey s mod keycount: each sector of a keycount-4 table is
// what a one-key table of that subkey writes at the same sector.
TEST_F(CryptTest, KeycountPicksTheSubkeyBySector) {
  const std::string key = pattern_key(64);
  auto multi = build("0 8 crypt aes:4-cbc-plain64 " + key + " 0 c.img 0");
  std::vector<std::byte> plain = pattern_plaintext(4096);
  ASSERT_FALSE(write(*multi->entries()[0].target, 0, plain));
  const auto multi_bytes = file();
  for (size_t k = 0; k < 4; ++k) {
    make_zero_file("one.img", 4096);
    auto one = build("0 8 crypt aes-cbc-plain64 " + key.substr(k * 32, 32) + " 0 one.img 0");
    ASSERT_FALSE(write(*one->entries()[0].target, 0, plain));
    const auto one_bytes = file("one.img");
    for (size_t s = k; s < 8; s += 4)
      EXPECT_TRUE(std::equal(one_bytes.begin() + s * 512, one_bytes.begin() + (s + 1) * 512,
                             multi_bytes.begin() + s * 512))
          << "sector " << s << " subkey " << k;
  }
}

// The IV sector is (sector + iv_offset), divided by sector_size / 512 with
// iv_large_sectors: the same plaintext at a different place with the same IV
// sector gives the same ciphertext.
TEST_F(CryptTest, IvSectorCountsIvOffsetAndLargeSectors) {
  const std::string key = pattern_key(64);
  std::vector<std::byte> plain = pattern_plaintext(4096), out(4096);
  auto ciphertext_at = [&](const std::string& options, uint64_t iv_offset, uint64_t sector) {
    make_zero_file("iv.img", 1 << 20);
    auto t = build("0 512 crypt aes-xts-plain64 " + key + " " + std::to_string(iv_offset) +
                   " iv.img 0" + options);
    EXPECT_FALSE(write(*t->entries()[0].target, sector, plain));
    const auto bytes = file("iv.img");
    return std::vector<std::byte>(bytes.begin() + sector * 512,
                                  bytes.begin() + sector * 512 + 4096);
  };
  // iv_offset 16, sector 8 == iv_offset 0, sector 24 (one 4 KiB unit each).
  const std::string big = " 1 sector_size:4096";
  EXPECT_EQ(ciphertext_at(big, 16, 8), ciphertext_at(big, 0, 24));
  EXPECT_NE(ciphertext_at(big, 0, 8), ciphertext_at(big, 0, 24));
  // iv_large_sectors at sector 64 (IV 8) == IV counted in 512-byte units at sector 8.
  EXPECT_EQ(ciphertext_at(" 2 sector_size:4096 iv_large_sectors", 0, 64), ciphertext_at(big, 0, 8));
  // 512-byte units: iv_offset works per sector too.
  EXPECT_EQ(ciphertext_at("", 3, 8), ciphertext_at("", 0, 11));
}

TEST_F(CryptTest, KeyMessagesOnlyWhileSuspendedAndNoResumeWithoutAKey) {
  const std::string key = pattern_key(64);
  auto table = build("0 64 crypt aes-xts-plain64 " + key + " 0 c.img 0");
  Target& t = *table->entries()[0].target;
  std::vector<std::byte> plain = pattern_plaintext(4096), back(4096);
  ASSERT_FALSE(write(t, 0, plain));
  EXPECT_EQ(msg(t, {"key", "wipe"}), "error: not suspended during key manipulation.");
  run_sync(t.presuspend());
  run_sync(t.postsuspend());
  EXPECT_EQ(msg(t, {"key", "wipe"}), "");
  EXPECT_EQ(run_sync(t.preresume()), errno_status(EAGAIN));
  EXPECT_EQ(table->table_text(Table::Keys::shown),
            "0 64 crypt aes-xts-plain64 " + std::string(128, '0') + " 0 c.img 0\n");
  EXPECT_EQ(read(t, 0, back), errno_status(EIO));  // no key, no plaintext
  EXPECT_EQ(msg(t, {"key", "set", pattern_key(32)}), "error: the key size may not be changed");
  EXPECT_EQ(msg(t, {"key", "set"}), "error: unrecognised message received.");
  EXPECT_EQ(msg(t, {"key", "frob", key}), "error: unrecognised message received.");
  EXPECT_EQ(msg(t, {"key", "set", key}), "");
  EXPECT_FALSE(run_sync(t.preresume()));
  run_sync(t.resume());
  ASSERT_FALSE(read(t, 0, back));
  EXPECT_EQ(back, plain);
  EXPECT_EQ(msg(t, {"key", "set", key}), "error: not suspended during key manipulation.");
}

TEST_F(CryptTest, WriteZeroesWritesEncryptedZeroesAndDiscardsNeedAllowDiscards) {
  auto table = build("0 4096 crypt aes-xts-plain64 " + pattern_key(64) + " 0 c.img 0");
  Target& t = *table->entries()[0].target;
  ASSERT_FALSE(run_sync(t.map({.op = BioOp::write_zeroes, .sector = 0, .sectors = 4096})));
  std::vector<std::byte> back(4096 * 512, std::byte{1});
  ASSERT_FALSE(read(t, 0, back));
  EXPECT_TRUE(std::all_of(back.begin(), back.end(), [](std::byte b) { return b == std::byte{0}; }));
  const auto disk = file();
  EXPECT_FALSE(std::all_of(disk.begin(), disk.begin() + 4096 * 512,
                           [](std::byte b) { return b == std::byte{0}; }));
  EXPECT_EQ(run_sync(t.map(
                {.op = BioOp::write_zeroes, .sector = 0, .sectors = 8, .flags = kBioFastZero})),
            errno_status(EOPNOTSUPP));
  // Without allow_discards a discard leaves the ciphertext alone.
  ASSERT_FALSE(run_sync(t.map({.op = BioOp::discard, .sector = 0, .sectors = 4096})));
  EXPECT_EQ(file(), disk);
}

// Requests of 64 KiB and more are encrypted in parts on the CPU pool: the
// bytes are the same as when each piece is encrypted on its own.
TEST_F(CryptTest, LargeRequestsOnTheCpuPoolGiveTheSameBytes) {
  const std::string line = " crypt aes-cbc-essiv:sha256 " + pattern_key(32) + " 0 ";
  make_zero_file("small.img", 4 << 20);
  auto whole = build("0 8192" + line + "c.img 0");
  auto pieces = build("0 8192" + line + "small.img 0");
  std::vector<std::byte> plain = pattern_plaintext(3 << 20);
  ASSERT_FALSE(write(*whole->entries()[0].target, 8, plain));
  for (size_t at = 0; at < plain.size(); at += 16384)
    ASSERT_FALSE(
        write(*pieces->entries()[0].target, 8 + at / 512, std::span(plain).subspan(at, 16384)));
  EXPECT_EQ(file(), file("small.img"));
  std::vector<std::byte> back(plain.size());
  ASSERT_FALSE(read(*whole->entries()[0].target, 8, back));
  EXPECT_EQ(back, plain);
}

// With sector_size 4096 the Device reads and read-modify-writes whole 4 KiB
// units for smaller requests; the target never sees less.
TEST_F(CryptTest, RequestsSmallerThanTheSectorSizeAreReadModifyWritten) {
  auto device = test::make_device(
      "0 64 crypt aes-xts-plain64 " + pattern_key(64) + " 0 c.img 0 1 sector_size:4096", resolver_);
  EXPECT_EQ(device->logical_block_size(), 4096u);
  std::vector<std::byte> plain = pattern_plaintext(32768);
  ASSERT_FALSE(run_sync(device->write(0, plain, 0)));
  std::vector<std::byte> patch(700, std::byte{0xab});
  ASSERT_FALSE(run_sync(device->write(4096 + 1000, patch, 0)));
  std::copy(patch.begin(), patch.end(), plain.begin() + 4096 + 1000);
  std::vector<std::byte> back(32768);
  ASSERT_FALSE(run_sync(device->read(0, back, nullptr)));
  EXPECT_EQ(back, plain);
  std::vector<std::byte> middle(512);
  ASSERT_FALSE(run_sync(device->read(4096 + 512, middle, nullptr)));
  EXPECT_TRUE(std::equal(middle.begin(), middle.end(), plain.begin() + 4096 + 512));
  // A line that does not start on a whole 4 KiB unit is refused.
  EXPECT_EQ(error_of("0 1 zero\n1 8 crypt aes-xts-plain64 " + pattern_key(64) +
                     " 0 c.img 0 1 sector_size:4096"),
            "zero: (start sect 0 len 1) not aligned to h/w logical block size 4096");
  // And the area of the device under it must be whole units too.
  EXPECT_EQ(
      error_of("0 8 crypt aes-xts-plain64 " + pattern_key(64) + " 0 c.img 3 1 sector_size:4096"),
      "crypt: start=3 not aligned to h/w logical block size 4096 of c.img");
}

}  // namespace
}  // namespace dmnbd

namespace dmnbd {
namespace {

// A device stacked on a crypt device with 4 KiB units may send it bios that
// are no whole units: the crypt device reads, writes and zeroes them through
// whole units.
TEST_F(CryptTest, AStackedDeviceMayUseUnitsSmallerThanTheSectorSize) {
  auto lower = test::make_device(
      "0 64 crypt aes-xts-plain64 " + pattern_key(64) + " 0 c.img 0 1 sector_size:4096", resolver_,
      false, "lower");
  std::vector<std::byte> plain = pattern_plaintext(32768);
  ASSERT_FALSE(run_sync(lower->write(0, plain, 0)));
  resolver_.add("lower", lower);
  auto upper = test::make_device("0 64 linear lower 0", resolver_, false, "upper");
  ASSERT_FALSE(run_sync(upper->write_zeroes(512, 4608, 0)));  // sectors 1..9
  std::fill(plain.begin() + 512, plain.begin() + 5120, std::byte{0});
  std::vector<std::byte> patch(1024, std::byte{0x5c});
  ASSERT_FALSE(run_sync(upper->write(6144, patch, 0)));  // sectors 12..13
  std::copy(patch.begin(), patch.end(), plain.begin() + 6144);
  std::vector<std::byte> back(32768), part(1536);
  ASSERT_FALSE(run_sync(lower->read(0, back, nullptr)));
  EXPECT_EQ(back, plain);
  ASSERT_FALSE(run_sync(upper->read(5632, part, nullptr)));  // sectors 11..13
  EXPECT_TRUE(std::equal(part.begin(), part.end(), plain.begin() + 5632));
}

}  // namespace
}  // namespace dmnbd
