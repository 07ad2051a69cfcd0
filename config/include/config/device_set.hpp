// Turns a Config into live devices: creates the missing backing files, then
// creates every device in `manager`, lower devices before the ones stacked on
// them. Either everything is built or nothing is left behind.
#pragma once
#include "config/config.hpp"
#include "dm/device_manager.hpp"

namespace dmnbd {

// Throws ConfigError ("<file>:<line>: device <name>: <reason>") and removes
// any file or directory it created before failing.
// Runs where the devices will live (the main loop): targets start their
// background jobs there when they are resumed.
Task<void> build_devices(const Config& config, DeviceManager& manager);

}  // namespace dmnbd
