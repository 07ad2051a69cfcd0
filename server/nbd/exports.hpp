// The devices the NBD listener offers, by export name. Shared by every
// connection; the control socket will add and remove devices at run time.
#pragma once
#include <memory>
#include <mutex>
#include <string_view>
#include <vector>

#include "dmnbd/device.hpp"

namespace dmnbd::nbd {

class ExportRegistry {
 public:
  void add(std::shared_ptr<Device> device) {
    std::lock_guard lk(mutex_);
    devices_.push_back(std::move(device));
  }

  // The empty name is the default export: the first device configured.
  std::shared_ptr<Device> find(std::string_view name) const {
    std::lock_guard lk(mutex_);
    if (name.empty()) return devices_.empty() ? nullptr : devices_.front();
    for (const auto& d : devices_)
      if (d->name() == name) return d;
    return nullptr;
  }

  std::vector<std::shared_ptr<Device>> list() const {
    std::lock_guard lk(mutex_);
    return devices_;
  }

 private:
  mutable std::mutex mutex_;
  std::vector<std::shared_ptr<Device>> devices_;
};

}  // namespace dmnbd::nbd
