// A blocking client for the control socket: one request, one response.
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace dmnbd::cli {

struct Unreachable : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throws Unreachable when the socket cannot be reached or the reply is cut.
nlohmann::json call(const std::filesystem::path& socket, const nlohmann::json& request);

}  // namespace dmnbd::cli
