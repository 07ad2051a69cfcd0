// The NBD wire protocol as pure data: constants, big-endian encoding and the
// parsing of option payloads. No sockets here, so it is easy to test and fuzz.
#pragma once
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dmnbd/status.hpp"

namespace dmnbd::nbd {

inline constexpr uint64_t kNbdMagic = 0x4e42444d41474943;  // "NBDMAGIC"
inline constexpr uint64_t kIHaveOpt = 0x49484156454F5054;  // "IHAVEOPT"
inline constexpr uint64_t kOptReplyMagic = 0x0003e889045565a9;
inline constexpr uint32_t kRequestMagic = 0x25609513;
inline constexpr uint32_t kSimpleReplyMagic = 0x67446698;
inline constexpr uint32_t kStructuredReplyMagic = 0x668e33ef;

inline constexpr uint16_t kFlagFixedNewstyle = 1 << 0;
inline constexpr uint16_t kFlagNoZeroes = 1 << 1;
inline constexpr uint32_t kClientFlagFixedNewstyle = 1 << 0;
inline constexpr uint32_t kClientFlagNoZeroes = 1 << 1;

enum Option : uint32_t {
  kOptExportName = 1,
  kOptAbort = 2,
  kOptList = 3,
  kOptStartTls = 5,
  kOptInfo = 6,
  kOptGo = 7,
  kOptStructuredReply = 8,
  kOptListMetaContext = 9,
  kOptSetMetaContext = 10,
};

enum OptionReply : uint32_t {
  kRepAck = 1,
  kRepServer = 2,
  kRepInfo = 3,
  kRepMetaContext = 4,
  kRepErrUnsup = 0x80000001,
  kRepErrPolicy = 0x80000002,
  kRepErrInvalid = 0x80000003,
  kRepErrPlatform = 0x80000004,
  kRepErrTlsReqd = 0x80000005,
  kRepErrUnknown = 0x80000006,
  kRepErrShutdown = 0x80000007,
  kRepErrBlockSizeReqd = 0x80000008,
  kRepErrTooBig = 0x80000009,
};

enum InfoType : uint16_t {
  kInfoExport = 0,
  kInfoName = 1,
  kInfoDescription = 2,
  kInfoBlockSize = 3
};

enum TransmissionFlag : uint16_t {
  kHasFlags = 1 << 0,
  kReadOnly = 1 << 1,
  kSendFlush = 1 << 2,
  kSendFua = 1 << 3,
  kRotational = 1 << 4,
  kSendTrim = 1 << 5,
  kSendWriteZeroes = 1 << 6,
  kSendDf = 1 << 7,
  kCanMultiConn = 1 << 8,
  kSendCache = 1 << 10,
  kSendFastZero = 1 << 11,
};

enum Command : uint16_t {
  kCmdRead = 0,
  kCmdWrite = 1,
  kCmdDisc = 2,
  kCmdFlush = 3,
  kCmdTrim = 4,
  kCmdCache = 5,
  kCmdWriteZeroes = 6,
  kCmdBlockStatus = 7,
};

enum CommandFlag : uint16_t {
  kCmdFlagFua = 1 << 0,
  kCmdFlagNoHole = 1 << 1,
  kCmdFlagDf = 1 << 2,
  kCmdFlagReqOne = 1 << 3,
  kCmdFlagFastZero = 1 << 4,
};

enum ReplyType : uint16_t {
  kReplyNone = 0,
  kReplyOffsetData = 1,
  kReplyOffsetHole = 2,
  kReplyBlockStatus = 5,
  kReplyError = 0x8001,
};
inline constexpr uint16_t kReplyFlagDone = 1;

// Errors on the wire (the spec's values, which happen to match Linux errno).
enum WireError : uint32_t {
  kEPERM = 1,
  kEIO = 5,
  kENOMEM = 12,
  kEINVAL = 22,
  kENOSPC = 28,
  kEOVERFLOW = 75,
  kENOTSUP = 95,
  kESHUTDOWN = 108,
};

// The single place where an I/O status becomes an NBD error.
uint32_t wire_error(Status status);

inline constexpr uint32_t kStateHole = 1;
inline constexpr uint32_t kStateZero = 2;
inline constexpr const char* kBaseAllocation = "base:allocation";
inline constexpr uint32_t kBaseAllocationId = 1;  // our id for it after SET_META_CONTEXT

inline constexpr uint32_t kMinBlockSize = 512;
inline constexpr uint32_t kPreferredBlockSize = 4096;
inline constexpr uint32_t kMaxPayload = 32u << 20;

inline constexpr size_t kRequestHeaderSize = 28;

// Appends big-endian values to a byte buffer (a vector, or a small_vector for
// reply headers that should not touch the heap).
template <typename Buffer>
class BasicEncoder {
 public:
  explicit BasicEncoder(Buffer& out) : out_(out) {}
  BasicEncoder& u16(uint16_t v) { return put(__builtin_bswap16(v)); }
  BasicEncoder& u32(uint32_t v) { return put(__builtin_bswap32(v)); }
  BasicEncoder& u64(uint64_t v) { return put(__builtin_bswap64(v)); }
  BasicEncoder& bytes(std::string_view s) {
    out_.insert(out_.end(), s.begin(), s.end());
    return *this;
  }
  BasicEncoder& zeroes(size_t n) {
    out_.insert(out_.end(), n, 0);
    return *this;
  }

