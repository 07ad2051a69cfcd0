// Thin volumes the way LVM makes them (lvcreate --thinpool, lvcreate -V
// --thin, lvcreate -s of a thin volume, lvremove), as control verbs built
// from dmsetup's steps in the kernel's order: each a pool message and a
// table; a step that fails undoes the ones before it (verb_steps.hpp).
//   thin-create-pool: the metadata and data files (made, zeroed, when
//                     missing and sized); NAME as "thin-pool META DATA BS 0"
//                     over all of the data device's whole blocks.
//   thin-create:      create_thin with the pool's lowest free device id
//                     above those in use; NAME as "thin POOL ID".
//   thin-snapshot:    suspend OF; create_snap NEWID OF's id; resume OF;
//                     NAME as "thin POOL NEWID", OF's size.
//   thin-remove:      remove NAME; delete its id.
#pragma once
#include <nlohmann/json.hpp>

#include "dm/device_manager.hpp"
#include "dmnbd/asio.hpp"

namespace dmnbd::control {

// {"cmd": "thin-create-pool", "name", "meta", "data", "block_size" (sectors,
//  default 128), "meta_size", "data_size" (bytes, for files to be made)}
Task<nlohmann::json> thin_create_pool(DeviceManager& devices, const nlohmann::json& req);
// {"cmd": "thin-create", "name", "pool", "size" (bytes)}
Task<nlohmann::json> thin_create(DeviceManager& devices, const nlohmann::json& req);
// {"cmd": "thin-snapshot", "name", "of"}
Task<nlohmann::json> thin_snapshot(DeviceManager& devices, const nlohmann::json& req);
// {"cmd": "thin-remove", "name"}
Task<nlohmann::json> thin_remove(DeviceManager& devices, const nlohmann::json& req);

}  // namespace dmnbd::control
