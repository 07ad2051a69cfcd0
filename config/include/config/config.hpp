// The YAML configuration: where to listen, which backing files to create and
// which devices to serve, each with its dm table in the kernel's text form.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace dmnbd {

// "<file>:<line>: <reason>" — what a user needs to fix the config.
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct ListenAddress {
  enum class Kind { tcp, unix_socket } kind = Kind::tcp;
  std::string host;  // tcp
  uint16_t port = 0;
  std::filesystem::path path;  // unix
  std::string text;            // as written, for logs
};

struct FileSpec {
  std::filesystem::path path;  // absolute
  uint64_t size = 0;
  int line = 0;
};

// A LUKS volume made by `cryptsetup luksFormat` (the `luks` key): its table
// is the one cryptsetup would load, built when the device is created.
struct LuksSpec {
  std::filesystem::path file;      // absolute
  std::filesystem::path key_file;  // absolute; the passphrase, as cryptsetup --key-file reads it
  bool allow_discards = false;
  int line = 0;
};

struct DeviceSpec {
  std::string name;
  std::string description;
  bool read_only = false;
  std::string table;  // empty with `luks`
  std::optional<LuksSpec> luks;
  int line = 0;              // of the device entry
  int table_first_line = 0;  // config line of the table's first text line
};

// What clients may make the server hold (the `limits` key). Past a payload
// bound the server stops reading that socket until earlier requests finish.
struct ServerLimits {
  uint64_t connection_payload = 64ull << 20;  // READ/WRITE payload bytes in flight, per connection
  uint64_t server_payload = 1ull << 30;       // the same, summed over every connection
  unsigned handshake_seconds = 10;            // not negotiated by then: closed (0: no limit)
  unsigned max_connections = 512;             // connections beyond it are closed at once
};

struct Config {
  std::string source;              // file name for messages
  std::filesystem::path base_dir;  // relative paths resolve against it
  std::vector<ListenAddress> listen;
  std::filesystem::path control;  // the control socket; default <base_dir>/control.sock
  std::vector<FileSpec> files;
  std::vector<DeviceSpec> devices;
  ServerLimits limits;
};

// Parses and validates everything that can be checked without touching the
// file system. Throws ConfigError.
Config parse_config(const std::string& yaml_text, const std::string& source,
                    const std::filesystem::path& base_dir);
Config load_config_file(const std::filesystem::path& path);

// "1GiB", "512MiB", "4096", "10G" (binary units, like truncate -s).
uint64_t parse_size(const std::string& text);
// "tcp://127.0.0.1:10809", "tcp://[::1]:10809", "unix:///run/dmnbd/nbd.sock".
ListenAddress parse_listen_address(const std::string& text);

}  // namespace dmnbd
