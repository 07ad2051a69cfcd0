// Owns the mapped devices by name and carries out dmsetup's verbs on them:
// create, load, clear, suspend, resume, reload, remove, rename. Also resolves
// the device arguments of tables (other devices by name, files by path).
// Lookups are thread-safe; lifecycle calls run on the control thread.
#pragma once
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "dm/device.hpp"
#include "dm/file_device.hpp"
#include "dm/nbd_device.hpp"

namespace dmnbd {

// A refused lifecycle request: errno for exit codes, text for people.
class ControlError : public std::runtime_error {
 public:
  ControlError(int err, const std::string& what) : std::runtime_error(what), errno_(err) {}
  int error_number() const { return errno_; }

 private:
  int errno_;
};

struct CreateOptions {
  std::string description;
  bool read_only = false;
  bool no_table = false;  // dmsetup create --notable: no table until load + resume
};

class DeviceManager {
 public:
  explicit DeviceManager(std::filesystem::path base_dir);
  // Where relative file paths in tables are found.
  const std::filesystem::path& base_dir() const { return base_dir_; }
  // The event loop each new remote (NBD URI) device runs its connection on;
  // without it, the loop of its first I/O.
  void set_remote_loops(std::function<asio::any_io_executor()> pick) {
    pick_remote_loop_ = std::move(pick);
  }
  ~DeviceManager();

  // ---- Lookups (any thread).
  std::shared_ptr<Device> find(std::string_view name) const;  // "" = the first device
  std::vector<std::shared_ptr<Device>> list() const;          // in creation order
  // Devices whose tables use `device`, directly or through others, uppermost first.
  std::vector<std::shared_ptr<Device>> users_of(const Device& device) const;

  // ---- dmsetup verbs. Each throws ControlError; a failed call changes nothing.
  // Builds the table completely before anything is visible (TableError text in
  // the error names the line and the kernel's reason).
  Task<std::shared_ptr<Device>> create(const std::string& name, const std::string& table,
                                       const CreateOptions& options);
  Task<void> load(const std::string& name, const std::string& table);
  Task<void> clear(const std::string& name);
  Task<void> suspend(const std::string& name, bool noflush);
  Task<void> resume(const std::string& name);
  // load + suspend + resume; devices stacked on this one are suspended first
  // (top-down) and resumed last (bottom-up).
  Task<void> reload(const std::string& name, const std::string& table);
  Task<void> remove(const std::string& name, bool force);
  // At shutdown: tears down every device's tables, devices stacked on
  // others first, so a target's last writes still reach the devices below.
  Task<void> teardown_all();
  void rename(const std::string& from, const std::string& to);
  // Message to the target at `sector`; returns its text.
  Task<std::string> message(const std::string& name, uint64_t sector,
                            std::vector<std::string> words);

  std::shared_ptr<Device> get(const std::string& name) const;  // throws ENXIO

 private:
  class Resolver;
  std::shared_ptr<Device> find_exact(std::string_view name) const;
  // Built and opened (Table::build, Table::open); throws TableError.
  Task<std::shared_ptr<Table>> build_table(const std::shared_ptr<Device>& device,
                                           const std::string& text);
  static void check_name(const std::string& name);

  const std::filesystem::path base_dir_;
  mutable std::mutex mutex_;
  std::vector<std::shared_ptr<Device>> devices_;
  std::map<std::pair<std::string, bool>, std::weak_ptr<FileDevice>> files_;
  // One connection per NBD URI and mode while any table uses it.
  std::map<std::pair<std::string, bool>, std::weak_ptr<NbdDevice>> remotes_;
  std::function<asio::any_io_executor()> pick_remote_loop_;
  unsigned next_minor_ = 0;
};

}  // namespace dmnbd
