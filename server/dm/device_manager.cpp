#include "dm/device_manager.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace dmnbd {
namespace {

// A table's handle on another mapped device: counts as an open of it for as
// long as the table lives, like dm_get_device() does in the kernel.
class HeldDevice final : public BlockDevice {
 public:
  explicit HeldDevice(std::shared_ptr<Device> device) : device_(std::move(device)) {
    device_->opened();
  }
  ~HeldDevice() override { device_->closed(); }

  std::string name() const override { return device_->name(); }
  uint64_t sectors() const override { return device_->sectors(); }
  Task<Status> submit(Bio bio) override { return device_->submit(bio); }
  Task<Status> block_status(uint64_t sector, uint64_t count, ExtentList& out) override {
    return device_->block_status(sector, count, out);
  }
  const BlockDevice* identity() const override { return device_.get(); }

 private:
  std::shared_ptr<Device> device_;
};

}  // namespace

class DeviceManager::Resolver final : public DeviceResolver {
 public:
  Resolver(DeviceManager& manager, const Device& loading) : manager_(manager), loading_(loading) {}

  std::shared_ptr<BlockDevice> open(const std::string& name, bool read_only) override {
    if (auto device = manager_.find_exact(name)) {
      if (device.get() == &loading_ || device->depends_on(loading_))
        throw TargetError("device " + name + " is stacked on " + loading_.name() +
                          ": that would make a cycle");
      return std::make_shared<HeldDevice>(std::move(device));
    }
    if (NbdDevice::is_uri(name)) {
      std::lock_guard lk(manager_.mutex_);
      auto& slot = manager_.remotes_[{name, read_only}];
      if (auto remote = slot.lock()) return remote;
      auto remote = NbdDevice::open(name, read_only);
      if (manager_.pick_remote_loop_) remote->run_on(manager_.pick_remote_loop_());
      slot = remote;
      return remote;
    }
    std::filesystem::path path(name);
    if (!path.is_absolute()) path = (manager_.base_dir_ / path).lexically_normal();
    // One FileDevice per file and mode while any table uses it, so flushes and
    // FUA go through the same descriptor.
    std::lock_guard lk(manager_.mutex_);
    auto& slot = manager_.files_[{path.string(), read_only}];
    if (auto file = slot.lock()) return file;
    auto file = FileDevice::open(path, read_only);
    for (const auto& [key, other] : manager_.files_)
      if (auto live = other.lock(); live && live->file_id() == file->file_id()) {
        file->same_file_as(live);
        break;
      }
    slot = file;
    return file;
  }

 private:
  DeviceManager& manager_;
  const Device& loading_;
};

DeviceManager::DeviceManager(std::filesystem::path base_dir) : base_dir_(std::move(base_dir)) {}

DeviceManager::~DeviceManager() = default;

std::shared_ptr<Device> DeviceManager::find(std::string_view name) const {
  if (!name.empty()) return find_exact(name);
  std::lock_guard lk(mutex_);
  return devices_.empty() ? nullptr : devices_.front();
}

std::shared_ptr<Device> DeviceManager::find_exact(std::string_view name) const {
  std::lock_guard lk(mutex_);
  for (const auto& d : devices_)
    if (d->name() == name) return d;
  return nullptr;
}

std::vector<std::shared_ptr<Device>> DeviceManager::list() const {
  std::lock_guard lk(mutex_);
  return devices_;
}

std::shared_ptr<Device> DeviceManager::get(const std::string& name) const {
  auto device = find_exact(name);
  if (!device) throw ControlError(ENXIO, name + ": No such device or address");
  return device;
}

std::vector<std::shared_ptr<Device>> DeviceManager::users_of(const Device& device) const {
  std::vector<std::shared_ptr<Device>> users;
  for (const auto& d : list())
    if (d.get() != &device && d->depends_on(device)) users.push_back(d);
  // Uppermost first: a device comes before every device it stacks on.
  std::stable_sort(users.begin(), users.end(),
                   [](const auto& a, const auto& b) { return a->depends_on(*b); });
  return users;
}

void DeviceManager::check_name(const std::string& name) {
  if (name.empty() || name.size() > 127 || name.find_first_of("/ \t\n") != std::string::npos)
    throw ControlError(
        EINVAL, "invalid device name '" + name + "': 1-127 characters without '/' or whitespace");
}

Task<std::shared_ptr<Table>> DeviceManager::build_table(const std::shared_ptr<Device>& device,
                                                        const std::string& text) {
  Resolver resolver(*this, *device);
  std::shared_ptr<Table> table =
      Table::build(text, resolver, device->read_only(), device->event_callback(),
                   device->noflush_callback(), device.get());
  co_await table->open();
  co_return table;
}

Task<std::shared_ptr<Device>> DeviceManager::create(const std::string& name,
                                                    const std::string& table,
                                                    const CreateOptions& options) {
  check_name(name);
  if (find_exact(name)) throw ControlError(EBUSY, name + ": Device or resource busy (exists)");
  unsigned minor;
  {
    std::lock_guard lk(mutex_);
    minor = next_minor_++;
  }
  auto device = std::make_shared<Device>(name, options.description, options.read_only, minor);
  if (!options.no_table) {
    // No temporaries in co_await (GCC 12 destroys them twice).
    std::shared_ptr<Table> built = co_await build_table(device, table);  // throws TableError
    co_await device->load(std::move(built));                             // nothing is visible yet
    if (Status st = co_await device->resume())
      throw ControlError(st.value(), name + ": resume failed: " + st.message());
  }
  {
    std::lock_guard lk(mutex_);
    if (std::any_of(devices_.begin(), devices_.end(), [&](auto& d) { return d->name() == name; }))
      throw ControlError(EBUSY, name + ": Device or resource busy (exists)");
    devices_.push_back(device);
  }
  spdlog::info("device {}: created, {} sectors", name, device->sectors());
  co_return device;
}

