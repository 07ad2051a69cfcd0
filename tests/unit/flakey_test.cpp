#include <gtest/gtest.h>

#include <thread>

#include "dm/table.hpp"
#include "test_support.hpp"

namespace dmnbd {
namespace {

using test::build_error;
using test::run_sync;

// "<up> <down>" = "0 1" is down all the time, "1 0" up all the time.
class FlakeyTest : public ::testing::Test {
 protected:
  void SetUp() override { test::make_patterned_file(dir_ / "a.img", 1 << 20); }
  std::shared_ptr<Table> build(const std::string& args) {
    return Table::build("0 1024 flakey a.img 8 " + args + "\n", resolver_, false);
  }
  static Target& target(const std::shared_ptr<Table>& t) { return *t->entries()[0].target; }
  Status read(Target& t, std::vector<std::byte>& buf, uint64_t sector = 0) {
    return run_sync(t.map({.op = BioOp::read,
                           .sector = sector,
                           .sectors = buf.size() / 512,
                           .data = std::span(buf)}));
  }
  Status write(Target& t, std::vector<std::byte>& buf, uint64_t sector = 0, uint32_t flags = 0) {
    return run_sync(t.map({.op = BioOp::write,
                           .sector = sector,
                           .sectors = buf.size() / 512,
                           .data = std::span(buf),
                           .flags = flags}));
  }
  uint8_t file_byte(uint64_t offset) {
    return static_cast<uint8_t>(test::read_file_bytes(dir_ / "a.img")[offset]);
  }
  test::TempDir dir_;
  test::DirResolver resolver_{dir_.path()};
};

TEST_F(FlakeyTest, UpPassesEverythingThrough) {
  auto table = build("1 0");
  Target& t = target(table);
  std::vector<std::byte> buf(1024);
  ASSERT_FALSE(read(t, buf, 2));
  EXPECT_EQ(static_cast<uint8_t>(buf[0]), test::pattern_byte(10 * 512));
  std::fill(buf.begin(), buf.end(), std::byte{0xab});
  ASSERT_FALSE(write(t, buf, 2));
  ASSERT_FALSE(run_sync(t.flush()));
  EXPECT_EQ(file_byte(10 * 512), 0xab);
  EXPECT_EQ(table->table_text(), "0 1024 flakey a.img 8 1 0 2 error_reads error_writes\n");
  EXPECT_EQ(table->status_text(), "0 1024 flakey\n");
}

TEST_F(FlakeyTest, DownWithoutFeaturesFailsEverything) {
  auto table = build("0 1");
  Target& t = target(table);
  std::vector<std::byte> buf(512, std::byte{1});
  EXPECT_EQ(read(t, buf), errno_status(EIO));
  EXPECT_EQ(write(t, buf), errno_status(EIO));
  EXPECT_EQ(run_sync(t.flush()), errno_status(EIO));
  EXPECT_EQ(run_sync(t.map({.op = BioOp::discard, .sector = 0, .sectors = 8})), errno_status(EIO));
  EXPECT_EQ(file_byte(8 * 512), test::pattern_byte(8 * 512));
  // A feature count of 0 is the same as none.
  EXPECT_EQ(build("0 1 0")->table_text(), "0 1024 flakey a.img 8 0 1 2 error_reads error_writes\n");
}

// dmnbd's suspend flushes through the targets (the kernel's does not flush):
// between presuspend and resume a down flakey lets flushes through.
TEST_F(FlakeyTest, SuspendFlushesPassWhileDown) {
  auto table = build("0 1");
  Target& t = target(table);
  EXPECT_EQ(run_sync(t.flush()), errno_status(EIO));
  run_sync(t.presuspend());
  EXPECT_FALSE(run_sync(t.flush()));
  run_sync(t.resume());
  EXPECT_EQ(run_sync(t.flush()), errno_status(EIO));
  // Through a device: a reload away from a down table works.
  auto dev = test::make_device("0 1024 flakey a.img 8 0 1 1 error_writes\n", resolver_);
  run_sync(dev->load(Table::build("0 1024 flakey a.img 8 1 0\n", resolver_, false)));
  EXPECT_FALSE(run_sync(dev->resume()));
}

TEST_F(FlakeyTest, DropWritesDropsWritesDiscardsAndFlushesButReads) {
  auto table = build("0 5 1 drop_writes");
  Target& t = target(table);
  std::vector<std::byte> buf(512, std::byte{0xcd});
  EXPECT_FALSE(write(t, buf, 1, kBioFua));
  EXPECT_FALSE(run_sync(t.map({.op = BioOp::discard, .sector = 0, .sectors = 8})));
  EXPECT_FALSE(run_sync(t.map({.op = BioOp::write_zeroes, .sector = 0, .sectors = 8})));
  EXPECT_FALSE(run_sync(t.flush()));
  EXPECT_EQ(file_byte(9 * 512), test::pattern_byte(9 * 512));
  EXPECT_EQ(file_byte(8 * 512), test::pattern_byte(8 * 512));
  ASSERT_FALSE(read(t, buf, 1));
  EXPECT_EQ(static_cast<uint8_t>(buf[0]), test::pattern_byte(9 * 512));
  EXPECT_EQ(table->table_text(), "0 1024 flakey a.img 8 0 5 1 drop_writes\n");
}

TEST_F(FlakeyTest, ErrorWritesFailsWritesButReads) {
  auto table = build("0 5 1 error_writes");
  Target& t = target(table);
  std::vector<std::byte> buf(512, std::byte{0xcd});
  EXPECT_EQ(write(t, buf), errno_status(EIO));
  EXPECT_EQ(run_sync(t.flush()), errno_status(EIO));
  EXPECT_FALSE(read(t, buf));
  EXPECT_EQ(static_cast<uint8_t>(buf[0]), test::pattern_byte(8 * 512));
  EXPECT_EQ(table->table_text(), "0 1024 flakey a.img 8 0 5 1 error_writes\n");
}

TEST_F(FlakeyTest, ErrorReadsFailsReadsButWrites) {
  auto table = build("0 5 1 error_reads");
  Target& t = target(table);
  std::vector<std::byte> buf(512, std::byte{0xcd});
  EXPECT_EQ(read(t, buf), errno_status(EIO));
  EXPECT_FALSE(write(t, buf));
  EXPECT_EQ(file_byte(8 * 512), 0xcd);
  EXPECT_EQ(table->table_text(), "0 1024 flakey a.img 8 0 5 1 error_reads\n");
}

TEST_F(FlakeyTest, CorruptBioByteOnReads) {
  auto table = build("0 5 5 corrupt_bio_byte 513 r 7 0");
  Target& t = target(table);
  std::vector<std::byte> buf(1024);
  ASSERT_FALSE(read(t, buf));
  EXPECT_EQ(static_cast<uint8_t>(buf[511]), test::pattern_byte(8 * 512));
  EXPECT_EQ(static_cast<uint8_t>(buf[512]), 7);  // byte 513, 1-based
  EXPECT_EQ(static_cast<uint8_t>(buf[513]), test::pattern_byte(9 * 512));
  EXPECT_EQ(file_byte(9 * 512), test::pattern_byte(9 * 512));  // only what was read changed
  // A bio shorter than the byte's position is left alone.
  std::vector<std::byte> small(512);
  ASSERT_FALSE(read(t, small));
  EXPECT_EQ(static_cast<uint8_t>(small[0]), test::pattern_byte(8 * 512));
  // Writes pass untouched.
  std::vector<std::byte> data(1024, std::byte{0x11});
  ASSERT_FALSE(write(t, data));
  EXPECT_EQ(file_byte(9 * 512), 0x11);
  EXPECT_EQ(table->table_text(), "0 1024 flakey a.img 8 0 5 5 corrupt_bio_byte 513 r 7 0\n");
}

TEST_F(FlakeyTest, CorruptBioByteOnWritesCorruptsACopy) {
  auto table = build("0 5 5 corrupt_bio_byte 3 w 9 0");
  Target& t = target(table);
  std::vector<std::byte> data(512, std::byte{0x11});
  ASSERT_FALSE(write(t, data));
  EXPECT_EQ(data[2], std::byte{0x11});  // the caller's buffer is not touched
  EXPECT_EQ(file_byte(8 * 512 + 1), 0x11);
  EXPECT_EQ(file_byte(8 * 512 + 2), 9);
  EXPECT_EQ(file_byte(8 * 512 + 3), 0x11);
  std::vector<std::byte> buf(512);
  ASSERT_FALSE(read(t, buf));  // reads pass untouched
  EXPECT_EQ(static_cast<uint8_t>(buf[2]), 9);
}

TEST_F(FlakeyTest, CorruptBioByteMatchesRequestFlags) {
  // 131072 = REQ_FUA: only FUA writes match.
  auto table = build("0 5 5 corrupt_bio_byte 1 w 9 131072");
  Target& t = target(table);
  std::vector<std::byte> data(512, std::byte{0x11});
  ASSERT_FALSE(write(t, data, 0));
  EXPECT_EQ(file_byte(8 * 512), 0x11);
  ASSERT_FALSE(write(t, data, 1, kBioFua));
  EXPECT_EQ(file_byte(9 * 512), 9);
  // 1 = REQ_OP_WRITE: reads never match it.
  auto reads = build("0 5 5 corrupt_bio_byte 1 r 9 1");
  std::vector<std::byte> buf(512);
  ASSERT_FALSE(read(target(reads), buf));
  EXPECT_EQ(static_cast<uint8_t>(buf[0]), 0x11);
}

TEST_F(FlakeyTest, RandomCorruption) {
  auto table = build("0 5 4 random_read_corrupt 1000000000 random_write_corrupt 1000000000");
  Target& t = target(table);
  EXPECT_EQ(table->table_text(),
            "0 1024 flakey a.img 8 0 5 4 random_read_corrupt 1000000000 random_write_corrupt "
            "1000000000\n");
  // Every read has at most one byte changed (none if the random value was the
  // old one); over many reads some change.
  size_t changed_reads = 0;
  for (int i = 0; i < 20; ++i) {
    std::vector<std::byte> buf(4096);
    ASSERT_FALSE(read(t, buf));
    size_t diff = 0;
    for (size_t j = 0; j < buf.size(); ++j)
      diff += static_cast<uint8_t>(buf[j]) != test::pattern_byte(8 * 512 + j);
    EXPECT_LE(diff, 1u);
    changed_reads += diff;
  }
  EXPECT_GE(changed_reads, 15u);
  std::vector<std::byte> data(4096, std::byte{0});
  size_t changed_writes = 0;
  for (int i = 0; i < 20; ++i) {
    ASSERT_FALSE(write(t, data, 16));
    auto file = test::read_file_bytes(dir_ / "a.img");
    size_t diff = 0;
    for (size_t j = 0; j < data.size(); ++j) diff += file[24 * 512 + j] != std::byte{0};
    EXPECT_LE(diff, 1u);
    changed_writes += diff;
  }
  EXPECT_GE(changed_writes, 15u);
  EXPECT_TRUE(std::all_of(data.begin(), data.end(), [](std::byte b) { return b == std::byte{0}; }));
  // Probability 0 is no feature at all, so (as in the kernel) all I/O fails.
  auto never = build("0 5 2 random_read_corrupt 0");
  EXPECT_EQ(never->table_text(), "0 1024 flakey a.img 8 0 5 2 error_reads error_writes\n");
  std::vector<std::byte> buf(4096);
  EXPECT_EQ(read(target(never), buf), errno_status(EIO));
}

// The clock starts when the table is loaded: up for 1 s, then down for 1 s.
TEST_F(FlakeyTest, UpThenDownFromTableLoad) {
  auto table = build("1 1 1 error_writes");
  const auto loaded = std::chrono::steady_clock::now();
  Target& t = target(table);
  std::vector<std::byte> buf(512, std::byte{0x42});
  if (std::chrono::steady_clock::now() - loaded < std::chrono::milliseconds(800)) {
    EXPECT_FALSE(write(t, buf));
  }
  std::this_thread::sleep_until(loaded + std::chrono::milliseconds(1100));
  EXPECT_EQ(write(t, buf), errno_status(EIO));
  EXPECT_FALSE(read(t, buf));
}

TEST_F(FlakeyTest, ConstructorErrors) {
  auto err = [&](const std::string& args) {
    return build_error("0 1024 flakey " + args + "\n", resolver_);
  };
  EXPECT_EQ(err("a.img 0 1"), "flakey: Invalid argument count");
  EXPECT_EQ(err("a.img x 1 1"), "flakey: Invalid device sector");
  EXPECT_EQ(err("a.img 0 x 1"), "flakey: Invalid up interval");
  EXPECT_EQ(err("a.img 0 -1 1"), "flakey: Invalid up interval");
  EXPECT_EQ(err("a.img 0 +1 1"), "flakey: Invalid up interval");  // dm_read_arg is sscanf("%u")
  EXPECT_EQ(err("a.img 0 1 4294967296"), "flakey: Invalid down interval");
  EXPECT_EQ(err("a.img 0 0 0"), "flakey: Total (up + down) interval is zero");
  EXPECT_EQ(err("a.img 0 2147483648 2147483648"), "flakey: Total (up + down) interval is zero");
  EXPECT_EQ(err("a.img 0 4294967295 2"), "flakey: Interval overflow");
  EXPECT_EQ(err("a.img 0 0 1 12"), "flakey: Invalid number of feature args");
  EXPECT_EQ(err("a.img 0 0 1 2 drop_writes"), "flakey: Invalid number of feature args");
  EXPECT_EQ(err("a.img 0 0 1 x"), "flakey: Invalid number of feature args");
  EXPECT_EQ(err("a.img 0 0 1 1 bogus"), "flakey: Unrecognised flakey feature requested");
  EXPECT_EQ(err("a.img 0 0 1 2 error_reads ERROR_READS"), "flakey: Feature error_reads duplicated");
  EXPECT_EQ(err("a.img 0 0 1 2 drop_writes drop_writes"), "flakey: Feature drop_writes duplicated");
  EXPECT_EQ(err("a.img 0 0 1 2 error_writes error_writes"),
            "flakey: Feature error_writes duplicated");
  EXPECT_EQ(err("a.img 0 0 1 2 error_writes drop_writes"),
            "flakey: Feature drop_writes conflicts with feature error_writes");
  EXPECT_EQ(err("a.img 0 0 1 2 drop_writes error_writes"),
            "flakey: Feature error_writes conflicts with feature drop_writes");
  EXPECT_EQ(err("a.img 0 0 1 4 corrupt_bio_byte 1 r 1"),
            "flakey: Feature corrupt_bio_byte requires 4 parameters");
  EXPECT_EQ(err("a.img 0 0 1 10 corrupt_bio_byte 1 r 1 0 corrupt_bio_byte 1 r 1 0"),
            "flakey: Feature corrupt_bio_byte duplicated");
  EXPECT_EQ(err("a.img 0 0 1 5 corrupt_bio_byte 0 r 1 0"), "flakey: Invalid corrupt bio byte");
  EXPECT_EQ(err("a.img 0 0 1 5 corrupt_bio_byte 1 x 1 0"),
            "flakey: Invalid corrupt bio direction (r or w)");
  EXPECT_EQ(err("a.img 0 0 1 5 corrupt_bio_byte 1 r 256 0"),
            "flakey: Invalid corrupt value to write into bio byte (0-255)");
  EXPECT_EQ(err("a.img 0 0 1 5 corrupt_bio_byte 1 r 1 z"),
            "flakey: Invalid corrupt bio flags mask");
  EXPECT_EQ(err("a.img 0 0 1 1 random_read_corrupt"),
            "flakey: Feature random_read_corrupt requires a parameter");
  EXPECT_EQ(err("a.img 0 0 1 4 random_read_corrupt 1 random_read_corrupt 1"),
            "flakey: Feature random_read_corrupt duplicated");
  EXPECT_EQ(err("a.img 0 0 1 2 random_write_corrupt 1000000001"),
            "flakey: Invalid random corrupt argument");
  EXPECT_EQ(err("a.img 0 0 1 1 random_write_corrupt"),
            "flakey: Feature random_write_corrupt requires a parameter");
  EXPECT_EQ(err("a.img 0 0 1 4 random_write_corrupt 5 random_write_corrupt 5"),
            "flakey: Feature random_write_corrupt duplicated");
  EXPECT_EQ(err("a.img 0 0 1 6 drop_writes corrupt_bio_byte 1 w 1 0"),
            "flakey: drop_writes is incompatible with random_write_corrupt or corrupt_bio_byte "
            "with the WRITE flag set");
  EXPECT_EQ(err("a.img 0 0 1 3 error_writes random_write_corrupt 5"),
            "flakey: error_writes is incompatible with random_write_corrupt or corrupt_bio_byte "
            "with the WRITE flag set");
  EXPECT_EQ(err("a.img 0 0 1 6 error_reads corrupt_bio_byte 1 r 1 0"),
            "flakey: error_reads is incompatible with random_read_corrupt or corrupt_bio_byte "
            "with the READ flag set");
  EXPECT_EQ(err("nope.img 0 0 1").rfind("flakey: Device lookup failed (", 0), 0u);
  EXPECT_EQ(err("a.img 1025 0 1"),
            "flakey: a.img too small for target: start=1025, len=1024, dev_size=2048");
  // Accepted: drop_writes with read corruption; arguments past the features.
  EXPECT_EQ(err("a.img 0 0 1 6 drop_writes corrupt_bio_byte 1 r 1 0"), "(built)");
  EXPECT_EQ(err("a.img 0 0 1 1 drop_writes extra"), "(built)");
}

}  // namespace
}  // namespace dmnbd
