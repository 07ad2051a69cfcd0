// The control protocol's verbs: one JSON request in, one JSON response out.
// The schema is documented in the README, section "Control socket".
#pragma once
#include <nlohmann/json.hpp>

#include "dm/device_manager.hpp"
#include "dmnbd/asio.hpp"

namespace dmnbd::control {

using json = nlohmann::json;

// Never throws: failures become {"ok": false, "error": ..., "errno": ...}.
Task<json> execute(DeviceManager& devices, const json& request);

}  // namespace dmnbd::control
