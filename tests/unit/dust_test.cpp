#include <gtest/gtest.h>

#include "dm/table.hpp"
#include "test_support.hpp"

namespace dmnbd {
namespace {

using test::build_error;
using test::run_sync;

// 4 KiB blocks over a.img from sector 8: block b of a.img is target sectors
// 8b - 8 .. 8b - 1 (the kernel numbers blocks on the device, offset included).
class DustTest : public ::testing::Test {
 protected:
  void SetUp() override {
    test::make_patterned_file(dir_ / "a.img", 1 << 20);
    table_ = Table::build("0 1024 dust a.img 8 4096\n", resolver_, false);
  }
  Target& t() { return *table_->entries()[0].target; }
  // The message's answer, or "error: <reason>".
  std::string msg(std::vector<std::string> words) {
    try {
      return run_sync(t().message(std::move(words)));
    } catch (const TargetError& e) {
      return std::string("error: ") + e.what();
    }
  }
  Status read(uint64_t sector) {
    std::vector<std::byte> buf(512);
    return run_sync(t().map({.op = BioOp::read, .sector = sector, .sectors = 1, .data = buf}));
  }
  Status write(uint64_t sector, std::byte value = std::byte{0x33}) {
    std::vector<std::byte> buf(512, value);
    return run_sync(t().map({.op = BioOp::write, .sector = sector, .sectors = 1, .data = buf}));
  }
  test::TempDir dir_;
  test::DirResolver resolver_{dir_.path()};
  std::shared_ptr<Table> table_;
};

TEST_F(DustTest, TableStatusAndLimits) {
  EXPECT_EQ(table_->table_text(), "0 1024 dust a.img 8 4096\n");
  EXPECT_EQ(table_->status_text(), "0 1024 dust a.img bypass verbose\n");
  EXPECT_EQ(t().max_io_len(), 8u);
  EXPECT_FALSE(run_sync(t().flush()));
}

TEST_F(DustTest, BadBlocksFailReadsOnlyWhileEnabled) {
  EXPECT_EQ(msg({"addbadblock", "2"}), "");
  EXPECT_FALSE(read(8));  // bypass: nothing fails yet
  EXPECT_EQ(msg({"enable"}), "");
  EXPECT_EQ(table_->status_text(), "0 1024 dust a.img fail_read_on_bad_block verbose\n");
  EXPECT_FALSE(read(7));
  EXPECT_EQ(read(8), errno_status(EIO));
  EXPECT_EQ(read(15), errno_status(EIO));
  EXPECT_FALSE(read(16));
  EXPECT_EQ(msg({"disable"}), "");
  EXPECT_FALSE(read(8));
  EXPECT_EQ(msg({"countbadblocks"}), "countbadblocks: 1 badblock(s) found");
}

TEST_F(DustTest, AWriteRemapsTheBlock) {
  ASSERT_EQ(msg({"addbadblock", "2"}), "");
  ASSERT_EQ(msg({"enable"}), "");
  EXPECT_EQ(read(9), errno_status(EIO));
  EXPECT_FALSE(write(9));
  EXPECT_FALSE(read(9));
  EXPECT_FALSE(read(8));  // the whole block is good again
  EXPECT_EQ(msg({"queryblock", "2"}), "dust_query_block: block 2 not found in badblocklist");
  EXPECT_EQ(test::read_file_bytes(dir_ / "a.img")[17 * 512], std::byte{0x33});
  // Discards and write-zeroes are writes too.
  ASSERT_EQ(msg({"addbadblock", "6"}), "");
  EXPECT_FALSE(run_sync(t().map({.op = BioOp::discard, .sector = 40, .sectors = 8})));
  EXPECT_FALSE(read(40));
  // While disabled, writes leave the list alone.
  ASSERT_EQ(msg({"disable"}), "");
  ASSERT_EQ(msg({"addbadblock", "3"}), "");
  EXPECT_FALSE(write(16));
  EXPECT_EQ(msg({"listbadblocks"}), "3\n");
}

TEST_F(DustTest, WriteFailCount) {
  ASSERT_EQ(msg({"addbadblock", "5", "2"}), "");
  ASSERT_EQ(msg({"enable"}), "");
  EXPECT_EQ(write(32), errno_status(EIO));
  EXPECT_EQ(write(33), errno_status(EIO));
  EXPECT_EQ(read(34), errno_status(EIO));
  EXPECT_FALSE(write(34));
  EXPECT_FALSE(read(34));
  EXPECT_EQ(msg({"countbadblocks"}), "countbadblocks: 0 badblock(s) found");
}

TEST_F(DustTest, EveryMessageAndItsAnswer) {
  EXPECT_EQ(msg({"listbadblocks"}), "No blocks in badblocklist");
  EXPECT_EQ(msg({"addbadblock", "60"}), "");
  EXPECT_EQ(msg({"ADDBADBLOCK", "7"}), "");  // the kernel compares without case
  EXPECT_EQ(msg({"addbadblock", "256", "255"}), "");
  EXPECT_EQ(msg({"listbadblocks"}), "7\n60\n256\n");
  EXPECT_EQ(msg({"queryblock", "60"}), "dust_query_block: block 60 found in badblocklist");
  EXPECT_EQ(msg({"queryblock", "61"}), "dust_query_block: block 61 not found in badblocklist");
  EXPECT_EQ(msg({"countbadblocks"}), "countbadblocks: 3 badblock(s) found");
  EXPECT_EQ(msg({"removebadblock", "60"}), "");
  EXPECT_EQ(msg({"countbadblocks"}), "countbadblocks: 2 badblock(s) found");
  EXPECT_EQ(msg({"clearbadblocks"}), "dust_clear_badblocks: badblocks cleared");
  EXPECT_EQ(msg({"clearbadblocks"}), "dust_clear_badblocks: no badblocks found");
  EXPECT_EQ(msg({"quiet"}), "");
  EXPECT_EQ(table_->status_text(), "0 1024 dust a.img bypass quiet\n");
  EXPECT_EQ(msg({"quiet"}), "");
  EXPECT_EQ(table_->status_text(), "0 1024 dust a.img bypass verbose\n");
}

TEST_F(DustTest, MessageErrors) {
  EXPECT_EQ(msg({"addbadblock"}), "error: addbadblock requires an additional argument");
  EXPECT_EQ(msg({"removebadblock"}), "error: removebadblock requires an additional argument");
  EXPECT_EQ(msg({"queryblock"}), "error: queryblock requires an additional argument");
  EXPECT_EQ(msg({"frobnicate"}), "error: unrecognized message 'frobnicate' received");
  EXPECT_EQ(msg({"frobnicate", "1"}), "error: unrecognized message 'frobnicate' received");
  EXPECT_EQ(msg({"queryblock", "1", "1"}), "error: unrecognized message 'queryblock' received");
  EXPECT_EQ(msg({"addbadblock", "x"}), "error: Invalid argument");
  EXPECT_EQ(msg({"addbadblock", "1", "x"}), "error: Invalid argument");
  EXPECT_EQ(msg({"addbadblock", "1", "256"}), "error: selected write fail count out of range");
  // a.img has 2048 sectors = 256 blocks; the kernel accepts block 256, not 257.
  EXPECT_EQ(msg({"addbadblock", "257"}), "error: selected block value out of range");
  EXPECT_EQ(msg({"a", "b", "c", "d"}), "error: invalid number of arguments '4'");
  EXPECT_EQ(msg({"addbadblock", "4"}), "");
  EXPECT_EQ(msg({"addbadblock", "4"}), "error: dust_add_block: block 4 already in badblocklist");
  EXPECT_EQ(msg({"removebadblock", "9"}),
            "error: dust_remove_block: block 9 not found in badblocklist");
  // Quiet mode: the kernel logs nothing, the message still fails.
  EXPECT_EQ(msg({"quiet"}), "");
  EXPECT_EQ(msg({"addbadblock", "4"}), "error: Invalid argument");
  EXPECT_EQ(msg({"removebadblock", "9"}), "error: Invalid argument");
}

TEST_F(DustTest, ConstructorErrors) {
  auto err = [&](const std::string& args, uint64_t len = 1024) {
    return build_error("0 " + std::to_string(len) + " dust " + args + "\n", resolver_);
  };
  EXPECT_EQ(err("a.img 0"), "dust: Invalid argument count");
  EXPECT_EQ(err("a.img 0 512 1"), "dust: Invalid argument count");
  EXPECT_EQ(err("a.img 0 0"), "dust: Invalid block size parameter");
  EXPECT_EQ(err("a.img 0 4k"), "dust: Invalid block size parameter");
  EXPECT_EQ(err("a.img 0 256"), "dust: Block size must be at least 512");
  EXPECT_EQ(err("a.img 0 1536"), "dust: Block size must be a power of 2");
  EXPECT_EQ(err("a.img 0 8192", 8), "dust: Block size is too large");
  EXPECT_EQ(err("a.img 0 2147483648"), "dust: Block size is too large");
  EXPECT_EQ(err("a.img x 512"), "dust: Invalid device offset sector");
  EXPECT_EQ(err("nope.img 0 512").rfind("dust: Device lookup failed (", 0), 0u);
  EXPECT_EQ(err("a.img 1025 512"),
            "dust: a.img too small for target: start=1025, len=1024, dev_size=2048");
  EXPECT_EQ(err("a.img 0 4096", 8), "(built)");
}

}  // namespace
}  // namespace dmnbd
