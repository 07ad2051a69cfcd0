// Snapshots the way LVM makes them (lvcreate -s, lvremove), as control verbs
// built from dmsetup's own steps in the kernel's safe order, so a user need
// not write the tables by hand:
//   snapshot-create: suspend ORIGIN; create ORIGIN-real with ORIGIN's table;
//                    create NAME as "snapshot ORIGIN-real COW P|N CHUNK"; load
//                    "snapshot-origin ORIGIN-real" into ORIGIN; resume ORIGIN.
//                    An ORIGIN that already has snapshots keeps its -real.
//   snapshot-remove: suspend ORIGIN; remove NAME; the last snapshot gone,
//                    ORIGIN gets its -real's table back and -real goes;
//                    resume ORIGIN.
//   snapshot-merge:  suspend NAME and ORIGIN; load "snapshot-merge ORIGIN-real
//                    COW ..." into ORIGIN (it takes NAME's snapshot over);
//                    resume ORIGIN; remove NAME; wait for the merge; then
//                    ORIGIN gets its -real's table back (or snapshot-origin,
//                    while other snapshots remain), as lvconvert --merge.
// A step that fails undoes the ones before it, so every device is left as it
// was, and the error names the step.
#pragma once
#include <nlohmann/json.hpp>

#include "dm/device_manager.hpp"
#include "dmnbd/asio.hpp"

namespace dmnbd::control {

// {"cmd": "snapshot-create", "name", "origin", "cow", "size" (bytes, for a
//  new COW file), "chunk" (sectors, default 8), "store" ("P" or "N")}
Task<nlohmann::json> snapshot_create(DeviceManager& devices, const nlohmann::json& req);
// {"cmd": "snapshot-merge", "name"}: returns once the merge is done.
Task<nlohmann::json> snapshot_merge(DeviceManager& devices, const nlohmann::json& req);
// {"cmd": "snapshot-remove", "name"}
Task<nlohmann::json> snapshot_remove(DeviceManager& devices, const nlohmann::json& req);

}  // namespace dmnbd::control
