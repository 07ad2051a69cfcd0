#include "dmnbd/arg_set.hpp"

#include <stdexcept>

namespace dmnbd {

const std::string* ArgSet::shift() {
  return next_ < args_.size() ? &args_[next_++] : nullptr;
}

uint32_t ArgSet::read(uint32_t min, uint32_t max, const char* error) {
  const std::string* arg = shift();
  uint32_t value = 0;
  if (!arg || !scan_u32(*arg, value) || value < min || value > max) throw TargetError(error);
  return value;
}

uint32_t ArgSet::read_group(uint32_t min, uint32_t max, const char* error) {
  const uint32_t count = read(min, max, error);
  if (count > left()) throw TargetError(error);
  return count;
}

void ArgSet::consume(size_t n) {
  if (n > left())
    throw std::out_of_range("ArgSet::consume(" + std::to_string(n) + ") with " +
                            std::to_string(left()) + " left");
  next_ += n;
}

}  // namespace dmnbd
