#include "protocol.hpp"

namespace dmnbd::nbd {

uint32_t wire_error(Status status) {
  if (!status) return 0;
  if (status.category() != std::generic_category()) return kEIO;
  switch (status.value()) {
    case EPERM:
    case EROFS:
      return kEPERM;
    case ENOMEM:
      return kENOMEM;
    case EINVAL:
      return kEINVAL;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      return kENOSPC;
    case EOVERFLOW:
      return kEOVERFLOW;
    case ENOTSUP:
      return kENOTSUP;
    case ESHUTDOWN:
      return kESHUTDOWN;
    default:
      return kEIO;
  }
}

bool Decoder::take(size_t n) {
  if (failed_ || in_.size() - pos_ < n) {
    failed_ = true;
    return false;
  }
  return true;
}
uint16_t Decoder::u16() {
  if (!take(2)) return 0;
  uint16_t v = static_cast<uint16_t>(in_[pos_] << 8 | in_[pos_ + 1]);
  pos_ += 2;
  return v;
}
uint32_t Decoder::u32() {
  uint32_t hi = u16();
  return hi << 16 | u16();
}
uint64_t Decoder::u64() {
  uint64_t hi = u32();
  return hi << 32 | u32();
}
std::string Decoder::string(size_t n) {
  if (!take(n)) return {};
  std::string s(reinterpret_cast<const char*>(in_.data() + pos_), n);
  pos_ += n;
  return s;
}

std::optional<Request> decode_request(std::span<const uint8_t, kRequestHeaderSize> header) {
  Decoder d(header);
  if (d.u32() != kRequestMagic) return std::nullopt;
  Request r;
  r.flags = d.u16();
  r.type = d.u16();
  r.cookie = d.u64();
  r.offset = d.u64();
  r.length = d.u32();
  return r;
}

void encode_request(std::vector<uint8_t>& out, const Request& r) {
  Encoder(out)
      .u32(kRequestMagic)
      .u16(r.flags)
      .u16(r.type)
      .u64(r.cookie)
      .u64(r.offset)
      .u32(r.length);
}

// Strings are limited to 4096 bytes by the spec.
constexpr uint32_t kMaxString = 4096;

std::optional<InfoRequest> parse_info_request(std::span<const uint8_t> payload) {
  Decoder d(payload);
  InfoRequest req;
  uint32_t name_len = d.u32();
  if (d.failed() || name_len > kMaxString || name_len > d.remaining()) return std::nullopt;
  req.name = d.string(name_len);
  uint16_t count = d.u16();
  if (d.failed() || d.remaining() != 2u * count) return std::nullopt;
  for (uint16_t i = 0; i < count; ++i) req.info_types.push_back(d.u16());
  return req;
}

std::optional<MetaContextRequest> parse_meta_context_request(std::span<const uint8_t> payload) {
  Decoder d(payload);
  MetaContextRequest req;
  uint32_t name_len = d.u32();
  if (d.failed() || name_len > kMaxString || name_len > d.remaining()) return std::nullopt;
  req.name = d.string(name_len);
  uint32_t count = d.u32();
  if (d.failed()) return std::nullopt;
  for (uint32_t i = 0; i < count; ++i) {
    uint32_t len = d.u32();
    if (d.failed() || len > kMaxString || len > d.remaining()) return std::nullopt;
    req.queries.push_back(d.string(len));
  }
  if (d.remaining() != 0) return std::nullopt;
  return req;
}

void encode_option_reply(std::vector<uint8_t>& out, uint32_t option, uint32_t type,
                         std::string_view payload) {
  Encoder(out)
      .u64(kOptReplyMagic)
      .u32(option)
      .u32(type)
      .u32(static_cast<uint32_t>(payload.size()))
      .bytes(payload);
}

uint16_t allowed_flags(uint16_t command, bool structured_replies) {
  // FUA is accepted on every command: clients set it on non-writes too.
  switch (command) {
    case kCmdRead:
      return kCmdFlagFua | (structured_replies ? kCmdFlagDf : 0);
    case kCmdWriteZeroes:
      return kCmdFlagFua | kCmdFlagNoHole | kCmdFlagFastZero;
    case kCmdBlockStatus:
      return kCmdFlagFua | kCmdFlagReqOne;
    default:
      return kCmdFlagFua;
  }
}

const char* command_name(uint16_t command) {
  switch (command) {
    case kCmdRead:
      return "READ";
    case kCmdWrite:
      return "WRITE";
    case kCmdDisc:
      return "DISC";
    case kCmdFlush:
      return "FLUSH";
    case kCmdTrim:
      return "TRIM";
    case kCmdCache:
      return "CACHE";
    case kCmdWriteZeroes:
      return "WRITE_ZEROES";
    case kCmdBlockStatus:
      return "BLOCK_STATUS";
    default:
      return "unknown";
  }
}

}  // namespace dmnbd::nbd
