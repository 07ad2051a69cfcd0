// LUKS volumes formatted here with libcryptsetup itself (a known volume key,
// PBKDF2 with few iterations): the crypt table is the line cryptsetup would
// load; what a crypt device built from it writes is AES-XTS with plain64 IVs
// at the volume's data offset (checked with OpenSSL directly) and reads back
// through a fresh one; a wrong passphrase, a file that is not LUKS, a zeroed
// LUKS1 header, key files and their permissions.
#include "luks/luks_volume.hpp"

#include <fcntl.h>
#include <libcryptsetup.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "config/config.hpp"
#include "config/device_set.hpp"
#include "dm/table.hpp"
#include "test_support.hpp"

namespace dmnbd {
namespace {

using test::run_sync;

constexpr size_t kKeyBytes = 64;  // aes-xts-plain64, 512 bits
const std::string kPassphrase = "correct horse";

std::span<const uint8_t> bytes_of(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// Byte i of the volume key is (13 i + 5) mod 256.
std::vector<char> known_key() {
  std::vector<char> key(kKeyBytes);
  for (size_t i = 0; i < key.size(); ++i) key[i] = static_cast<char>(i * 13 + 5);
  return key;
}

std::string hex_of(std::span<const char> bytes) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  for (char c : bytes) {
    const auto b = static_cast<uint8_t>(c);
    out += kDigits[b >> 4];
    out += kDigits[b & 15];
  }
  return out;
}

class LuksTest : public ::testing::Test {
 protected:
  // `cryptsetup luksFormat --type TYPE [--sector-size N]` with the known key.
  std::string format(const std::string& name, const char* type, size_t bytes,
                     uint32_t sector_size = 512) {
    const std::string path = (dir_ / name).string();
    ::truncate(path.c_str(), 0);
    {
      const int fd = ::open(path.c_str(), O_RDWR | O_CREAT, 0600);
      EXPECT_GE(fd, 0);
      EXPECT_EQ(::ftruncate(fd, static_cast<off_t>(bytes)), 0);
      ::close(fd);
    }
    crypt_device* cd = nullptr;
    EXPECT_EQ(crypt_init(&cd, path.c_str()), 0);
    crypt_pbkdf_type pbkdf{.type = CRYPT_KDF_PBKDF2,
                           .hash = "sha256",
                           .iterations = 1000,
                           .flags = CRYPT_PBKDF_NO_BENCHMARK};
    EXPECT_EQ(crypt_set_pbkdf_type(cd, &pbkdf), 0);
    const std::vector<char> key = known_key();
    int r;
    if (std::string(type) == CRYPT_LUKS1) {
      crypt_params_luks1 params{.hash = "sha256"};
      r = crypt_format(cd, CRYPT_LUKS1, "aes", "xts-plain64", nullptr, key.data(), key.size(),
                       &params);
    } else {
      crypt_params_luks2 params{.pbkdf = &pbkdf, .sector_size = sector_size};
      r = crypt_format(cd, CRYPT_LUKS2, "aes", "xts-plain64", nullptr, key.data(), key.size(),
                       &params);
    }
    EXPECT_EQ(r, 0);
    EXPECT_GE(crypt_keyslot_add_by_volume_key(cd, CRYPT_ANY_SLOT, key.data(), key.size(),
                                              kPassphrase.data(), kPassphrase.size()),
              0);
    crypt_free(cd);
    return path;
  }

  std::string error_of(const std::string& path, const std::string& passphrase) {
    try {
      luks_table(path, bytes_of(passphrase));
      return "no error";
    } catch (const LuksError& e) {
      return e.what();
    }
  }

  std::shared_ptr<Table> build(const LuksTable& table) {
    auto built = Table::build(table.text(), resolver_, false);
    run_sync(built->open());
    return built;
  }

  // AES-256-XTS of `plain` as dm-crypt's plain64 IV for the 512-byte sector
  // `iv_sector`, one `sector_size` unit at a time.
  static std::vector<std::byte> xts(std::span<const std::byte> plain, uint64_t iv_sector,
                                    uint32_t sector_size) {
    std::vector<std::byte> out(plain.size());
    const std::vector<char> key = known_key();
    EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
    for (size_t at = 0; at < plain.size(); at += sector_size) {
      uint8_t iv[16] = {};
      const uint64_t sector = iv_sector + at / 512;
      for (int i = 0; i < 8; ++i) iv[i] = static_cast<uint8_t>(sector >> (8 * i));
      int n = 0;
      EVP_EncryptInit_ex(ctx, EVP_aes_256_xts(), nullptr,
                         reinterpret_cast<const unsigned char*>(key.data()), iv);
      EVP_EncryptUpdate(ctx, reinterpret_cast<unsigned char*>(out.data() + at), &n,
                        reinterpret_cast<const unsigned char*>(plain.data() + at),
                        static_cast<int>(sector_size));
    }
    EVP_CIPHER_CTX_free(ctx);
    return out;
  }

