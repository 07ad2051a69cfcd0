#include "config/config.hpp"

#include <sys/stat.h>
#include <yaml-cpp/yaml.h>

#include <charconv>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>

#include "dm/table.hpp"

namespace dmnbd {
namespace {

[[noreturn]] void fail(const Config& cfg, int line, const std::string& reason) {
  throw ConfigError(cfg.source + ":" + std::to_string(line) + ": " + reason);
}

int line_of(const YAML::Node& node) {
  return node.Mark().line + 1;
}

std::string scalar(const Config& cfg, const YAML::Node& node, const char* what) {
  if (!node.IsScalar()) fail(cfg, line_of(node), std::string(what) + " must be a string");
  return node.Scalar();
}

void check_keys(const Config& cfg, const YAML::Node& map, std::set<std::string> known,
                const char* where) {
  for (const auto& kv : map) {
    const std::string key = kv.first.Scalar();
    if (!known.count(key))
      fail(cfg, line_of(kv.first), std::string("unknown key '") + key + "' in " + where);
  }
}

std::filesystem::path resolve(const Config& cfg, const std::string& p) {
  std::filesystem::path path(p);
  return path.is_absolute() ? path : (cfg.base_dir / path).lexically_normal();
}

// A block scalar ("table: |") starts on the line after its indicator.
int first_content_line(const std::string& text, const YAML::Node& node) {
  const YAML::Mark mark = node.Mark();
  size_t pos = static_cast<size_t>(mark.pos);
  if (pos < text.size() && (text[pos] == '|' || text[pos] == '>')) return mark.line + 2;
  return mark.line + 1;
}

}  // namespace

uint64_t parse_size(const std::string& text) {
  uint64_t value = 0;
  const char* begin = text.data();
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(begin, end, value);
  if (ec != std::errc() || p == begin) throw std::invalid_argument("invalid size '" + text + "'");
  std::string unit(p, end);
  while (!unit.empty() && unit.front() == ' ') unit.erase(0, 1);
  static const std::pair<const char*, unsigned> units[] = {
      {"", 0},   {"B", 0},    {"K", 10}, {"KiB", 10}, {"M", 20}, {"MiB", 20},
      {"G", 30}, {"GiB", 30}, {"T", 40}, {"TiB", 40}, {"s", 9}};  // "s": 512-byte sectors
  for (const auto& [name, shift] : units) {
    if (unit == name) {
      if (shift && value > (UINT64_MAX >> shift))
        throw std::invalid_argument("size too large '" + text + "'");
      return value << shift;
    }
  }
  throw std::invalid_argument("invalid size unit in '" + text +
                              "' (use B, KiB, MiB, GiB, TiB or s)");
}

ListenAddress parse_listen_address(const std::string& text) {
  ListenAddress addr;
  addr.text = text;
  if (text.rfind("unix://", 0) == 0) {
    addr.kind = ListenAddress::Kind::unix_socket;
    addr.path = text.substr(7);
    if (addr.path.empty())
      throw std::invalid_argument("unix listen address needs a path: '" + text + "'");
    return addr;
  }
  if (text.rfind("tcp://", 0) != 0)
    throw std::invalid_argument("listen address must start with tcp:// or unix://: '" + text + "'");
  std::string rest = text.substr(6);
  size_t colon;
  if (!rest.empty() && rest.front() == '[') {
    size_t close = rest.find(']');
    if (close == std::string::npos || close + 1 >= rest.size() || rest[close + 1] != ':')
      throw std::invalid_argument("invalid IPv6 listen address '" + text + "'");
    addr.host = rest.substr(1, close - 1);
    colon = close + 1;
  } else {
    colon = rest.rfind(':');
    if (colon == std::string::npos)
      throw std::invalid_argument("listen address needs a port: '" + text + "'");
    addr.host = rest.substr(0, colon);
  }
  const std::string port = rest.substr(colon + 1);
  unsigned value = 0;
  auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (ec != std::errc() || p != port.data() + port.size() || value > 65535)
    throw std::invalid_argument("invalid port in listen address '" + text + "'");
  addr.port = static_cast<uint16_t>(value);
  return addr;
}

namespace {

// limits: { connection_payload: SIZE, server_payload: SIZE, handshake_timeout: SECONDS,
//           max_connections: N }
void parse_limits(Config& cfg, const YAML::Node& limits) {
  if (!limits.IsMap()) fail(cfg, line_of(limits), "'limits' must be a mapping");
  check_keys(cfg, limits,
             {"connection_payload", "server_payload", "handshake_timeout", "max_connections"},
             "limits");
  auto size = [&](const char* key, uint64_t& out) {
    if (!limits[key]) return;
    try {
      out = parse_size(scalar(cfg, limits[key], key));
    } catch (const std::invalid_argument& e) {
      fail(cfg, line_of(limits[key]), e.what());
    }
    if (out == 0) fail(cfg, line_of(limits[key]), std::string(key) + " must be more than 0");
  };
  auto count = [&](const char* key, unsigned& out, unsigned min) {
    if (!limits[key]) return;
    try {
      const int64_t v = limits[key].as<int64_t>();
      if (v < min || v > 1000000) throw std::out_of_range(key);
      out = static_cast<unsigned>(v);
    } catch (const std::exception&) {
      fail(
          cfg, line_of(limits[key]),
          std::string(key) + " must be a whole number from " + std::to_string(min) + " to 1000000");
    }
  };
  size("connection_payload", cfg.limits.connection_payload);
  size("server_payload", cfg.limits.server_payload);
  count("handshake_timeout", cfg.limits.handshake_seconds, 0);
  count("max_connections", cfg.limits.max_connections, 1);
}

// luks: { file: PATH, key_file: PATH, allow_discards: false }
LuksSpec parse_luks(const Config& cfg, const YAML::Node& luks) {
  if (!luks.IsMap()) fail(cfg, line_of(luks), "'luks' needs 'file' and 'key_file'");
  check_keys(cfg, luks, {"file", "key_file", "allow_discards"}, "luks");
  if (!luks["file"] || !luks["key_file"])
    fail(cfg, line_of(luks), "'luks' needs 'file' and 'key_file'");
  LuksSpec spec{.file = resolve(cfg, scalar(cfg, luks["file"], "file")),
                .key_file = resolve(cfg, scalar(cfg, luks["key_file"], "key_file")),
                .line = line_of(luks)};
  if (luks["allow_discards"]) {
    try {
      spec.allow_discards = luks["allow_discards"].as<bool>();
    } catch (const YAML::Exception&) {
      fail(cfg, line_of(luks["allow_discards"]), "allow_discards must be true or false");
    }
  }
  return spec;
}

}  // namespace

Config parse_config(const std::string& yaml_text, const std::string& source,
                    const std::filesystem::path& base_dir) {
  Config cfg;
  cfg.source = source;
  cfg.base_dir = base_dir;
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    fail(cfg, e.mark.line + 1, "invalid YAML: " + e.msg);
  }
  if (!root.IsMap())
    fail(cfg, 1, "the config must be a mapping with 'devices' (and 'listen', 'files')");
  check_keys(cfg, root, {"listen", "control", "files", "devices", "limits"}, "the top level");
  if (const YAML::Node limits = root["limits"]) parse_limits(cfg, limits);

