#include "snapshot_verbs.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <optional>
#include <sstream>

#include <boost/asio/steady_timer.hpp>

#include "dm/table.hpp"
#include "request_fields.hpp"
#include "verb_steps.hpp"

namespace dmnbd::control {
namespace {

namespace fs = std::filesystem;

// The devices whose live table is a `type` line whose first word is `dev`.
std::vector<std::shared_ptr<Device>> lines_on(DeviceManager& devices, const std::string& type,
                                              const std::string& dev) {
  std::vector<std::shared_ptr<Device>> out;
  for (auto& d : devices.list())
    if (auto line = one_line(*d);
        line && line->type == type && !line->words.empty() && line->words[0] == dev)
      out.push_back(d);
  return out;
}

// Snapshot NAME and the devices around it, as remove and merge find them.
struct SnapshotStack {
  std::vector<std::string> words;  // NAME's snapshot line: origin cow store chunk [features]
  std::string real;                // the device it snapshots (ORIGIN-real)
  std::shared_ptr<Device> origin;  // the device mapping snapshot-origin over `real`, if any
  // The table `real` maps when NAME is its last snapshot (an ORIGIN can go
  // back to it), else empty.
  std::string real_table_if_last;
};

SnapshotStack find_stack(DeviceManager& devices, const std::string& name) {
  const auto line = one_line(*devices.get(name));
  if (!line || line->type != "snapshot" || line->words.size() < 4)
    throw ControlError(EINVAL, name + " is not a snapshot (its table is not one snapshot line)");
  SnapshotStack stack{line->words, line->words[0], nullptr, ""};
  const auto origins = lines_on(devices, "snapshot-origin", stack.real);
  if (!origins.empty()) stack.origin = origins[0];
  auto siblings = lines_on(devices, "snapshot", stack.real);
  std::erase_if(siblings, [&](const auto& d) { return d->name() == name; });
  if (auto real = devices.find(stack.real); siblings.empty() && real && real->live_table())
    stack.real_table_if_last = real->live_table()->table_text(Table::Keys::shown);
  return stack;
}

// The merge's progress from the merging device's status line, as
// lvconvert --merge polls it: done when allocated == metadata sectors.
struct MergeProgress {
  bool done = false;
  std::string failed;  // "Invalid" or "Merge failed"
};

MergeProgress merge_progress(const Device& device) {
  auto table = device.live_table();
  if (!table) return {false, "the device lost its table"};
  std::string status = table->status_text();
  while (!status.empty() && status.back() == '\n') status.pop_back();
  if (status.ends_with("Invalid")) return {false, "Invalid"};
  if (status.ends_with("Merge failed")) return {false, "Merge failed"};
  std::istringstream in(status);
  std::string start, length, type, usage, metadata;
  in >> start >> length >> type >> usage >> metadata;
  return {usage.substr(0, usage.find('/')) == metadata, ""};
}

}  // namespace

Task<json> snapshot_create(DeviceManager& devices, const json& req) {
  const std::string name = str(req, "name");
  const std::string origin_name = str(req, "origin");
  const std::string cow = str(req, "cow");
  const uint64_t size = number(req, "size", 0);
  const uint64_t chunk = number(req, "chunk", 8);
  const std::string store = req.contains("store") ? str(req, "store") : "P";
  if (store != "P" && store != "N") throw BadRequest("'store' must be P or N");

  auto origin = devices.get(origin_name);
  auto live = origin->live_table();
  if (!live) throw ControlError(EINVAL, origin_name + " has no live table");
  if (devices.find(name)) throw ControlError(EEXIST, name + ": Device or resource busy (exists)");
  for (auto& d : devices.list())
    if (auto line = one_line(*d);
        line && line->type == "snapshot" && line->words.size() > 1 && line->words[1] == cow)
      throw ControlError(EBUSY, cow + " is already the COW of snapshot " + d->name());
  // An origin that has snapshots already keeps its -real device.
  const auto origin_line = one_line(*origin);
  const bool has_snapshots = origin_line && origin_line->type == "snapshot-origin";
  const std::string real = has_snapshots ? origin_line->words.at(0) : origin_name + "-real";
  if (!has_snapshots && devices.find(real))
    throw ControlError(EEXIST, real + ": Device or resource busy (exists)");

  const std::string sectors = std::to_string(origin->sectors());
  const std::string real_table = live->table_text(Table::Keys::shown);
  const std::string snapshot_table =
      "0 " + sectors + " snapshot " + real + " " + cow + " " + store + " " + std::to_string(chunk);
  const std::string origin_table = "0 " + sectors + " snapshot-origin " + real;
  fs::path cow_path(cow);
  if (cow_path.is_relative()) cow_path = devices.base_dir() / cow_path;
  const CreateOptions real_options{.read_only = origin->read_only()};

  std::vector<Step> steps;
  steps.push_back(new_file_step(cow_path, size, "the COW file " + cow));
  steps.push_back(suspend_step(devices, origin_name));
  if (!has_snapshots) steps.push_back(create_step(devices, real, real_table, real_options));
  steps.push_back(create_step(devices, name, snapshot_table, {}));
  if (!has_snapshots)
    steps.push_back(load_step(devices, origin_name, origin_table, "snapshot-origin"));
  steps.push_back(resume_step(devices, origin_name));
  co_await run_steps("snapshot create", steps);
  spdlog::info("snapshot {} of {} created (COW {}, {} {})", name, origin_name, cow, store, chunk);
  co_return json{{"ok", true}, {"real", real}, {"table", snapshot_table}};
}

Task<json> snapshot_remove(DeviceManager& devices, const json& req) {
  const std::string name = str(req, "name");
  const SnapshotStack stack = find_stack(devices, name);
  const std::string& real = stack.real;
  const std::string origin_name = stack.origin ? stack.origin->name() : "";
  // The last snapshot gone, the origin goes back to its -real's table.
  const bool restore = stack.origin && !stack.real_table_if_last.empty();
  const std::string& real_table = stack.real_table_if_last;

  std::vector<Step> steps;
  if (!origin_name.empty()) steps.push_back(suspend_step(devices, origin_name));
  if (restore) steps.push_back(load_step(devices, origin_name, real_table, real + "'s table"));
  steps.push_back(remove_step(devices, name));
  if (!origin_name.empty()) steps.push_back(resume_step(devices, origin_name));
  if (restore) steps.push_back(remove_step(devices, real));
  co_await run_steps("snapshot remove", steps);
  spdlog::info("snapshot {} removed{}", name,
               restore ? "; " + origin_name + " maps its own table again" : "");
  co_return json{{"ok", true}};
}

Task<json> snapshot_merge(DeviceManager& devices, const json& req) {
  const std::string name = str(req, "name");
  const SnapshotStack stack = find_stack(devices, name);
  const std::string& real = stack.real;
  if (!stack.origin)
    throw ControlError(EINVAL,
                       "no device maps snapshot-origin " + real + ": nothing to merge into");
  const std::string origin_name = stack.origin->name();
  const std::string sectors = std::to_string(stack.origin->sectors());
  std::string merge_table = "0 " + sectors + " snapshot-merge";
  for (const auto& w : stack.words) merge_table += " " + w;
  // After the merge: the origin maps -real again, unless other snapshots
  // still need their snapshot-origin.
  const bool restore = !stack.real_table_if_last.empty();
  const std::string after_table =
      restore ? stack.real_table_if_last : "0 " + sectors + " snapshot-origin " + real;

  // dmsetup's order: the snapshot suspended, the origin reloaded with
  // snapshot-merge (which takes the snapshot over), the snapshot removed.
  std::vector<Step> start;
  start.push_back(suspend_step(devices, name));
  start.push_back(suspend_step(devices, origin_name));
  start.push_back(load_step(devices, origin_name, merge_table, "snapshot-merge"));
  start.push_back(resume_step(devices, origin_name));
  co_await run_steps("snapshot merge", start);
  spdlog::info("snapshot {}: merging into {}", name, origin_name);
  // The snapshot reads as Invalid now; it goes, as lvconvert --merge does.
  std::optional<std::string> not_removed;
  try {
    co_await devices.remove(name, false);
  } catch (const std::exception& e) {
    not_removed = e.what();
  }
  if (not_removed) spdlog::warn("snapshot merge: removing {} failed: {}", name, *not_removed);

  asio::steady_timer timer(co_await asio::this_coro::executor);
  auto merging = devices.get(origin_name);
  for (MergeProgress p = merge_progress(*merging); !p.done; p = merge_progress(*merging)) {
    if (!p.failed.empty())
      throw ControlError(EIO, "the merge into " + origin_name + " stopped: " + p.failed +
                                  " (its table stays snapshot-merge; see the server log)");
    timer.expires_after(std::chrono::milliseconds(50));
    co_await timer.async_wait(asio::use_awaitable);
  }

  std::vector<Step> finish;
  finish.push_back(suspend_step(devices, origin_name));
  finish.push_back(load_step(devices, origin_name, after_table,
                             restore ? real + "'s table" : "snapshot-origin"));
  finish.push_back(resume_step(devices, origin_name));
  if (restore) finish.push_back(remove_step(devices, real));
  co_await run_steps("snapshot merge", finish);
  spdlog::info("snapshot {}: merged into {}", name, origin_name);
  // The origin's table as `table` shows it: keys masked.
  const std::string shown = devices.get(origin_name)->live_table()->table_text();
  co_return json{{"ok", true}, {"table", shown}};
}

}  // namespace dmnbd::control
