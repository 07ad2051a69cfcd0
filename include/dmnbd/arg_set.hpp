// The kernel's struct dm_arg_set: a target's arguments consumed front to back,
// with dm_read_arg()'s range checks and dm_read_arg_group()'s counted groups
// ("<#features> <feature>..."), so every target parses them the same way and
// fails with the same ti->error strings.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "dmnbd/target.hpp"

namespace dmnbd {

class ArgSet {
 public:
  explicit ArgSet(TargetArgs args) : args_(args) {}

  size_t left() const { return args_.size() - next_; }
  // dm_shift_arg(): the next argument, or nullptr when none is left.
  const std::string* shift();
  // The arguments not consumed yet.
  TargetArgs rest() const { return args_.subspan(next_); }

  // dm_read_arg(): the next argument as sscanf("%u%c") reads it, in [min, max];
  // anything else (none left, not a number) throws TargetError(error).
  uint32_t read(uint32_t min, uint32_t max, const char* error);
  // dm_read_arg_group(): read(), and the count must not exceed the arguments
  // left after it, so a group can never run past the end.
  uint32_t read_group(uint32_t min, uint32_t max, const char* error);
  // dm_consume_args(): skips n arguments. More than are left is a bug in the
  // caller (the kernel BUG()s): std::out_of_range.
  void consume(size_t n);

 private:
  TargetArgs args_;
  size_t next_ = 0;
};

}  // namespace dmnbd