Task<void> DeviceManager::load(const std::string& name, const std::string& table) {
  auto device = get(name);
  std::shared_ptr<Table> built = co_await build_table(device, table);
  co_await device->load(std::move(built));
  spdlog::info("device {}: table loaded into the inactive slot", name);
}

Task<void> DeviceManager::clear(const std::string& name) {
  auto device = get(name);
  if (co_await device->clear()) spdlog::info("device {}: inactive table cleared", name);
}

Task<void> DeviceManager::suspend(const std::string& name, bool noflush) {
  auto device = get(name);
  auto guard = co_await device->control_lock().lock();
  if (Status st = co_await device->suspend(noflush))
    throw ControlError(st.value(), name + ": flushing the backing devices failed: " + st.message());
  spdlog::info("device {}: suspended{}", name, noflush ? " (noflush)" : "");
}

Task<void> DeviceManager::resume(const std::string& name) {
  auto device = get(name);
  auto guard = co_await device->control_lock().lock();
  const bool swap = device->inactive_table() != nullptr;
  if (!swap && !device->live_table())
    throw ControlError(EINVAL, name + ": cannot resume: the device has no table (load one first)");
  if (Status st = co_await device->resume())
    throw ControlError(st.value(), name + ": resume failed: " + st.message());
  spdlog::info(
      "device {}: resumed{}", name,
      swap ? " with the new table, " + std::to_string(device->sectors()) + " sectors" : "");
}

Task<void> DeviceManager::reload(const std::string& name, const std::string& table) {
  co_await load(name, table);
  auto device = get(name);
  auto users = users_of(*device);
  // The devices above are suspended without flushing (as the kernel's pool
  // suspends its thins): I/O a target holds, such as a thin write waiting
  // for the pool to grow, goes round again once they resume, on top of the
  // new table, instead of holding this suspend up.
  for (const auto& upper : users) {
    const std::string upper_name = upper->name();  // no temporaries in co_await (GCC 12)
    co_await suspend(upper_name, true);
  }
  std::exception_ptr failure;
  try {
    co_await resume(name);
  } catch (...) {
    failure = std::current_exception();
  }
  for (auto it = users.rbegin(); it != users.rend(); ++it) {
    const std::string upper_name = (*it)->name();
    co_await resume(upper_name);
  }
  if (failure) std::rethrow_exception(failure);
}

Task<void> DeviceManager::remove(const std::string& name, bool force) {
  auto device = get(name);
  auto guard = co_await device->control_lock().lock();
  if (device->open_count() > 0) {
    if (!force)
      throw ControlError(EBUSY, name + ": Device or resource busy (open count " +
                                    std::to_string(device->open_count()) + ")");
    // --force: users keep a device whose every I/O fails, as with the kernel.
    const uint64_t sectors = std::max<uint64_t>(device->sectors(), 1);
    const std::string error_table = "0 " + std::to_string(sectors) + " error";
    std::shared_ptr<Table> failing = co_await build_table(device, error_table);
    co_await device->load(std::move(failing));
    co_await device->resume();
  } else {
    co_await device->drop_tables();  // nobody uses it: release what its tables hold now
  }
  {
    std::lock_guard lk(mutex_);
    devices_.erase(std::remove(devices_.begin(), devices_.end(), device), devices_.end());
  }
  spdlog::info("device {}: removed{}", name, force ? " (forced)" : "");
}

Task<void> DeviceManager::teardown_all() {
  std::vector<std::shared_ptr<Device>> left = list();
  while (!left.empty()) {
    // A device no other remaining device stacks on goes first.
    auto unused = std::find_if(left.begin(), left.end(), [&](const auto& candidate) {
      return std::none_of(left.begin(), left.end(), [&](const auto& other) {
        return other != candidate && other->depends_on(*candidate);
      });
    });
    if (unused == left.end()) unused = left.begin();  // a cycle cannot be built; be safe
    std::shared_ptr<Device> device = *unused;
    left.erase(unused);
    co_await device->drop_tables();
  }
}

void DeviceManager::rename(const std::string& from, const std::string& to) {
  check_name(to);
  auto device = get(from);
  std::lock_guard lk(mutex_);
  for (const auto& d : devices_)
    if (d->name() == to) throw ControlError(EBUSY, to + ": Device or resource busy (exists)");
  device->rename(to);
  device->raise_event();  // as dm_hash_rename() does, so `wait` sees renames
  spdlog::info("device {}: renamed to {}", from, to);
}

Task<std::string> DeviceManager::message(const std::string& name, uint64_t sector,
                                         std::vector<std::string> words) {
  auto device = get(name);
  auto table = device->live_table();
  const Table::Entry* entry = table ? table->find_entry(sector) : nullptr;
  if (!entry) throw ControlError(EINVAL, name + ": Target message sector outside device.");
  if (words.empty()) throw ControlError(EINVAL, name + ": Empty message received.");
  try {
    co_return co_await entry->target->message(std::move(words));
  } catch (const TargetErrno& e) {
    throw ControlError(e.error_number(), name + ": " + entry->type + ": " + e.what());
  } catch (const TargetError& e) {
    throw ControlError(EINVAL, name + ": " + entry->type + ": " + e.what());
  }
}

}  // namespace dmnbd