  // Writes a known plaintext at sector 8 through one crypt device, checks the
  // file holds its AES-XTS at the data offset, reads it through a fresh one.
  void round_trip(const std::string& path, uint64_t data_offset, uint32_t sector_size) {
    std::vector<std::byte> plain(64 << 10);
    for (size_t i = 0; i < plain.size(); ++i) plain[i] = static_cast<std::byte>(i * 7 + 3);
    {
      const LuksTable table = luks_table(path, bytes_of(kPassphrase));
      auto writer = build(table);
      ASSERT_FALSE(run_sync(writer->entries()[0].target->map(
          {.op = BioOp::write, .sector = 8, .sectors = plain.size() / 512, .data = plain})));
      run_sync(writer->teardown());
    }
    const std::vector<std::byte> file = test::read_file_bytes(path);
    const size_t at = (data_offset + 8) * 512;
    ASSERT_GE(file.size(), at + plain.size());
    EXPECT_EQ(std::vector<std::byte>(file.begin() + at, file.begin() + at + plain.size()),
              xts(plain, 8, sector_size))
        << "the ciphertext is not AES-XTS with plain64 IVs at the data offset";
    const LuksTable table = luks_table(path, bytes_of(kPassphrase));
    auto reader = build(table);
    std::vector<std::byte> back(plain.size());
    ASSERT_FALSE(run_sync(reader->entries()[0].target->map(
        {.op = BioOp::read, .sector = 8, .sectors = back.size() / 512, .data = back})));
    EXPECT_EQ(back, plain);
    run_sync(reader->teardown());
  }

  test::TempDir dir_;
  test::DirResolver resolver_{dir_.path()};
};

TEST_F(LuksTest, Luks1TableIsCryptsetups) {
  const std::string path = format("v1.img", CRYPT_LUKS1, 8 << 20);
  const LuksTable table = luks_table(path, bytes_of(kPassphrase));
  // LUKS1's default data offset is 2 MiB (4096 sectors), aligned.
  EXPECT_EQ(table.text(),
            "0 12288 crypt aes-xts-plain64 " + hex_of(known_key()) + " 0 " + path + " 4096");
  EXPECT_EQ(table.sectors(), 12288u);
  round_trip(path, 4096, 512);
}

TEST_F(LuksTest, Luks2TableIsCryptsetups) {
  const std::string path = format("v2.img", CRYPT_LUKS2, 32 << 20);
  const LuksTable table = luks_table(path, bytes_of(kPassphrase));
  // LUKS2's default header area is 16 MiB (32768 sectors).
  EXPECT_EQ(table.text(),
            "0 32768 crypt aes-xts-plain64 " + hex_of(known_key()) + " 0 " + path + " 32768");
  round_trip(path, 32768, 512);
}

TEST_F(LuksTest, Luks2With4KiBSectorsHasTheSectorSizeFeature) {
  const std::string path = format("v4.img", CRYPT_LUKS2, 32 << 20, 4096);
  const LuksTable table = luks_table(path, bytes_of(kPassphrase));
  EXPECT_EQ(table.text(), "0 32768 crypt aes-xts-plain64 " + hex_of(known_key()) + " 0 " + path +
                              " 32768 1 sector_size:4096");
  // IVs still count 512-byte sectors (no iv_large_sectors), as cryptsetup's.
  round_trip(path, 32768, 4096);
}

TEST_F(LuksTest, AllowDiscardsIsAFeature) {
  const std::string path = format("v2.img", CRYPT_LUKS2, 32 << 20, 4096);
  const LuksTable table = luks_table(path, bytes_of(kPassphrase), {.allow_discards = true});
  EXPECT_TRUE(table.text().ends_with(" 32768 2 allow_discards sector_size:4096")) << table.text();
}

TEST_F(LuksTest, WrongPassphrase) {
  const std::string path = format("v1.img", CRYPT_LUKS1, 8 << 20);
  EXPECT_EQ(error_of(path, "wrong"), "no key slot matches the passphrase for " + path);
  EXPECT_EQ(error_of(path, kPassphrase + "\n"), "no key slot matches the passphrase for " + path);
}

TEST_F(LuksTest, NotLuksAndDamagedHeaders) {
  test::make_patterned_file(dir_ / "plain.img", 8 << 20);
  const std::string plain = (dir_ / "plain.img").string();
  EXPECT_EQ(error_of(plain, kPassphrase),
            "Device " + plain + " is not a valid LUKS device, or its header is damaged");
  const std::string path = format("v1.img", CRYPT_LUKS1, 8 << 20);
  {
    const int fd = ::open(path.c_str(), O_WRONLY);
    std::vector<char> zeroes(4096);
    EXPECT_EQ(::pwrite(fd, zeroes.data(), zeroes.size(), 0), 4096);
    ::close(fd);
  }
  EXPECT_EQ(error_of(path, kPassphrase),
            "Device " + path + " is not a valid LUKS device, or its header is damaged");
  const std::string missing = (dir_ / "missing.img").string();
  EXPECT_EQ(error_of(missing, kPassphrase),
            "cannot open " + missing + ": No such file or directory");
}

TEST_F(LuksTest, KeyFilesAreReadWholeAndMustBePrivate) {
  const std::string path = (dir_ / "pw").string();
  std::ofstream(path, std::ios::binary) << "line one\nline two\n";
  ::chmod(path.c_str(), 0600);
  const SecretBytes pass = read_key_file(path, true);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(pass.bytes().data()), pass.size()),
            "line one\nline two\n");
  ::chmod(path.c_str(), 0640);
  try {
    read_key_file(path, true);
    ADD_FAILURE() << "a group-readable key file was read";
  } catch (const LuksError& e) {
    EXPECT_EQ(std::string(e.what()), "key file " + path +
                                         ": permissions 0640 are too open: group and others must "
                                         "have no access (chmod 600 " +
                                         path + ")");
  }
  EXPECT_EQ(read_key_file(path, false).size(), 18u);
  // One line, as cryptsetup reads a passphrase from a pipe.
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  ASSERT_EQ(::write(fds[1], "pass word\nrest", 14), 14);
  ::close(fds[1]);
  const SecretBytes line = read_passphrase_line(fds[0]);
  ::close(fds[0]);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(line.bytes().data()), line.size()),
            "pass word");
}

