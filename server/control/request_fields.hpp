// Reading a control request's fields, with one error type for a request
// that is malformed (answered with EINVAL, naming the field).
#pragma once
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

namespace dmnbd::control {

using json = nlohmann::json;

struct BadRequest : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline std::string str(const json& req, const char* key) {
  auto it = req.find(key);
  if (it == req.end() || !it->is_string())
    throw BadRequest(std::string("'") + key + "' must be a string");
  return it->get<std::string>();
}

inline std::string opt_str(const json& req, const char* key) {
  return req.contains(key) ? str(req, key) : std::string();
}

inline bool flag(const json& req, const char* key) {
  auto it = req.find(key);
  if (it == req.end()) return false;
  if (!it->is_boolean()) throw BadRequest(std::string("'") + key + "' must be true or false");
  return it->get<bool>();
}

inline uint64_t number(const json& req, const char* key, uint64_t fallback) {
  auto it = req.find(key);
  if (it == req.end()) return fallback;
  if (!it->is_number_unsigned())
    throw BadRequest(std::string("'") + key + "' must be a non-negative integer");
  return it->get<uint64_t>();
}

}  // namespace dmnbd::control
