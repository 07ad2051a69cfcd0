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

namespace dmnbd::control {
namespace {

namespace fs = std::filesystem;

// One step of a verb, and how to take it back if a later step fails.
struct Step {
  std::string what;
  std::function<Task<void>()> run;
  std::function<Task<void>()> undo;  // none: nothing to take back
};

// Runs the steps in order; on a failure, undoes the finished ones newest
// first and throws the failure, naming its step.
Task<void> run_steps(const std::string& verb, std::vector<Step>& steps) {
  std::optional<ControlError> failure;
  size_t done = 0;
  for (; done < steps.size() && !failure; ++done) {
    try {
      co_await steps[done].run();
    } catch (const ControlError& e) {
      failure.emplace(e.error_number(), steps[done].what + ": " + e.what());
    } catch (const TableError& e) {
      failure.emplace(EINVAL, steps[done].what + ": " + e.what());
    } catch (const std::exception& e) {
      failure.emplace(EIO, steps[done].what + ": " + e.what());
    }
  }
  if (!failure) co_return;
  for (size_t i = done - 1; i-- > 0;) {
    if (!steps[i].undo) continue;
    std::optional<std::string> undo_failed;
    try {
      co_await steps[i].undo();
    } catch (const std::exception& e) {
      undo_failed = e.what();
    }
    if (undo_failed)
      spdlog::error("{}: taking back '{}' failed: {}", verb, steps[i].what, *undo_failed);
  }
  throw *failure;
}

// A device's live table when it is one line: its target type and words.
struct OneLine {
  std::string type;
  std::vector<std::string> words;
};

std::optional<OneLine> one_line(const Device& device) {
  auto table = device.live_table();
  if (!table || table->entries().size() != 1) return std::nullopt;
  const Table::Entry& entry = table->entries().front();
  OneLine line{entry.type, {}};
  std::istringstream in(entry.target->table());
  for (std::string w; in >> w;) line.words.push_back(w);
  return line;
}

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

// Makes a new COW file of `bytes`: all zeroes, so the snapshot's first load
// writes a fresh header. An existing file is used as it is (its snapshot,
// if it holds one, is loaded), never truncated.
bool create_cow_file(const fs::path& path, uint64_t bytes) {
  std::error_code ec;
  if (fs::exists(path, ec)) return false;
  if (bytes == 0)
    throw ControlError(EINVAL, path.string() + " does not exist: give its size to create it");
  if (bytes % 512) throw ControlError(EINVAL, "the COW size must be a multiple of 512 bytes");
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0)
    throw ControlError(errno, "cannot create " + path.string() + ": " + std::strerror(errno));
  const bool sized = ::ftruncate(fd, static_cast<off_t>(bytes)) == 0;
  const int err = errno;
  ::close(fd);
  if (!sized) {
    fs::remove(path, ec);
    throw ControlError(err, "cannot size " + path.string() + ": " + std::strerror(err));
  }
  return true;
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
  const std::string real_table = live->table_text();
  const std::string snapshot_table =
      "0 " + sectors + " snapshot " + real + " " + cow + " " + store + " " + std::to_string(chunk);
  const std::string origin_table = "0 " + sectors + " snapshot-origin " + real;
  fs::path cow_path(cow);
  if (cow_path.is_relative()) cow_path = devices.base_dir() / cow_path;
  // Named, not temporaries inside co_await (GCC 12 destroys those twice).
  const CreateOptions real_options{.read_only = origin->read_only()};
  const CreateOptions snapshot_options{};

