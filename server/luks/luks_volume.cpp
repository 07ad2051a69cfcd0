#include "luks/luks_volume.hpp"

#include <fcntl.h>
#include <libcryptsetup.h>
#include <linux/fs.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>

namespace dmnbd {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kSector = 512;
// cryptsetup's compiled-in maximum key file size (DEFAULT_KEYFILE_SIZE_MAXKB).
constexpr size_t kMaxKeyFileBytes = 8u << 20;

// libcryptsetup's error messages during one call on this thread, for the
// error we throw; everything else it would print is dropped. Its messages
// name devices and keyslots, never keys; a message that holds the passphrase
// all the same is left out.
struct LogCapture {
  std::span<const uint8_t> passphrase;
  std::string errors;
};
thread_local LogCapture* capture = nullptr;

void on_log(int level, const char* message, void*) {
  if (level != CRYPT_LOG_ERROR || !capture || !message) return;
  std::string_view text(message);
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
  const auto& pass = capture->passphrase;
  if (pass.size() >= 3 && text.find(std::string_view(reinterpret_cast<const char*>(pass.data()),
                                                     pass.size())) != std::string_view::npos)
    return;
  spdlog::debug("libcryptsetup: {}", text);
  if (!capture->errors.empty()) capture->errors += "; ";
  capture->errors += text;
}

// Routes libcryptsetup's logging through on_log for the calls of one open.
class CaptureScope {
 public:
  explicit CaptureScope(std::span<const uint8_t> passphrase) : capture_{passphrase, {}} {
    static std::once_flag once;
    std::call_once(once, [] {
      crypt_set_debug_level(CRYPT_DEBUG_NONE);
      crypt_set_log_callback(nullptr, on_log, nullptr);  // also before a device exists
    });
    capture = &capture_;
  }
  ~CaptureScope() { capture = nullptr; }
  CaptureScope(const CaptureScope&) = delete;
  CaptureScope& operator=(const CaptureScope&) = delete;
  // " (what libcryptsetup logged)" or, with nothing logged, " (strerror)".
  std::string why(int r) const {
    const std::string what = capture_.errors.empty() ? std::strerror(-r) : capture_.errors;
    return " (" + what + ")";
  }
  // " (what libcryptsetup logged)", or nothing.
  std::string logged() const { return capture_.errors.empty() ? "" : " (" + capture_.errors + ")"; }

 private:
  LogCapture capture_;
};

struct FreeDevice {
  crypt_device* cd = nullptr;
  ~FreeDevice() {
    if (cd) crypt_free(cd);
  }
};

// The size of a regular file or block device, in sectors (rounded down, as
// cryptsetup's device_info does).
uint64_t device_sectors(const fs::path& file) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw LuksError("cannot open " + file.string() + ": " + std::strerror(errno));
  struct stat st {};
  uint64_t bytes = 0;
  int rc = fstat(fd, &st);
  if (rc == 0 && S_ISBLK(st.st_mode))
    rc = ioctl(fd, BLKGETSIZE64, &bytes);
  else if (rc == 0 && S_ISREG(st.st_mode))
    bytes = static_cast<uint64_t>(st.st_size);
  else if (rc == 0)
    errno = EINVAL;
  const int err = errno;
  ::close(fd);
  if (rc != 0 || (!S_ISBLK(st.st_mode) && !S_ISREG(st.st_mode)))
    throw LuksError("cannot use " + file.string() + ": " +
                    (rc != 0 ? std::strerror(err) : "not a regular file or block device"));
  return bytes / kSector;
}

// A LUKS2 volume's default segment size in sectors; 0 for "dynamic" (up to
// the end of the device). libcryptsetup has no getter for it but its JSON.
uint64_t luks2_segment_sectors(crypt_device* cd, const fs::path& file) {
  const char* text = nullptr;
  if (crypt_dump_json(cd, &text, 0) < 0 || !text) return 0;
  const nlohmann::json metadata = nlohmann::json::parse(text, nullptr, false);
  if (metadata.is_discarded() || !metadata.contains("segments")) return 0;
  const auto& segments = metadata["segments"];
  if (!segments.contains("0") || !segments["0"].contains("size")) return 0;
  const auto& size = segments["0"]["size"];
  if (!size.is_string() || size.get<std::string>() == "dynamic") return 0;
  try {
    return std::stoull(size.get<std::string>()) / kSector;
  } catch (const std::exception&) {
    throw LuksError(file.string() + ": the LUKS2 segment size '" + size.get<std::string>() +
                    "' is not a number");
  }
}

