#include "thin_verbs.hpp"

#include <spdlog/spdlog.h>

#include <memory>
#include <set>

#include "dm/file_device.hpp"
#include "dm/table.hpp"
#include "request_fields.hpp"
#include "verb_steps.hpp"

namespace dmnbd::control {
namespace {

namespace fs = std::filesystem;

constexpr uint32_t kMaxDevId = (1u << 24) - 1;

fs::path in_base(DeviceManager& devices, const std::string& file) {
  fs::path p(file);
  return p.is_relative() ? devices.base_dir() / p : p;
}

// A thin device's pool and id, from its one thin line.
struct ThinLine {
  std::string pool;
  uint32_t id = 0;
};

ThinLine thin_line(DeviceManager& devices, const std::string& name) {
  const auto line = one_line(*devices.get(name));
  if (!line || line->type != "thin" || line->words.size() < 2)
    throw ControlError(EINVAL, name + " is not a thin device (its table is not one thin line)");
  return {line->words[0], static_cast<uint32_t>(std::stoul(line->words[1]))};
}

// The ids of the pool's thin devices that have a table here.
std::set<uint32_t> ids_in_use(DeviceManager& devices, const std::string& pool) {
  std::set<uint32_t> ids;
  for (auto& d : devices.list())
    if (auto line = one_line(*d);
        line && line->type == "thin" && line->words.size() >= 2 && line->words[0] == pool)
      ids.insert(static_cast<uint32_t>(std::stoul(line->words[1])));
  return ids;
}

void check_pool(DeviceManager& devices, const std::string& pool) {
  const auto line = one_line(*devices.get(pool));
  if (!line || line->type != "thin-pool")
    throw ControlError(EINVAL, pool + " is not a thin pool (its table is not one thin-pool line)");
}

void check_new(DeviceManager& devices, const std::string& name) {
  if (devices.find(name)) throw ControlError(EEXIST, name + ": Device or resource busy (exists)");
}

// A new id: create_thin (or create_snap of `origin`) of the ids after the
// highest in use here; the pool may hold others no table names, which refuse
// with EEXIST, and the next is tried. Undone by deleting the id.
Step new_device_step(DeviceManager& devices, const std::string& pool, const std::string& verb,
                     const std::string& origin, std::shared_ptr<uint32_t> id) {
  return {verb + " on " + pool,
          [&devices, pool, verb, origin, id]() -> Task<void> {
            const auto used = ids_in_use(devices, pool);
            uint32_t next = used.empty() ? 1 : *used.rbegin() + 1;
            for (int tries = 0; tries < 4096 && next <= kMaxDevId; ++tries, ++next) {
              std::vector<std::string> words{verb, std::to_string(next)};
              if (!origin.empty()) words.push_back(origin);
              std::optional<ControlError> failed;
              try {
                (void)co_await devices.message(pool, 0, words);
                *id = next;
                co_return;
              } catch (const ControlError& e) {
                failed = e;
              }
              if (failed->error_number() != EEXIST) throw *failed;
            }
            throw ControlError(ENOSPC, pool + ": no free thin device id found");
          },
          [&devices, pool, id]() -> Task<void> {
            std::vector<std::string> words{"delete", std::to_string(*id)};
            (void)co_await devices.message(pool, 0, words);
          }};
}

std::string thin_table(uint64_t sectors, const std::string& pool, uint32_t id) {
  return "0 " + std::to_string(sectors) + " thin " + pool + " " + std::to_string(id);
}

// The thin device for the id an earlier step found.
Step thin_device_step(DeviceManager& devices, const std::string& name, const std::string& pool,
                      uint64_t sectors, std::shared_ptr<uint32_t> id) {
  return {"create " + name,
          [&devices, name, pool, sectors, id]() -> Task<void> {
            const CreateOptions options;
            const std::string table = thin_table(sectors, pool, *id);
            co_await devices.create(name, table, options);
          },
          [&devices, name]() -> Task<void> { co_await devices.remove(name, false); }};
}

}  // namespace

Task<json> thin_create_pool(DeviceManager& devices, const json& req) {
  const std::string name = str(req, "name");
  const std::string meta = str(req, "meta");
  const std::string data = str(req, "data");
  const uint64_t block = number(req, "block_size", 128);
  const uint64_t meta_size = number(req, "meta_size", 0);
  const uint64_t data_size = number(req, "data_size", 0);
  check_new(devices, name);
  if (meta == data) throw ControlError(EINVAL, "the metadata and data must be different files");
  const fs::path meta_path = in_base(devices, meta), data_path = in_base(devices, data);
  auto table = std::make_shared<std::string>();
  std::vector<Step> steps;
  steps.push_back(new_file_step(meta_path, meta_size, "the metadata file " + meta));
  steps.push_back(new_file_step(data_path, data_size, "the data file " + data));
  // The pool covers the data device's whole blocks (lvcreate --thinpool).
  steps.push_back(
      {"create " + name,
       [&devices, name, meta, data, data_path, block, table]() -> Task<void> {
         const uint64_t sectors = FileDevice::open(data_path, false)->sectors();
         const uint64_t length = block ? sectors / block * block : 0;
         if (length == 0) throw ControlError(EINVAL, data + " is smaller than one data block");
         *table = "0 " + std::to_string(length) + " thin-pool " + meta + " " + data + " " +
                  std::to_string(block) + " 0";
         const CreateOptions options;  // named: a braced temporary in a co_await is destroyed twice
         co_await devices.create(name, *table, options);
       },
       [&devices, name]() -> Task<void> { co_await devices.remove(name, false); }});
  co_await run_steps("thin create-pool", steps);
  spdlog::info("thin pool {} created: {}", name, *table);
  co_return json{{"ok", true}, {"table", *table}};
}

Task<json> thin_create(DeviceManager& devices, const json& req) {
  const std::string name = str(req, "name");
  const std::string pool = str(req, "pool");
  const uint64_t size = number(req, "size", 0);
  check_new(devices, name);
  check_pool(devices, pool);
  if (size == 0 || size % 512)
    throw ControlError(EINVAL, "the size must be a multiple of 512 bytes");
  auto id = std::make_shared<uint32_t>(0);
  std::vector<Step> steps;
  steps.push_back(new_device_step(devices, pool, "create_thin", "", id));
  steps.push_back(thin_device_step(devices, name, pool, size / 512, id));
  co_await run_steps("thin create", steps);
  const std::string table = thin_table(size / 512, pool, *id);
  spdlog::info("thin volume {} created: {}", name, table);
  co_return json{{"ok", true}, {"table", table}, {"id", *id}};
}

Task<json> thin_snapshot(DeviceManager& devices, const json& req) {
  const std::string name = str(req, "name");
  const std::string of = str(req, "of");
  check_new(devices, name);
  const ThinLine origin = thin_line(devices, of);
  check_pool(devices, origin.pool);
  const uint64_t sectors = devices.get(of)->sectors();
  auto id = std::make_shared<uint32_t>(0);
  // The origin is suspended while the snapshot is taken, so that no write
  // in flight misses the new sharing.
  std::vector<Step> steps;
  steps.push_back(suspend_step(devices, of));
  steps.push_back(
      new_device_step(devices, origin.pool, "create_snap", std::to_string(origin.id), id));
  steps.push_back(resume_step(devices, of));
  steps.push_back(thin_device_step(devices, name, origin.pool, sectors, id));
  co_await run_steps("thin snapshot", steps);
  const std::string table = thin_table(sectors, origin.pool, *id);
  spdlog::info("thin snapshot {} of {} created: {}", name, of, table);
  co_return json{{"ok", true}, {"table", table}, {"id", *id}};
}

Task<json> thin_remove(DeviceManager& devices, const json& req) {
  const std::string name = str(req, "name");
  const ThinLine thin = thin_line(devices, name);
  const std::string table = devices.get(name)->live_table()->table_text(Table::Keys::shown);
  std::vector<Step> steps;
  steps.push_back(
      {"remove " + name, [&devices, name]() -> Task<void> { co_await devices.remove(name, false); },
       [&devices, name, table]() -> Task<void> { co_await devices.create(name, table, {}); }});
  steps.push_back(message_step(devices, thin.pool, {"delete", std::to_string(thin.id)}));
  co_await run_steps("thin remove", steps);
  spdlog::info("thin volume {} removed (id {} deleted from {})", name, thin.id, thin.pool);
  co_return json{{"ok", true}};
}

}  // namespace dmnbd::control
