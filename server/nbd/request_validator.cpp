#include "request_validator.hpp"

namespace dmnbd::nbd {

std::optional<RequestError> validate_request(const Request& req, bool structured_replies,
                                             bool base_allocation, uint64_t export_size) {
  if (req.type > kCmdBlockStatus) return RequestError{kEINVAL, "unknown command"};
  if (req.flags & ~allowed_flags(req.type, structured_replies))
    return RequestError{kEINVAL, "flag not valid for this command"};
  if (req.type == kCmdFlush) {
    if (req.offset || req.length)
      return RequestError{kEINVAL, "FLUSH must have offset and length 0"};
    return std::nullopt;
  }
  if (req.length == 0) return RequestError{kEINVAL, "zero-length request"};
  switch (req.type) {
    case kCmdRead:
      if (req.length > kMaxPayload)
        return RequestError{kEINVAL, "read larger than the 32 MiB maximum payload"};
      break;
    case kCmdCache:
      if (req.offset + req.length < req.offset || req.offset + req.length > export_size)
        return RequestError{kEINVAL, "CACHE beyond the end of the export"};
      break;
    case kCmdBlockStatus:
      if (!base_allocation) return RequestError{kEINVAL, "no metadata context was selected"};
      break;
  }
  return std::nullopt;
}

}  // namespace dmnbd::nbd
