// `dmnbd <verb> ...`: dmsetup's verbs, sent to a running server's control socket.
#pragma once
#include <CLI/CLI.hpp>
#include <filesystem>
#include <functional>
#include <string>

namespace dmnbd::cli {

// Where the server of the built-in demo puts its data and control socket.
std::filesystem::path default_data_dir();
std::filesystem::path default_control_path();

// Adds the verbs to `app`. After parsing, the returned function runs the verb
// that was chosen and returns the exit status: 0 success, 1 the server
// refused, 3 no server reachable; -1 if no control verb was chosen.
std::function<int()> add_control_commands(CLI::App& app);

}  // namespace dmnbd::cli