  if (const YAML::Node listen = root["listen"]) {
    if (listen.IsScalar()) {
      cfg.listen.push_back(parse_listen_address(listen.Scalar()));
    } else if (listen.IsSequence()) {
      for (const auto& item : listen) {
        try {
          cfg.listen.push_back(parse_listen_address(scalar(cfg, item, "a listen address")));
        } catch (const std::invalid_argument& e) {
          fail(cfg, line_of(item), e.what());
        }
      }
    } else {
      fail(cfg, line_of(listen), "'listen' must be a list of addresses");
    }
  } else {
    cfg.listen.push_back(parse_listen_address("tcp://127.0.0.1:10809"));
  }
  for (auto& addr : cfg.listen)
    if (addr.kind == ListenAddress::Kind::unix_socket) addr.path = resolve(cfg, addr.path.string());
  cfg.control =
      resolve(cfg, root["control"] ? scalar(cfg, root["control"], "control") : "control.sock");

  if (const YAML::Node files = root["files"]) {
    if (!files.IsSequence()) fail(cfg, line_of(files), "'files' must be a list");
    std::set<std::filesystem::path> seen;
    for (const auto& f : files) {
      if (!f.IsMap()) fail(cfg, line_of(f), "a file entry needs 'path' and 'size'");
      check_keys(cfg, f, {"path", "size"}, "a file entry");
      if (!f["path"] || !f["size"]) fail(cfg, line_of(f), "a file entry needs 'path' and 'size'");
      FileSpec spec{.path = resolve(cfg, scalar(cfg, f["path"], "path")), .line = line_of(f)};
      try {
        spec.size = parse_size(scalar(cfg, f["size"], "size"));
      } catch (const std::invalid_argument& e) {
        fail(cfg, line_of(f["size"]), e.what());
      }
      if (spec.size == 0 || spec.size % 512)
        fail(cfg, line_of(f["size"]), "file size must be a non-zero multiple of 512 bytes");
      if (!seen.insert(spec.path).second)
        fail(cfg, spec.line, "file " + spec.path.string() + " listed twice");
      cfg.files.push_back(spec);
    }
  }

