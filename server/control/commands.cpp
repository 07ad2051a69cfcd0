#include "commands.hpp"

#include <boost/asio/steady_timer.hpp>
#include <chrono>

#include "dm/table.hpp"
#include "dmnbd/secret_bytes.hpp"
#include "dmnbd/target.hpp"
#include "request_fields.hpp"
#include "snapshot_verbs.hpp"
#include "thin_verbs.hpp"

namespace dmnbd::control {
namespace {

// dm's major number, so `ls`, `info` and `deps` read like dmsetup's.
constexpr int kDmMajor = 253;

json lines_of(const std::string& text) {
  json lines = json::array();
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    lines.push_back(text.substr(pos, nl - pos));
    pos = nl == std::string::npos ? text.size() : nl + 1;
  }
  return lines;
}

// The devices a request is about: the named one, or all of them.
std::vector<std::shared_ptr<Device>> selected(DeviceManager& devices, const json& req) {
  if (req.contains("name")) return {devices.get(str(req, "name"))};
  return devices.list();
}

json device_ref(const BlockDevice& dev) {
  if (auto* mapped = dynamic_cast<const Device*>(dev.identity()))
    return {{"name", mapped->name()}, {"major", kDmMajor}, {"minor", mapped->minor()}};
  return {{"path", dev.name()}};
}

json info_of(const Device& d) {
  auto live = d.live_table();
  return {{"name", d.name()},
          {"state", d.suspended() ? "SUSPENDED" : "ACTIVE"},
          {"read_only", d.read_only()},
          {"live_table", live != nullptr},
          {"inactive_table", d.inactive_table() != nullptr},
          {"open_count", d.open_count()},
          {"event_nr", d.event_nr()},
          {"major", kDmMajor},
          {"minor", d.minor()},
          {"targets", live ? live->entries().size() : 0},
          {"sectors", d.sectors()},
          {"description", d.description()},
          {"suspended_waits", d.suspended_waits()}};
}

// The text a table or status line shows: the live table, or for `table
// --inactive`, the inactive one; keys masked unless the request asks for
// them (`table --showkeys`).
json table_lines(const Device& d, bool status, const json& req) {
  auto table = flag(req, "inactive") ? d.inactive_table() : d.live_table();
  if (!table) return json::array();
  const auto keys = flag(req, "showkeys") ? Table::Keys::shown : Table::Keys::hidden;
  return lines_of(status ? table->status_text() : table->table_text(keys));
}

Task<json> wait_for_event(DeviceManager& devices, const json& req) {
  auto device = devices.get(str(req, "name"));
  const uint64_t after = number(req, "event_nr", 0);
  const uint64_t timeout_ms = number(req, "timeout_ms", 0);  // 0 = forever
  // Events are rare and waits are long: polling every 50 ms keeps the device
  // free of waiter bookkeeping on its I/O path.
  asio::steady_timer timer(co_await asio::this_coro::executor);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (device->event_nr() <= after) {
    if (timeout_ms && std::chrono::steady_clock::now() >= deadline)
      co_return json{{"ok", false},
                     {"error", "timed out waiting for an event"},
                     {"errno", ETIMEDOUT},
                     {"event_nr", device->event_nr()}};
    timer.expires_after(std::chrono::milliseconds(50));
    co_await timer.async_wait(asio::use_awaitable);
  }
  co_return json{{"ok", true}, {"event_nr", device->event_nr()}};
}

// One function per verb. Arguments are read into locals before any co_await:
// GCC 12 destroys temporaries of a co_await expression twice when the callee
// throws.
using Name = const std::string&;
const json kOk{{"ok", true}};

// A table's text may hold a key: wiped however the verb ends (a named local,
// never a temporary).
struct WipeText {
  std::string& text;
  ~WipeText() { wipe_memory(text.data(), text.size()); }
};

Task<json> verb_create(DeviceManager& devices, const json& req, Name name) {
  std::string table = opt_str(req, "table");
  const WipeText wipe{table};
  const CreateOptions options{.description = opt_str(req, "description"),
                              .read_only = flag(req, "read_only"),
                              .no_table = flag(req, "notable")};
  co_await devices.create(name, table, options);
  co_return kOk;
}

Task<json> verb_load(DeviceManager& devices, const json& req, Name name) {
  std::string table = str(req, "table");
  const WipeText wipe{table};
  co_await devices.load(name, table);
  co_return kOk;
}

Task<json> verb_reload(DeviceManager& devices, const json& req, Name name) {
  std::string table = str(req, "table");
  const WipeText wipe{table};
  co_await devices.reload(name, table);
  co_return kOk;
}

Task<json> verb_clear(DeviceManager& devices, const json&, Name name) {
  co_await devices.clear(name);
  co_return kOk;
}

Task<json> verb_suspend(DeviceManager& devices, const json& req, Name name) {
  const bool noflush = flag(req, "noflush");
  co_await devices.suspend(name, noflush);
  co_return kOk;
}

Task<json> verb_resume(DeviceManager& devices, const json&, Name name) {
  co_await devices.resume(name);
  co_return kOk;
}

Task<json> verb_remove(DeviceManager& devices, const json& req, Name name) {
  const bool force = flag(req, "force");
  co_await devices.remove(name, force);
  co_return kOk;
}

Task<json> verb_rename(DeviceManager& devices, const json& req, Name name) {
  devices.rename(name, str(req, "new_name"));
  co_return kOk;
}

json table_or_status(DeviceManager& devices, const json& req, bool status) {
  json out = json::array();
  for (const auto& d : selected(devices, req))
    out.push_back({{"name", d->name()}, {"lines", table_lines(*d, status, req)}});
  return json{{"ok", true}, {"devices", out}};
}

Task<json> verb_table(DeviceManager& devices, const json& req, Name) {
  co_return table_or_status(devices, req, false);
}

Task<json> verb_status(DeviceManager& devices, const json& req, Name) {
  co_return table_or_status(devices, req, true);
}

Task<json> verb_info(DeviceManager& devices, const json& req, Name) {
  json out = json::array();
  for (const auto& d : selected(devices, req)) out.push_back(info_of(*d));
  co_return json{{"ok", true}, {"devices", out}};
}

// `ls` and `deps` answer alike; the CLI shows them differently.
Task<json> verb_deps(DeviceManager& devices, const json& req, Name) {
  json out = json::array();
  for (const auto& d : selected(devices, req)) {
    json deps = json::array();
    for (const auto& dep : d->dependencies(false)) deps.push_back(device_ref(*dep));
    json entry = device_ref(*d);
    entry["deps"] = deps;
    out.push_back(entry);
  }
  co_return json{{"ok", true}, {"devices", out}};
}

Task<json> verb_message(DeviceManager& devices, const json& req, Name name) {
  std::vector<std::string> words;
  if (!req.contains("words") || !req["words"].is_array())
    throw BadRequest("'words' must be a list of strings");
  for (const auto& w : req["words"]) {
    if (!w.is_string()) throw BadRequest("'words' must be a list of strings");
    words.push_back(w.get<std::string>());
  }
  const uint64_t sector = number(req, "sector", 0);
  std::string output = co_await devices.message(name, sector, words);
  co_return json{{"ok", true}, {"output", output}};
}

Task<json> verb_targets(DeviceManager&, const json&, Name) {
  json out = json::array();
  for (const auto* t : TargetRegistry::instance().all())
    out.push_back(
        {{"name", t->name}, {"version", {t->version.major, t->version.minor, t->version.patch}}});
  co_return json{{"ok", true}, {"targets", out}};
}

Task<json> verb_wait(DeviceManager& devices, const json& req, Name) {
  co_return co_await wait_for_event(devices, req);
}

Task<json> verb_snapshot_create(DeviceManager& devices, const json& req, Name) {
  co_return co_await snapshot_create(devices, req);
}

Task<json> verb_snapshot_merge(DeviceManager& devices, const json& req, Name) {
  co_return co_await snapshot_merge(devices, req);
}

Task<json> verb_snapshot_remove(DeviceManager& devices, const json& req, Name) {
  co_return co_await snapshot_remove(devices, req);
}

Task<json> verb_thin_create_pool(DeviceManager& devices, const json& req, Name) {
  co_return co_await thin_create_pool(devices, req);
}

Task<json> verb_thin_create(DeviceManager& devices, const json& req, Name) {
  co_return co_await thin_create(devices, req);
}

Task<json> verb_thin_snapshot(DeviceManager& devices, const json& req, Name) {
  co_return co_await thin_snapshot(devices, req);
}

Task<json> verb_thin_remove(DeviceManager& devices, const json& req, Name) {
  co_return co_await thin_remove(devices, req);
}

struct Verb {
  const char* name;
  bool needs_name;  // a device 'name' is required (else optional: all devices)
  Task<json> (*run)(DeviceManager&, const json&, Name);
};

// The control protocol, one row per verb (the README's "Control socket" section).
constexpr Verb kVerbs[] = {
    {"create", true, verb_create},
    {"load", true, verb_load},
    {"reload", true, verb_reload},
    {"clear", true, verb_clear},
    {"suspend", true, verb_suspend},
    {"resume", true, verb_resume},
    {"remove", true, verb_remove},
    {"rename", true, verb_rename},
    {"message", true, verb_message},
    {"wait", true, verb_wait},
    {"table", false, verb_table},
    {"status", false, verb_status},
    {"info", false, verb_info},
    {"ls", false, verb_deps},
    {"deps", false, verb_deps},
    {"targets", false, verb_targets},
    {"snapshot-create", true, verb_snapshot_create},
    {"snapshot-merge", true, verb_snapshot_merge},
    {"snapshot-remove", true, verb_snapshot_remove},
    {"thin-create-pool", true, verb_thin_create_pool},
    {"thin-create", true, verb_thin_create},
    {"thin-snapshot", true, verb_thin_snapshot},
    {"thin-remove", true, verb_thin_remove},
};

Task<json> dispatch(DeviceManager& devices, const json& req) {
  const std::string cmd = str(req, "cmd");
  const Verb* verb = nullptr;
  for (const Verb& v : kVerbs)
    if (cmd == v.name) verb = &v;
  if (!verb) throw BadRequest("unknown command '" + cmd + "'");
  const std::string name = opt_str(req, "name");
  if (name.empty() && verb->needs_name) throw BadRequest("'" + cmd + "' needs a device 'name'");
  co_return co_await verb->run(devices, req, name);
}

}  // namespace

Task<json> execute(DeviceManager& devices, const json& request) {
  auto failure = [](int err, const std::string& what) {
    return json{{"ok", false}, {"error", what}, {"errno", err}};
  };
  try {
    if (!request.is_object()) co_return failure(EINVAL, "a request must be a JSON object");
    co_return co_await dispatch(devices, request);
  } catch (const BadRequest& e) {
    co_return failure(EINVAL, e.what());
  } catch (const TableError& e) {
    co_return failure(EINVAL, e.what());
  } catch (const ControlError& e) {
    co_return failure(e.error_number(), e.what());
  } catch (const std::exception& e) {
    co_return failure(EIO, e.what());
  }
}

}  // namespace dmnbd::control