  std::vector<Step> steps;
  steps.push_back({"create the COW file " + cow,
                   [&]() -> Task<void> {
                     if (!create_cow_file(cow_path, size)) steps[0].undo = nullptr;
                     co_return;
                   },
                   [&]() -> Task<void> {
                     std::error_code ec;
                     fs::remove(cow_path, ec);
                     co_return;
                   }});
  steps.push_back({"suspend " + origin_name,
                   [&]() -> Task<void> { co_await devices.suspend(origin_name, false); },
                   [&]() -> Task<void> { co_await devices.resume(origin_name); }});
  if (!has_snapshots)
    steps.push_back(
        {"create " + real,
         [&]() -> Task<void> { co_await devices.create(real, real_table, real_options); },
         [&]() -> Task<void> { co_await devices.remove(real, false); }});
  steps.push_back(
      {"create " + name,
       [&]() -> Task<void> { co_await devices.create(name, snapshot_table, snapshot_options); },
       [&]() -> Task<void> { co_await devices.remove(name, false); }});
  if (!has_snapshots)
    steps.push_back({"load snapshot-origin into " + origin_name,
                     [&]() -> Task<void> { co_await devices.load(origin_name, origin_table); },
                     [&]() -> Task<void> { co_await devices.clear(origin_name); }});
  steps.push_back({"resume " + origin_name,
                   [&]() -> Task<void> { co_await devices.resume(origin_name); }, nullptr});
  co_await run_steps("snapshot create", steps);
  spdlog::info("snapshot {} of {} created (COW {}, {} {})", name, origin_name, cow, store, chunk);
  co_return json{{"ok", true}, {"real", real}, {"table", snapshot_table}};
}

Task<json> snapshot_remove(DeviceManager& devices, const json& req) {
  const std::string name = str(req, "name");
  auto snapshot = devices.get(name);
  const auto line = one_line(*snapshot);
  if (!line || line->type != "snapshot" || line->words.empty())
    throw ControlError(EINVAL, name + " is not a snapshot (its table is not one snapshot line)");
  const std::string real = line->words[0];
  const auto origins = lines_on(devices, "snapshot-origin", real);
  const std::string origin_name = origins.empty() ? std::string() : origins[0]->name();
  auto siblings = lines_on(devices, "snapshot", real);
  std::erase_if(siblings, [&](const auto& d) { return d->name() == name; });
  // The last snapshot gone, the origin goes back to its -real's table.
  auto real_device = devices.find(real);
  const bool restore =
      !origin_name.empty() && siblings.empty() && real_device && real_device->live_table();
  const std::string real_table = restore ? real_device->live_table()->table_text() : "";

  std::vector<Step> steps;
  if (!origin_name.empty())
    steps.push_back({"suspend " + origin_name,
                     [&]() -> Task<void> { co_await devices.suspend(origin_name, false); },
                     [&]() -> Task<void> { co_await devices.resume(origin_name); }});
  if (restore)
    steps.push_back({"load " + real + "'s table into " + origin_name,
                     [&]() -> Task<void> { co_await devices.load(origin_name, real_table); },
                     [&]() -> Task<void> { co_await devices.clear(origin_name); }});
  steps.push_back(
      {"remove " + name, [&]() -> Task<void> { co_await devices.remove(name, false); }, nullptr});
  if (!origin_name.empty())
    steps.push_back({"resume " + origin_name,
                     [&]() -> Task<void> { co_await devices.resume(origin_name); }, nullptr});
  if (restore)
    steps.push_back(
        {"remove " + real, [&]() -> Task<void> { co_await devices.remove(real, false); }, nullptr});
  co_await run_steps("snapshot remove", steps);
  spdlog::info("snapshot {} removed{}", name,
               restore ? "; " + origin_name + " maps its own table again" : "");
  co_return json{{"ok", true}};
}

}  // namespace dmnbd::control

namespace dmnbd::control {

Task<json> snapshot_merge(DeviceManager& devices, const json& req) {
  const std::string name = str(req, "name");
  auto snapshot = devices.get(name);
  const auto line = one_line(*snapshot);
  if (!line || line->type != "snapshot" || line->words.size() < 4)
    throw ControlError(EINVAL, name + " is not a snapshot (its table is not one snapshot line)");
  const std::string real = line->words[0];
  const auto origins = lines_on(devices, "snapshot-origin", real);
  if (origins.empty())
    throw ControlError(EINVAL,
                       "no device maps snapshot-origin " + real + ": nothing to merge into");
  const std::string origin_name = origins[0]->name();
  auto siblings = lines_on(devices, "snapshot", real);
  std::erase_if(siblings, [&](const auto& d) { return d->name() == name; });
  const std::string sectors = std::to_string(origins[0]->sectors());
  std::string merge_table = "0 " + sectors + " snapshot-merge";
  for (const auto& w : line->words) merge_table += " " + w;
  auto real_device = devices.find(real);
  // After the merge: the origin maps -real again, unless other snapshots
  // still need their snapshot-origin.
  const bool restore = siblings.empty() && real_device && real_device->live_table();
  const std::string after_table = restore ? real_device->live_table()->table_text()
                                          : "0 " + sectors + " snapshot-origin " + real;

  // dmsetup's order: the snapshot suspended, the origin reloaded with
  // snapshot-merge (which takes the snapshot over), the snapshot removed.
  std::vector<Step> start;
  start.push_back({"suspend " + name,
                   [&]() -> Task<void> { co_await devices.suspend(name, false); },
                   [&]() -> Task<void> { co_await devices.resume(name); }});
  start.push_back({"suspend " + origin_name,
                   [&]() -> Task<void> { co_await devices.suspend(origin_name, false); },
                   [&]() -> Task<void> { co_await devices.resume(origin_name); }});
  start.push_back({"load snapshot-merge into " + origin_name,
                   [&]() -> Task<void> { co_await devices.load(origin_name, merge_table); },
                   [&]() -> Task<void> { co_await devices.clear(origin_name); }});
  start.push_back({"resume " + origin_name,
                   [&]() -> Task<void> { co_await devices.resume(origin_name); }, nullptr});
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
  finish.push_back({"suspend " + origin_name,
                    [&]() -> Task<void> { co_await devices.suspend(origin_name, false); },
                    [&]() -> Task<void> { co_await devices.resume(origin_name); }});
  finish.push_back({"load " + (restore ? real + "'s table" : std::string("snapshot-origin")) +
                        " into " + origin_name,
                    [&]() -> Task<void> { co_await devices.load(origin_name, after_table); },
                    [&]() -> Task<void> { co_await devices.clear(origin_name); }});
  finish.push_back({"resume " + origin_name,
                    [&]() -> Task<void> { co_await devices.resume(origin_name); }, nullptr});
  if (restore)
    finish.push_back(
        {"remove " + real, [&]() -> Task<void> { co_await devices.remove(real, false); }, nullptr});
  co_await run_steps("snapshot merge", finish);
  spdlog::info("snapshot {}: merged into {}", name, origin_name);
  co_return json{{"ok", true}, {"table", after_table}};
}

}  // namespace dmnbd::control