  const YAML::Node devices = root["devices"];
  if (!devices || !devices.IsSequence() || devices.size() == 0)
    fail(cfg, devices ? line_of(devices) : 1, "'devices' must be a non-empty list");
  std::set<std::string> names;
  for (const auto& d : devices) {
    if (!d.IsMap()) fail(cfg, line_of(d), "a device entry needs 'name' and 'table' (or 'luks')");
    check_keys(cfg, d, {"name", "description", "read_only", "table", "luks"}, "a device entry");
    if (!d["name"] || (!d["table"] && !d["luks"]))
      fail(cfg, line_of(d), "a device entry needs 'name' and 'table' (or 'luks')");
    if (d["table"] && d["luks"])
      fail(cfg, line_of(d["luks"]), "a device entry has 'table' or 'luks', not both");
    DeviceSpec spec{.name = scalar(cfg, d["name"], "name"), .line = line_of(d)};
    if (spec.name.empty() || spec.name.size() > 127 ||
        spec.name.find_first_of("/ \t\n") != std::string::npos)
      fail(cfg, line_of(d["name"]), "device name must be 1-127 characters without '/' or spaces");
    if (!names.insert(spec.name).second)
      fail(cfg, line_of(d["name"]), "device '" + spec.name + "' defined twice");
    if (d["description"]) spec.description = scalar(cfg, d["description"], "description");
    if (d["read_only"]) {
      try {
        spec.read_only = d["read_only"].as<bool>();
      } catch (const YAML::Exception&) {
        fail(cfg, line_of(d["read_only"]), "read_only must be true or false");
      }
    }
    if (d["luks"]) {
      spec.luks = parse_luks(cfg, d["luks"]);
    } else {
      spec.table = scalar(cfg, d["table"], "table");
      spec.table_first_line = first_content_line(yaml_text, d["table"]);
    }
    cfg.devices.push_back(std::move(spec));
  }
  return cfg;
}

namespace {

// The first device whose table holds a crypt key itself (hex), not a
// reference to one in the kernel keyring.
const DeviceSpec* device_with_inline_key(const Config& cfg) {
  for (const DeviceSpec& d : cfg.devices) {
    std::vector<TableLine> lines;
    try {
      lines = parse_table_text(d.table);
    } catch (const TableError&) {
      continue;  // the table's own error comes when it is built
    }
    for (const TableLine& line : lines)
      if (line.type == "crypt" && line.args.size() > 1 && line.args[1] != "-" &&
          !line.args[1].starts_with(':'))
        return &d;
  }
  return nullptr;
}

// A config that holds a key is as secret as the key: like ssh with a private
// key, refuse one that other users can read.
void refuse_readable_key(const Config& cfg, const std::filesystem::path& path) {
  const DeviceSpec* d = device_with_inline_key(cfg);
  struct stat st {};
  if (!d || stat(path.c_str(), &st) != 0 || !(st.st_mode & (S_IRGRP | S_IROTH))) return;
  char mode[8];
  std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
  fail(cfg, d->line,
       "device '" + d->name +
           "' has a crypt key in its table and the config is readable by "
           "other users (mode " +
           mode + "): chmod 600 " + path.string() +
           ", or keep the key in the kernel keyring (:<bytes>:user:<description>)");
}

}  // namespace

Config load_config_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError(path.string() + ": cannot read the config file");
  std::stringstream text;
  text << in.rdbuf();
  std::filesystem::path base = std::filesystem::absolute(path).parent_path();
  Config cfg = parse_config(text.str(), path.string(), base);
  refuse_readable_key(cfg, path);
  return cfg;
}

}  // namespace dmnbd