// A `luks:` device entry: its paths resolve against the config, the device
// maps the plaintext, and its errors name the entry's line.
TEST_F(LuksTest, ConfigEntries) {
  format("vol.img", CRYPT_LUKS2, 32 << 20, 4096);
  const std::string pw = (dir_ / "pw").string();
  std::ofstream(pw, std::ios::binary) << kPassphrase;
  ::chmod(pw.c_str(), 0600);
  const std::string yaml =
      "devices:\n"
      "  - name: secret\n"
      "    read_only: true\n"
      "    luks: { file: vol.img, key_file: pw }\n";
  DeviceManager manager(dir_.path());
  run_blocking(build_devices(parse_config(yaml, "c.yaml", dir_.path()), manager));
  auto device = manager.get("secret");
  EXPECT_TRUE(device->read_only());
  EXPECT_EQ(device->live_table()->table_text(Table::Keys::shown),
            "0 32768 crypt aes-xts-plain64 " + hex_of(known_key()) + " 0 " +
                (dir_ / "vol.img").string() + " 32768 1 sector_size:4096\n");
  run_blocking(manager.teardown_all());

  auto error_of = [&](const std::string& text) {
    try {
      DeviceManager other(dir_.path());
      run_blocking(build_devices(parse_config(text, "c.yaml", dir_.path()), other));
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(error_of("devices:\n  - name: s\n    table: '0 8 zero'\n    luks: { file: v }\n"),
            "c.yaml:4: a device entry has 'table' or 'luks', not both");
  EXPECT_EQ(error_of("devices:\n  - name: s\n    luks: { file: vol.img }\n"),
            "c.yaml:3: 'luks' needs 'file' and 'key_file'");
  EXPECT_EQ(error_of("devices:\n  - name: s\n    luks: { file: vol.img, key_file: pw, x: 1 }\n"),
            "c.yaml:3: unknown key 'x' in luks");
  std::ofstream(dir_ / "bad", std::ios::binary) << "wrong";
  ::chmod((dir_ / "bad").c_str(), 0600);
  EXPECT_EQ(
      error_of("devices:\n  - name: s\n    luks: { file: vol.img, key_file: bad }\n"),
      "c.yaml:3: device s: no key slot matches the passphrase for " + (dir_ / "vol.img").string());
  ::chmod(pw.c_str(), 0604);
  EXPECT_EQ(error_of(yaml), "c.yaml:4: device secret: key file " + pw +
                                ": permissions 0604 are too open: group and others must have no "
                                "access (chmod 600 " +
                                pw + ")");
}

}  // namespace
}  // namespace dmnbd
