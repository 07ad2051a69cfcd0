// Errors on the I/O path travel as values: an errno wrapped in std::error_code.
#pragma once
#include <cerrno>
#include <stdexcept>
#include <string>
#include <system_error>

namespace dmnbd {

using Status = std::error_code;

inline Status ok() {
  return {};
}
inline Status errno_status(int e) {
  return {e, std::generic_category()};
}

// DM_MAPIO_REQUEUE (BLK_STS_DM_REQUEUE): a target gives the bio back to
// the device, which sends it again after the next resume, to the table live
// then. Only while a noflush suspend is under way (TargetContext::
// noflush_suspending), as the kernel's mirror does with writes it held.
inline const std::error_category& requeue_category() {
  struct Category final : std::error_category {
    const char* name() const noexcept override { return "dm-requeue"; }
    std::string message(int) const override { return "requeued until the device resumes"; }
  };
  static const Category category;
  return category;
}
inline Status requeue_status() {
  return {1, requeue_category()};
}
inline bool is_requeue(const Status& st) {
  return st.category() == requeue_category();
}

// Thrown while building a table: the text is the kernel's ti->error where it has one.
class TargetError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A refusal that is the kernel's errno (a message's -EEXIST, -ENODATA, ...):
// the control socket answers with that errno, the text is strerror's.
class TargetErrno : public TargetError {
 public:
  explicit TargetErrno(int e) : TargetError(std::generic_category().message(e)), errno_(e) {}
  int error_number() const { return errno_; }

 private:
  int errno_;
};

}  // namespace dmnbd
