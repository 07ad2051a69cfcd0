// Errors on the I/O path travel as values: an errno wrapped in std::error_code.
#pragma once
#include <cerrno>
#include <stdexcept>
#include <system_error>

namespace dmnbd {

using Status = std::error_code;

inline Status ok() {
  return {};
}
inline Status errno_status(int e) {
  return {e, std::generic_category()};
}

// Thrown while building a table: the text is the kernel's ti->error where it has one.
class TargetError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace dmnbd