// Refuses what a crypt table alone cannot map: a LUKS2 volume in the middle
// of a reencryption (two segments and a moving boundary), one with
// requirements this libcryptsetup does not know, and one with integrity
// (authenticated encryption needs a dm-integrity device below crypt).
void check_luks2_mappable(crypt_device* cd, const fs::path& file) {
  uint32_t requirements = 0;
  if (crypt_persistent_flags_get(cd, CRYPT_FLAGS_REQUIREMENTS, &requirements) == 0) {
    if (requirements & (CRYPT_REQUIREMENT_ONLINE_REENCRYPT | CRYPT_REQUIREMENT_OFFLINE_REENCRYPT))
      throw LuksError(file.string() +
                      ": a LUKS2 reencryption is in progress; finish it first (cryptsetup "
                      "reencrypt --resume-only " +
                      file.string() + ")");
    if (requirements & CRYPT_REQUIREMENT_UNKNOWN)
      throw LuksError(file.string() +
                      ": the LUKS2 header has requirements this libcryptsetup does not know");
  }
  if (crypt_reencrypt_status(cd, nullptr) != CRYPT_REENCRYPT_NONE)
    throw LuksError(file.string() + ": a LUKS2 reencryption is in progress; finish it first");
  crypt_params_integrity integrity{};
  if (crypt_get_integrity_info(cd, &integrity) == 0 && integrity.integrity &&
      std::strcmp(integrity.integrity, "none") != 0)
    throw LuksError(file.string() + ": LUKS2 with integrity (" + integrity.integrity +
                    ") needs a dm-integrity device below crypt, which dmnbd does not have");
}

void append_hex(std::string& out, std::span<const uint8_t> bytes) {
  static const char kDigits[] = "0123456789abcdef";
  for (uint8_t b : bytes) {
    out += kDigits[b >> 4];
    out += kDigits[b & 15];
  }
}

// The table parser splits on whitespace, and a backslash escapes the next
// character.
std::string table_word(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == ' ' || c == '\t' || c == '\\' || c == '#') out += '\\';
    out += c;
  }
  return out;
}

}  // namespace

LuksTable luks_table(const fs::path& file_in, std::span<const uint8_t> passphrase,
                     const LuksOptions& options) {
  const fs::path file = fs::absolute(file_in).lexically_normal();
  const uint64_t device_size = device_sectors(file);  // the clear error for a missing file
  CaptureScope log(passphrase);
  FreeDevice device;
  if (int r = crypt_init(&device.cd, file.c_str()); r < 0)
    throw LuksError("cannot open " + file.string() + log.why(r));
  crypt_device* cd = device.cd;
  crypt_set_log_callback(cd, on_log, nullptr);
  // libcryptsetup says nothing more here (cryptsetup prints its own words).
  if (int r = crypt_load(cd, CRYPT_LUKS, nullptr); r < 0)
    throw LuksError("Device " + file.string() +
                    " is not a valid LUKS device, or its header is damaged" + log.logged());
  const char* type = crypt_get_type(cd);
  const bool luks2 = type && std::strcmp(type, CRYPT_LUKS2) == 0;
  if (luks2) check_luks2_mappable(cd, file);

  const int key_size = crypt_get_volume_key_size(cd);
  if (key_size < 0) throw LuksError(file.string() + ": no volume key size in the header");
  SecretBytes key(static_cast<size_t>(key_size) + 1);  // never empty: a valid pointer
  size_t got = static_cast<size_t>(key_size);
  static const char kEmpty[] = "";
  const char* pass = passphrase.empty() ? kEmpty : reinterpret_cast<const char*>(passphrase.data());
  const int slot =
      crypt_volume_key_get(cd, CRYPT_ANY_SLOT, reinterpret_cast<char*>(key.bytes().data()), &got,
                           pass, passphrase.size());
  if (slot == -EPERM) throw LuksError("no key slot matches the passphrase for " + file.string());
  if (slot < 0) throw LuksError("cannot unlock " + file.string() + log.why(slot));
  spdlog::debug("{}: unlocked with key slot {}", file.string(), slot);

  const char* cipher = crypt_get_cipher(cd);
  const char* mode = crypt_get_cipher_mode(cd);
  if (!cipher || !mode) throw LuksError(file.string() + ": no cipher in the LUKS header");
  const std::string cipher_spec = std::string(cipher) + "-" + mode;
  const uint64_t offset = crypt_get_data_offset(cd);
  const uint64_t iv_offset = crypt_get_iv_offset(cd);
  const int sector_size = crypt_get_sector_size(cd);

  // What cryptsetup's device_block_adjust finds: the rest of the device, or
  // the segment's fixed size if the device holds it.
  if (offset >= device_size)
    throw LuksError("Requested offset is beyond real size of device " + file.string() + ".");
  uint64_t sectors = device_size - offset;
  if (luks2) {
    if (const uint64_t fixed = luks2_segment_sectors(cd, file)) {
      if (fixed > sectors) throw LuksError("Device " + file.string() + " is too small.");
      sectors = fixed;
    }
  }

  // The features in get_dm_crypt_params' order; LUKS2 adds the flags stored
  // in its header (cryptsetup refresh --persistent), as LUKS2_activate does.
  uint32_t flags = 0;
  if (luks2 && crypt_persistent_flags_get(cd, CRYPT_FLAGS_ACTIVATION, &flags) < 0) flags = 0;
  if (options.allow_discards) flags |= CRYPT_ACTIVATE_ALLOW_DISCARDS;
  std::string features;
  unsigned count = 0;
  auto feature = [&](bool on, const std::string& word) {
    if (!on) return;
    features += " " + word;
    ++count;
  };
  feature(flags & CRYPT_ACTIVATE_ALLOW_DISCARDS, "allow_discards");
  feature(flags & CRYPT_ACTIVATE_SAME_CPU_CRYPT, "same_cpu_crypt");
  feature(flags & CRYPT_ACTIVATE_SUBMIT_FROM_CRYPT_CPUS, "submit_from_crypt_cpus");
  feature(flags & CRYPT_ACTIVATE_NO_READ_WORKQUEUE, "no_read_workqueue");
  feature(flags & CRYPT_ACTIVATE_NO_WRITE_WORKQUEUE, "no_write_workqueue");
  feature(flags & CRYPT_ACTIVATE_IV_LARGE_SECTORS, "iv_large_sectors");
  feature(sector_size > 0 && sector_size != static_cast<int>(kSector),
          "sector_size:" + std::to_string(sector_size));
  if (count) features = " " + std::to_string(count) + features;

  // cipher_null has no key: cryptsetup writes "-".
  const bool null_cipher = std::strcmp(cipher, "cipher_null") == 0;
  const std::string head = "0 " + std::to_string(sectors) + " crypt " + cipher_spec + " ";
  const std::string tail = " " + std::to_string(iv_offset) + " " + table_word(file.string()) + " " +
                           std::to_string(offset) + features;
  // Reserved whole first: the text holding the key is never reallocated, so
  // no copy of it is left behind in freed memory.
  std::string text;
  text.reserve(head.size() + 2 * got + 1 + tail.size() + 1);
  text += head;
  if (null_cipher)
    text += '-';
  else
    append_hex(text, key.bytes().first(got));
  text += tail;
  return LuksTable(std::move(text), sectors);
}

