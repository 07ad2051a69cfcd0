// Every rule a transmission request must meet before it reaches the device
// (as nbdkit's validate_request), in one place. Ranges against the export's
// size are the device's to check (it knows ENOSPC from EINVAL), except for
// CACHE, which never reaches it.
#pragma once
#include <cstdint>
#include <optional>

#include "protocol.hpp"

namespace dmnbd::nbd {

struct RequestError {
  uint32_t error;  // NBD_E*
  const char* message;
};

std::optional<RequestError> validate_request(const Request& req, bool structured_replies,
                                             bool base_allocation, uint64_t export_size);

}  // namespace dmnbd::nbd
