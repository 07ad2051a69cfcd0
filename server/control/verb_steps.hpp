// The steps the LVM-style verbs (snapshot and thin) are made of, each with
// how to take it back: run_steps() runs them in order and, when one fails,
// undoes the finished ones newest first, so every device is left as it was,
// and the error names the step.
#pragma once
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "dm/device_manager.hpp"
#include "dmnbd/asio.hpp"

namespace dmnbd::control {

struct Step {
  std::string what;
  std::function<Task<void>()> run;
  std::function<Task<void>()> undo;  // none: nothing to take back
};

// Each lambda keeps what it needs by value: it lives in its Step, which
// outlives the coroutine it makes.
Step suspend_step(DeviceManager& devices, const std::string& name);
Step resume_step(DeviceManager& devices, const std::string& name);
// Into the inactive slot; undone by clearing it. `what` names the table.
Step load_step(DeviceManager& devices, const std::string& name, const std::string& table,
               const std::string& what);
// Taking it back removes the device again.
Step create_step(DeviceManager& devices, const std::string& name, const std::string& table,
                 const CreateOptions& options);
Step remove_step(DeviceManager& devices, const std::string& name);
// A new file of `bytes`, all zeroes (a COW, a thin pool's metadata: their
// first load formats them); undone by removing it. An existing file is
// used as it is, never truncated, and stays.
Step new_file_step(const std::filesystem::path& path, uint64_t bytes, const std::string& what);
// `dmsetup message NAME 0 WORDS`; `undo_words`, if any, is the message that
// takes it back.
Step message_step(DeviceManager& devices, const std::string& name, std::vector<std::string> words,
                  std::vector<std::string> undo_words = {});

// Runs the steps in order; on a failure, undoes the finished ones newest
// first and throws the failure (a ControlError), naming its step.
Task<void> run_steps(const std::string& verb, std::vector<Step>& steps);

// A device's live table when it is one line: its target type and words.
struct OneLine {
  std::string type;
  std::vector<std::string> words;
};
std::optional<OneLine> one_line(const Device& device);

}  // namespace dmnbd::control
