// Turns a Config into live Devices: creates the missing backing files, opens
// the rest, and builds every table, lower devices before the ones stacked on
// them. Either everything is built or nothing is left behind.
#pragma once
#include <memory>
#include <vector>

#include "dmnbd/config.hpp"
#include "dmnbd/device.hpp"

namespace dmnbd {

// Throws ConfigError ("<file>:<line>: device <name>: <reason>") and removes
// any file or directory it created before failing.
std::vector<std::shared_ptr<Device>> build_devices(const Config& config);

}  // namespace dmnbd
