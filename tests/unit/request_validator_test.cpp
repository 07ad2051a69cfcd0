#include "nbd/request_validator.hpp"

#include <gtest/gtest.h>

#include <string>

namespace dmnbd::nbd {
namespace {

constexpr uint64_t kSize = 1 << 20;

// The message a request is refused with, or "" when it may go to the device.
std::string refusal(Request req, bool structured = true, bool base_allocation = true) {
  auto bad = validate_request(req, structured, base_allocation, kSize);
  if (!bad) return "";
  EXPECT_EQ(bad->error, kEINVAL);
  return bad->message;
}

Request req(uint16_t type, uint64_t offset, uint32_t length, uint16_t flags = 0) {
  return Request{.flags = flags, .type = type, .cookie = 1, .offset = offset, .length = length};
}

TEST(RequestValidator, AcceptsWellFormedRequests) {
  EXPECT_EQ(refusal(req(kCmdRead, 0, 4096)), "");
  EXPECT_EQ(refusal(req(kCmdWrite, 0, 4096, kCmdFlagFua)), "");
  EXPECT_EQ(refusal(req(kCmdFlush, 0, 0)), "");
  EXPECT_EQ(refusal(req(kCmdCache, kSize - 512, 512)), "");
  EXPECT_EQ(refusal(req(kCmdBlockStatus, 0, 4096, kCmdFlagReqOne)), "");
  // Past the end is the device's to refuse (ENOSPC for writes, EINVAL for reads).
  EXPECT_EQ(refusal(req(kCmdWrite, kSize, 512)), "");
}

TEST(RequestValidator, RefusesWhatTheSpecForbids) {
  EXPECT_EQ(refusal(req(99, 0, 512)), "unknown command");
  EXPECT_EQ(refusal(req(kCmdRead, 0, 512, kCmdFlagNoHole)), "flag not valid for this command");
  EXPECT_EQ(refusal(req(kCmdRead, 0, 512, kCmdFlagDf), false), "flag not valid for this command");
  EXPECT_EQ(refusal(req(kCmdFlush, 0, 512)), "FLUSH must have offset and length 0");
  EXPECT_EQ(refusal(req(kCmdTrim, 0, 0)), "zero-length request");
  EXPECT_EQ(refusal(req(kCmdRead, 0, kMaxPayload + 512)),
            "read larger than the 32 MiB maximum payload");
  EXPECT_EQ(refusal(req(kCmdCache, kSize, 512)), "CACHE beyond the end of the export");
  EXPECT_EQ(refusal(req(kCmdCache, UINT64_MAX - 100, 512)), "CACHE beyond the end of the export");
  EXPECT_EQ(refusal(req(kCmdBlockStatus, 0, 512), true, false), "no metadata context was selected");
}

}  // namespace
}  // namespace dmnbd::nbd
