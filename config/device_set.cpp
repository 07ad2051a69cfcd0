#include "config/device_set.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <map>

#include <functional>

#include "dm/table.hpp"
#include "luks/luks_volume.hpp"

namespace dmnbd {
namespace {

namespace fs = std::filesystem;

// Undoes what the build created if it fails half way.
class CreatedPaths {
 public:
  void add(fs::path p) { paths_.push_back(std::move(p)); }
  void commit() { paths_.clear(); }
  ~CreatedPaths() {
    for (auto it = paths_.rbegin(); it != paths_.rend(); ++it) {
      std::error_code ignored;
      fs::remove(*it, ignored);  // directories only if empty
    }
  }

 private:
  std::vector<fs::path> paths_;
};

void create_sparse_file(const Config& cfg, const FileSpec& spec, CreatedPaths& created) {
  std::error_code ec;
  if (fs::exists(spec.path, ec)) {
    // Never resize or truncate what is already there.
    if (fs::is_regular_file(spec.path, ec) && fs::file_size(spec.path, ec) != spec.size)
      spdlog::warn("{}: {} exists with {} bytes, not the configured {}; using it as it is",
                   cfg.source, spec.path.string(), fs::file_size(spec.path, ec), spec.size);
    return;
  }
  std::vector<fs::path> missing_dirs;
  for (fs::path dir = spec.path.parent_path(); !dir.empty() && !fs::exists(dir, ec);
       dir = dir.parent_path())
    missing_dirs.push_back(dir);
  for (auto it = missing_dirs.rbegin(); it != missing_dirs.rend(); ++it) {
    if (!fs::create_directory(*it, ec) && ec)
      throw ConfigError(cfg.source + ":" + std::to_string(spec.line) +
                        ": cannot create directory " + it->string() + ": " + ec.message());
    created.add(*it);
  }
  int fd = ::open(spec.path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0)
    throw ConfigError(cfg.source + ":" + std::to_string(spec.line) + ": cannot create " +
                      spec.path.string() + ": " + std::strerror(errno));
  created.add(spec.path);
  int rc = ftruncate(fd, static_cast<off_t>(spec.size));
  int err = errno;
  ::close(fd);
  if (rc < 0)
    throw ConfigError(cfg.source + ":" + std::to_string(spec.line) + ": cannot size " +
                      spec.path.string() + ": " + std::strerror(err));
  spdlog::info("created sparse backing file {} ({} bytes)", spec.path.string(), spec.size);
}

std::string at(const Config& cfg, int line) {
  return cfg.source + ":" + std::to_string(line) + ": ";
}

// The configured devices in an order where every device comes after the
// devices its table names. Throws ConfigError on a cycle.
std::vector<const DeviceSpec*> creation_order(const Config& cfg) {
  std::map<std::string, const DeviceSpec*> by_name;
  for (const auto& spec : cfg.devices) by_name[spec.name] = &spec;
  std::vector<const DeviceSpec*> order;
  std::map<std::string, int> state;  // 1 = being visited, 2 = placed
  std::vector<std::string> path;
  std::function<void(const DeviceSpec&)> visit = [&](const DeviceSpec& spec) {
    if (state[spec.name] == 2) return;
    path.push_back(spec.name);
    if (state[spec.name] == 1) {
      std::string cycle;
      for (const auto& n : path) cycle += (cycle.empty() ? "" : " -> ") + n;
      throw ConfigError(at(cfg, spec.line) + "device " + spec.name +
                        ": stacked devices form a cycle: " + cycle);
    }
    state[spec.name] = 1;
    std::vector<TableLine> lines;
    try {
      lines = parse_table_text(spec.table);
    } catch (const TableError&) {
      // Reported with its line when the device is created.
    }
    // Any argument that names a configured device may be a reference to it.
    // Its own name is not: a device named like a word of its table (raid1,
    // core, sync) would be its own cycle.
    for (const auto& line : lines)
      for (const auto& arg : line.args)
        if (auto it = by_name.find(arg); it != by_name.end() && arg != spec.name)
          visit(*it->second);
    state[spec.name] = 2;
    path.pop_back();
    order.push_back(&spec);
  };
  for (const auto& spec : cfg.devices) visit(spec);
  return order;
}

// The crypt table of a `luks` entry: the key file's passphrase unlocks the
// volume (the PBKDF runs here, once, at start-up).
LuksTable open_luks(const Config& cfg, const DeviceSpec& spec) {
  const LuksSpec& luks = *spec.luks;
  try {
    const SecretBytes passphrase = read_key_file(luks.key_file, true);
    const LuksOptions options{.allow_discards = luks.allow_discards};
    LuksTable table = luks_table(luks.file, passphrase.bytes(), options);
    spdlog::info("device {}: LUKS volume {} unlocked", spec.name, luks.file.string());
    return table;
  } catch (const LuksError& e) {
    throw ConfigError(at(cfg, luks.line) + "device " + spec.name + ": " + e.what());
  }
}

}  // namespace

Task<void> build_devices(const Config& config, DeviceManager& manager) {
  CreatedPaths created;
  for (const FileSpec& spec : config.files) create_sparse_file(config, spec, created);
  for (const DeviceSpec* spec : creation_order(config)) {
    try {
      // Named: no temporaries with destructors in a co_await (GCC 12).
      const CreateOptions options{.description = spec->description, .read_only = spec->read_only};
      if (spec->luks) {
        const LuksTable table = open_luks(config, *spec);
        co_await manager.create(spec->name, table.text(), options);
      } else {
        co_await manager.create(spec->name, spec->table, options);
      }
    } catch (const TableError& e) {
      if (spec->luks)  // the table is ours, not the user's: name the volume
        throw ConfigError(at(config, spec->luks->line) + "device " + spec->name + ": LUKS volume " +
                          spec->luks->file.string() + ": " + e.reason());
      const int line =
          e.line() ? spec->table_first_line + static_cast<int>(e.line()) - 1 : spec->line;
      throw ConfigError(at(config, line) + "device " + spec->name + ": " +
                        (e.line() ? "table line " + std::to_string(e.line()) + ": " : "") +
                        e.reason());
    } catch (const ControlError& e) {
      throw ConfigError(at(config, spec->line) + "device " + spec->name + ": " + e.what());
    }
  }
  created.commit();
}

}  // namespace dmnbd