 private:
  template <typename T>
  BasicEncoder& put(T big_endian) {
    const size_t at = out_.size();
    out_.resize(at + sizeof(T));
    std::memcpy(out_.data() + at, &big_endian, sizeof(T));
    return *this;
  }
  Buffer& out_;
};
using Encoder = BasicEncoder<std::vector<uint8_t>>;

// Reads big-endian values; any overrun sets failed() instead of throwing.
class Decoder {
 public:
  explicit Decoder(std::span<const uint8_t> in) : in_(in) {}
  uint16_t u16();
  uint32_t u32();
  uint64_t u64();
  std::string string(size_t n);
  size_t remaining() const { return failed_ ? 0 : in_.size() - pos_; }
  bool failed() const { return failed_; }

 private:
  bool take(size_t n);
  std::span<const uint8_t> in_;
  size_t pos_ = 0;
  bool failed_ = false;
};

struct Request {
  uint16_t flags = 0;
  uint16_t type = 0;
  uint64_t cookie = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
};

// nullopt when the magic is wrong: the stream cannot be resynchronised.
std::optional<Request> decode_request(std::span<const uint8_t, kRequestHeaderSize> header);
void encode_request(std::vector<uint8_t>& out, const Request& r);  // for tests and tools

// INFO / GO payload: export name and the info types asked for.
struct InfoRequest {
  std::string name;
  std::vector<uint16_t> info_types;
};
std::optional<InfoRequest> parse_info_request(std::span<const uint8_t> payload);

// LIST_META_CONTEXT / SET_META_CONTEXT payload: export name and queries.
struct MetaContextRequest {
  std::string name;
  std::vector<std::string> queries;
};
std::optional<MetaContextRequest> parse_meta_context_request(std::span<const uint8_t> payload);

void encode_option_reply(std::vector<uint8_t>& out, uint32_t option, uint32_t type,
                         std::string_view payload = {});
template <typename Buffer>
void encode_simple_reply(Buffer& out, uint32_t error, uint64_t cookie) {
  BasicEncoder(out).u32(kSimpleReplyMagic).u32(error).u64(cookie);
}

template <typename Buffer>
void encode_chunk_header(Buffer& out, uint16_t flags, uint16_t type, uint64_t cookie,
                         uint32_t length) {
  BasicEncoder(out).u32(kStructuredReplyMagic).u16(flags).u16(type).u64(cookie).u32(length);
}

// A structured ERROR chunk (always the last one) carrying `message`.
template <typename Buffer>
void encode_error_chunk(Buffer& out, uint64_t cookie, uint32_t error, std::string_view message) {
  message = message.substr(0, 4096);  // the spec's limit for strings
  encode_chunk_header(out, kReplyFlagDone, kReplyError, cookie,
                      static_cast<uint32_t>(6 + message.size()));
  BasicEncoder(out).u32(error).u16(static_cast<uint16_t>(message.size())).bytes(message);
}

// Which command flags each command accepts; anything else is EINVAL.
uint16_t allowed_flags(uint16_t command, bool structured_replies);
const char* command_name(uint16_t command);

}  // namespace dmnbd::nbd
