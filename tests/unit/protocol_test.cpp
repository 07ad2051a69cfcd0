#include "nbd/protocol.hpp"

#include <gtest/gtest.h>

namespace dmnbd::nbd {
namespace {

std::span<const uint8_t, kRequestHeaderSize> header_of(const std::vector<uint8_t>& v) {
  return std::span<const uint8_t, kRequestHeaderSize>(v.data(), kRequestHeaderSize);
}

TEST(Protocol, RequestRoundTrip) {
  std::vector<uint8_t> bytes;
  encode_request(bytes, {.flags = kCmdFlagFua,
                         .type = kCmdWrite,
                         .cookie = 0x1122334455667788,
                         .offset = 1 << 20,
                         .length = 4096});
  ASSERT_EQ(bytes.size(), kRequestHeaderSize);
  EXPECT_EQ(bytes[0], 0x25);  // big-endian magic
  auto req = decode_request(header_of(bytes));
  ASSERT_TRUE(req);
  EXPECT_EQ(req->flags, kCmdFlagFua);
  EXPECT_EQ(req->type, kCmdWrite);
  EXPECT_EQ(req->cookie, 0x1122334455667788u);
  EXPECT_EQ(req->offset, 1u << 20);
  EXPECT_EQ(req->length, 4096u);
}

TEST(Protocol, BadRequestMagicIsRejected) {
  std::vector<uint8_t> bytes;
  encode_request(bytes, {.type = kCmdRead, .length = 512});
  bytes[3] ^= 1;
  EXPECT_FALSE(decode_request(header_of(bytes)));
}

TEST(Protocol, InfoRequestParsing) {
  std::vector<uint8_t> p;
  Encoder(p).u32(4).bytes("disk").u16(2).u16(kInfoName).u16(kInfoBlockSize);
  auto req = parse_info_request(p);
  ASSERT_TRUE(req);
  EXPECT_EQ(req->name, "disk");
  EXPECT_EQ(req->info_types, (std::vector<uint16_t>{kInfoName, kInfoBlockSize}));

  p.push_back(0);  // one byte too many: the length no longer matches
  EXPECT_FALSE(parse_info_request(p));
  std::vector<uint8_t> overrun;
  Encoder(overrun).u32(100).bytes("x");
  EXPECT_FALSE(parse_info_request(overrun));
}

TEST(Protocol, MetaContextRequestParsing) {
  std::vector<uint8_t> p;
  Encoder(p).u32(0).u32(2).u32(15).bytes("base:allocation").u32(5).bytes("base:");
  auto req = parse_meta_context_request(p);
  ASSERT_TRUE(req);
  EXPECT_EQ(req->name, "");
  EXPECT_EQ(req->queries, (std::vector<std::string>{"base:allocation", "base:"}));

  std::vector<uint8_t> bad;
  Encoder(bad).u32(0).u32(1).u32(50).bytes("base:allocation");  // query overruns the payload
  EXPECT_FALSE(parse_meta_context_request(bad));
}

TEST(Protocol, ReplyEncodings) {
  std::vector<uint8_t> out;
  encode_simple_reply(out, kEIO, 7);
  EXPECT_EQ(out,
            (std::vector<uint8_t>{0x67, 0x44, 0x66, 0x98, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 7}));
  out.clear();
  encode_error_chunk(out, 9, kEINVAL, "bad");
  ASSERT_EQ(out.size(), 20u + 6 + 3);
  Decoder d(out);
  EXPECT_EQ(d.u32(), kStructuredReplyMagic);
  EXPECT_EQ(d.u16(), kReplyFlagDone);
  EXPECT_EQ(d.u16(), kReplyError);
  EXPECT_EQ(d.u64(), 9u);
  EXPECT_EQ(d.u32(), 9u);
  EXPECT_EQ(d.u32(), kEINVAL);
  EXPECT_EQ(d.u16(), 3u);
  EXPECT_EQ(d.string(3), "bad");
  out.clear();
  encode_option_reply(out, kOptGo, kRepErrUnknown, "no");
  Decoder o(out);
  EXPECT_EQ(o.u64(), kOptReplyMagic);
  EXPECT_EQ(o.u32(), static_cast<uint32_t>(kOptGo));
  EXPECT_EQ(o.u32(), static_cast<uint32_t>(kRepErrUnknown));
  EXPECT_EQ(o.u32(), 2u);
}

TEST(Protocol, ErrnoMapping) {
  EXPECT_EQ(wire_error({}), 0u);
  EXPECT_EQ(wire_error(errno_status(EPERM)), kEPERM);
  EXPECT_EQ(wire_error(errno_status(EROFS)), kEPERM);
  EXPECT_EQ(wire_error(errno_status(EDQUOT)), kENOSPC);
  EXPECT_EQ(wire_error(errno_status(EFBIG)), kENOSPC);
  EXPECT_EQ(wire_error(errno_status(ENOTSUP)), kENOTSUP);
  EXPECT_EQ(wire_error(errno_status(EBADF)), kEIO);  // anything unnamed is an I/O error
}

TEST(Protocol, AllowedFlags) {
  EXPECT_EQ(allowed_flags(kCmdRead, false), kCmdFlagFua);
  EXPECT_EQ(allowed_flags(kCmdRead, true), kCmdFlagFua | kCmdFlagDf);
  EXPECT_TRUE(allowed_flags(kCmdWriteZeroes, false) & kCmdFlagFastZero);
  EXPECT_FALSE(allowed_flags(kCmdWrite, true) & kCmdFlagNoHole);
  EXPECT_TRUE(allowed_flags(kCmdBlockStatus, true) & kCmdFlagReqOne);
}

}  // namespace
}  // namespace dmnbd::nbd
