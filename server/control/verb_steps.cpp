#include "verb_steps.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstring>
#include <memory>

#include <sstream>

#include "dm/table.hpp"
#include "request_fields.hpp"

namespace dmnbd::control {

Step suspend_step(DeviceManager& devices, const std::string& name) {
  return {"suspend " + name,
          [&devices, name]() -> Task<void> { co_await devices.suspend(name, false); },
          [&devices, name]() -> Task<void> { co_await devices.resume(name); }};
}

Step resume_step(DeviceManager& devices, const std::string& name) {
  return {"resume " + name, [&devices, name]() -> Task<void> { co_await devices.resume(name); },
          nullptr};
}

// Into the inactive slot; undone by clearing it. `what` names the table.
Step load_step(DeviceManager& devices, const std::string& name, const std::string& table,
               const std::string& what) {
  return {"load " + what + " into " + name,
          [&devices, name, table]() -> Task<void> { co_await devices.load(name, table); },
          [&devices, name]() -> Task<void> { co_await devices.clear(name); }};
}

// Taking it back removes the device again.
Step create_step(DeviceManager& devices, const std::string& name, const std::string& table,
                 const CreateOptions& options) {
  return {"create " + name,
          [&devices, name, table, options]() -> Task<void> {
            co_await devices.create(name, table, options);
          },
          [&devices, name]() -> Task<void> { co_await devices.remove(name, false); }};
}

Step remove_step(DeviceManager& devices, const std::string& name) {
  return {"remove " + name,
          [&devices, name]() -> Task<void> { co_await devices.remove(name, false); }, nullptr};
}

Step message_step(DeviceManager& devices, const std::string& name, std::vector<std::string> words,
                  std::vector<std::string> undo_words) {
  std::string what = "message " + name + " 0";
  for (const auto& w : words) what += " " + w;
  Step step{
      what,
      [&devices, name, words]() -> Task<void> { (void)co_await devices.message(name, 0, words); },
      nullptr};
  if (!undo_words.empty())
    step.undo = [&devices, name, undo_words]() -> Task<void> {
      (void)co_await devices.message(name, 0, undo_words);
    };
  return step;
}

Step new_file_step(const std::filesystem::path& path, uint64_t bytes, const std::string& what) {
  namespace fs = std::filesystem;
  auto created = std::make_shared<bool>(false);
  return {
      "create " + what,
      [path, bytes, created]() -> Task<void> {
        std::error_code ec;
        if (fs::exists(path, ec)) co_return;
        if (bytes == 0)
          throw ControlError(EINVAL, path.string() + " does not exist: give its size to create it");
        if (bytes % 512) throw ControlError(EINVAL, "the size must be a multiple of 512 bytes");
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
        *created = true;
      },
      [path, created]() -> Task<void> {
        std::error_code ec;
        if (*created) fs::remove(path, ec);
        co_return;
      }};
}

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

std::optional<OneLine> one_line(const Device& device) {
  auto table = device.live_table();
  if (!table || table->entries().size() != 1) return std::nullopt;
  const Table::Entry& entry = table->entries().front();
  OneLine line{entry.type, {}};
  std::istringstream in(entry.target->table());
  for (std::string w; in >> w;) line.words.push_back(w);
  return line;
}

}  // namespace dmnbd::control