SecretBytes read_key_file(const fs::path& path, bool private_only) {
  const bool is_stdin = path == "-";
  const int fd = is_stdin ? STDIN_FILENO : ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    throw LuksError("cannot read key file " + path.string() + ": " + std::strerror(errno));
  struct FdCloser {
    int fd;
    bool keep;
    ~FdCloser() {
      if (!keep) ::close(fd);
    }
  } closer{fd, is_stdin};
  struct stat st {};
  if (fstat(fd, &st) != 0)
    throw LuksError("cannot read key file " + path.string() + ": " + std::strerror(errno));
  if (private_only && S_ISREG(st.st_mode) && (st.st_mode & 077)) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    throw LuksError("key file " + path.string() + ": permissions " + mode +
                    " are too open: group and others must have no access (chmod 600 " +
                    path.string() + ")");
  }
  // Read into a buffer that grows by doubling; each old one is wiped as it goes.
  SecretBytes buffer(
      S_ISREG(st.st_mode) && st.st_size > 0
          ? std::min<size_t>(static_cast<size_t>(st.st_size) + 1, kMaxKeyFileBytes + 1)
          : 4096);
  size_t used = 0;
  for (;;) {
    if (used == buffer.size()) {
      if (buffer.size() > kMaxKeyFileBytes) break;
      SecretBytes bigger(std::min(buffer.size() * 2, kMaxKeyFileBytes + 1));
      std::memcpy(bigger.bytes().data(), buffer.bytes().data(), used);
      buffer = std::move(bigger);
    }
    const ssize_t n = ::read(fd, buffer.bytes().data() + used, buffer.size() - used);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      throw LuksError("cannot read key file " + path.string() + ": " + std::strerror(errno));
    if (n == 0) break;
    used += static_cast<size_t>(n);
  }
  if (used > kMaxKeyFileBytes)
    throw LuksError("key file " + path.string() + " is larger than 8 MiB (cryptsetup's limit)");
  SecretBytes passphrase(used);
  if (used) std::memcpy(passphrase.bytes().data(), buffer.bytes().data(), used);
  return passphrase;
}

SecretBytes read_passphrase_line(int fd) {
  SecretBytes buffer(4096);
  size_t used = 0;
  for (;;) {
    char c;
    const ssize_t n = ::read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw LuksError(std::string("cannot read the passphrase: ") + std::strerror(errno));
    if (n == 0 || c == '\n') break;
    if (used == buffer.size()) {
      if (buffer.size() >= kMaxKeyFileBytes)
        throw LuksError("the passphrase is longer than 8 MiB (cryptsetup's limit)");
      SecretBytes bigger(buffer.size() * 2);
      std::memcpy(bigger.bytes().data(), buffer.bytes().data(), used);
      buffer = std::move(bigger);
    }
    buffer.bytes()[used++] = static_cast<uint8_t>(c);
    wipe_memory(&c, 1);
  }
  SecretBytes passphrase(used);
  if (used) std::memcpy(passphrase.bytes().data(), buffer.bytes().data(), used);
  return passphrase;
}

}  // namespace dmnbd
