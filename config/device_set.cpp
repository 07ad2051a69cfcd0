#include "dmnbd/device_set.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <map>

#include "dmnbd/file_device.hpp"

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

// Resolves table arguments: a configured device name first, else a file path.
class ConfigResolver final : public DeviceResolver {
 public:
  explicit ConfigResolver(const Config& cfg) : cfg_(cfg) {}

  std::shared_ptr<BlockDevice> open(const std::string& name, bool read_only) override {
    for (const DeviceSpec& spec : cfg_.devices)
      if (spec.name == name) return build(spec);
    fs::path path(name);
    if (!path.is_absolute()) path = (cfg_.base_dir / path).lexically_normal();
    // One FileDevice per file and mode, so every table flushes the same descriptor.
    auto key = std::make_pair(path.string(), read_only);
    if (auto it = files_.find(key); it != files_.end()) return it->second;
    auto file = FileDevice::open(path, read_only);
    files_[key] = file;
    return file;
  }

  std::shared_ptr<Device> build(const DeviceSpec& spec) {
    if (auto it = built_.find(spec.name); it != built_.end()) return it->second;
    for (const std::string& n : building_)
      if (n == spec.name) throw TargetError("device '" + spec.name + "' is stacked on itself");
    building_.push_back(spec.name);
    std::shared_ptr<Table> table;
    try {
      table = Table::build(spec.table, *this, spec.read_only);
    } catch (const TableError& e) {
      building_.pop_back();
      const int line =
          e.line() ? spec.table_first_line + static_cast<int>(e.line()) - 1 : spec.line;
      throw ConfigError(cfg_.source + ":" + std::to_string(line) + ": device " + spec.name + ": " +
                        (e.line() ? "table line " + std::to_string(e.line()) + ": " : "") +
                        e.reason());
    }
    building_.pop_back();
    auto device = std::make_shared<Device>(spec.name, spec.description, spec.read_only, table);
    built_[spec.name] = device;
    return device;
  }

 private:
  const Config& cfg_;
  std::map<std::pair<std::string, bool>, std::shared_ptr<FileDevice>> files_;
  std::map<std::string, std::shared_ptr<Device>> built_;
  std::vector<std::string> building_;
};

}  // namespace

std::vector<std::shared_ptr<Device>> build_devices(const Config& config) {
  CreatedPaths created;
  for (const FileSpec& spec : config.files) create_sparse_file(config, spec, created);
  ConfigResolver resolver(config);
  std::vector<std::shared_ptr<Device>> devices;
  for (const DeviceSpec& spec : config.devices) devices.push_back(resolver.build(spec));
  created.commit();
  return devices;
}

}  // namespace dmnbd
