#include "dm/device.hpp"

#include <gtest/gtest.h>

#include "test_support.hpp"

namespace dmnbd {
namespace {

using test::run_sync;

// A test-only target that records the bios it is given: "recorder <max_io_len>".
struct RecordedBio {
  BioOp op;
  uint64_t sector, sectors;
};
std::vector<RecordedBio> g_recorded;
std::vector<uint64_t> g_torn_down;  // the max_io_len argument of each recorder torn down

class RecorderTarget final : public Target {
 public:
  RecorderTarget(const TargetContext&, TargetArgs args)
      : max_io_len_(args.empty() ? 0 : parse_sector(args[0], "bad max_io_len")) {}
  Task<Status> map(Bio bio) override {
    g_recorded.push_back({bio.op, bio.sector, bio.sectors});
    co_return ok();
  }
  Task<Status> flush() override {
    g_recorded.push_back({BioOp::flush, 0, 0});
    co_return ok();
  }
  Task<void> teardown() override {
    g_torn_down.push_back(max_io_len_);
    co_return;
  }
  std::string table() const override { return std::to_string(max_io_len_); }
  uint64_t max_io_len() const override { return max_io_len_; }

 private:
  uint64_t max_io_len_;
};
DMNBD_REGISTER_TARGET("recorder", RecorderTarget, 0, 0, 1);

class DeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    test::make_patterned_file(dir_ / "a.img", 1 << 20, 0);
    test::make_patterned_file(dir_ / "b.img", 1 << 20, 100);
    g_recorded.clear();
    g_torn_down.clear();
  }
  std::shared_ptr<Device> make(const std::string& table, bool read_only = false) {
    return test::make_device(table, resolver_, read_only);
  }
  test::TempDir dir_;
  test::DirResolver resolver_{dir_.path()};
};

TEST_F(DeviceTest, ReadSpanningTargetsIsSplitAndRemapped) {
  // Sectors 0-7 from a.img sector 10, 8-15 zero, 16-23 from b.img sector 0.
  auto dev = make("0 8 linear a.img 10\n8 8 zero\n16 8 linear b.img 0\n");
  EXPECT_EQ(dev->size_bytes(), 24u * 512);
  std::vector<std::byte> buf(24 * 512);
  std::vector<ZeroRun> zero_runs;
  ASSERT_FALSE(run_sync(dev->read(0, buf, &zero_runs)));
  EXPECT_EQ(static_cast<uint8_t>(buf[0]), test::pattern_byte(10 * 512));
  EXPECT_EQ(static_cast<uint8_t>(buf[7 * 512]), test::pattern_byte(17 * 512));
  EXPECT_EQ(buf[8 * 512], std::byte{0});
  EXPECT_EQ(static_cast<uint8_t>(buf[16 * 512]), test::pattern_byte(0, 100));
  ASSERT_EQ(zero_runs.size(), 1u);
  EXPECT_EQ(zero_runs[0].sector, 8u);
  EXPECT_EQ(zero_runs[0].sectors, 8u);
}

TEST_F(DeviceTest, SplitsAtMaxIoLen) {
  auto dev = make("0 100 recorder 16\n");
  std::vector<std::byte> buf(40 * 512);
  ASSERT_FALSE(run_sync(dev->write(10 * 512, buf, 0)));
  ASSERT_EQ(g_recorded.size(), 4u);  // 10-15, 16-31, 32-47, 48-49
  EXPECT_EQ(g_recorded[0].sector, 10u);
  EXPECT_EQ(g_recorded[0].sectors, 6u);
  EXPECT_EQ(g_recorded[1].sector, 16u);
  EXPECT_EQ(g_recorded[1].sectors, 16u);
  EXPECT_EQ(g_recorded[3].sector, 48u);
  EXPECT_EQ(g_recorded[3].sectors, 2u);
}

TEST_F(DeviceTest, TargetsSeeRelativeSectors) {
  auto dev = make("0 10 zero\n10 20 recorder\n");
  ASSERT_FALSE(run_sync(dev->discard(12 * 512, 4 * 512, 0)));
  ASSERT_EQ(g_recorded.size(), 1u);
  EXPECT_EQ(g_recorded[0].op, BioOp::discard);
  EXPECT_EQ(g_recorded[0].sector, 2u);
  EXPECT_EQ(g_recorded[0].sectors, 4u);
}

TEST_F(DeviceTest, FlushReachesEveryTarget) {
  auto dev = make("0 10 recorder\n10 10 zero\n20 10 recorder\n");
  ASSERT_FALSE(run_sync(dev->flush()));
  ASSERT_EQ(g_recorded.size(), 2u);
  EXPECT_EQ(g_recorded[0].op, BioOp::flush);
  EXPECT_EQ(g_recorded[1].op, BioOp::flush);
}

// A device that counts the flushes it is sent.
class FlushCounter final : public BlockDevice {
 public:
  std::string name() const override { return "counter"; }
  uint64_t sectors() const override { return 1 << 20; }
  Task<Status> submit(Bio bio) override {
    if (bio.op == BioOp::flush) ++flushes;
    co_return ok();
  }
  Task<Status> block_status(uint64_t, uint64_t count, ExtentList& out) override {
    out.append(count, 0);
    co_return ok();
  }
  int flushes = 0;
};

// The default Target::flush() reaches every device in the target's areas
// once, however many areas lie on it; deps come from the same areas.
TEST_F(DeviceTest, DefaultFlushReachesEachDeviceOnce) {
  auto counter = std::make_shared<FlushCounter>();
  resolver_.add("c", counter);
  auto dev = make("0 48 striped 3 8 c 0 a.img 0 c 4096\n48 8 linear c 100\n");
  ASSERT_FALSE(run_sync(dev->flush()));
  EXPECT_EQ(counter->flushes, 2);  // once per target that uses it
  EXPECT_EQ(dev->dependencies(false).size(), 2u);
}

TEST_F(DeviceTest, AreaPastTheEndOfItsDeviceIsRefusedWithTheTablesWord) {
  EXPECT_EQ(test::build_error("0 64 striped 2 8 a.img 0 b.img 2040\n", resolver_),
            "striped: b.img too small for target: start=2040, len=32, dev_size=2048");
}

// Every table a device lets go of is torn down once, in dm's order: the old
// live table after the swap, a replaced or cleared inactive one at once.
TEST_F(DeviceTest, EveryDroppedTableIsTornDownOnce) {
  auto dev = make("0 8 recorder 1\n");
  auto table = [&](int tag) {
    return Table::build("0 8 recorder " + std::to_string(tag) + "\n", resolver_, false);
  };
  run_sync(dev->load(table(2)));
  run_sync(dev->load(table(3)));  // replaces 2, which never went live
  EXPECT_EQ(g_torn_down, (std::vector<uint64_t>{2}));
  ASSERT_FALSE(run_sync(dev->resume()));  // 3 goes live, 1 goes
  EXPECT_EQ(g_torn_down, (std::vector<uint64_t>{2, 1}));
  run_sync(dev->load(table(4)));
  EXPECT_TRUE(run_sync(dev->clear()));
  EXPECT_FALSE(run_sync(dev->clear()));
  EXPECT_EQ(g_torn_down, (std::vector<uint64_t>{2, 1, 4}));
  run_sync(dev->drop_tables());
  run_sync(dev->drop_tables());
  EXPECT_EQ(g_torn_down, (std::vector<uint64_t>{2, 1, 4, 3}));
}

TEST_F(DeviceTest, UnalignedWriteIsReadModifyWrite) {
  auto dev = make("0 2048 linear a.img 0\n");
  std::vector<std::byte> data(700, std::byte{0xee});
  ASSERT_FALSE(run_sync(dev->write(300, data, 0)));  // bytes 300..999, sectors 0 and 1
  g_recorded.clear();
  auto file = test::read_file_bytes(dir_ / "a.img");
  EXPECT_EQ(static_cast<uint8_t>(file[299]), test::pattern_byte(299));
  EXPECT_EQ(file[300], std::byte{0xee});
  EXPECT_EQ(file[999], std::byte{0xee});
  EXPECT_EQ(static_cast<uint8_t>(file[1000]), test::pattern_byte(1000));

  std::vector<std::byte> out(10);
  ASSERT_FALSE(run_sync(dev->read(995, out, nullptr)));
  EXPECT_EQ(out[4], std::byte{0xee});
  EXPECT_EQ(static_cast<uint8_t>(out[5]), test::pattern_byte(1000));
}

TEST_F(DeviceTest, UnalignedWriteInsideOneSector) {
  auto dev = make("0 2048 linear a.img 0\n");
  std::vector<std::byte> data(3, std::byte{0x11});
  ASSERT_FALSE(run_sync(dev->write(5000, data, 0)));
  auto file = test::read_file_bytes(dir_ / "a.img");
  EXPECT_EQ(static_cast<uint8_t>(file[4999]), test::pattern_byte(4999));
  EXPECT_EQ(file[5002], std::byte{0x11});
  EXPECT_EQ(static_cast<uint8_t>(file[5003]), test::pattern_byte(5003));
}

TEST_F(DeviceTest, UnalignedWriteZeroesAndDiscard) {
  auto dev = make("0 2048 linear a.img 0\n");
  ASSERT_FALSE(run_sync(dev->write_zeroes(100, 2000, 0)));
  auto file = test::read_file_bytes(dir_ / "a.img");
  EXPECT_EQ(static_cast<uint8_t>(file[99]), test::pattern_byte(99));
  for (size_t i = 100; i < 2100; ++i) ASSERT_EQ(file[i], std::byte{0}) << i;
  EXPECT_EQ(static_cast<uint8_t>(file[2100]), test::pattern_byte(2100));
  // FAST_ZERO cannot be honoured for partial sectors.
  EXPECT_EQ(run_sync(dev->write_zeroes(100, 2000, kBioFastZero)), errno_status(ENOTSUP));
  // Discard only drops the whole sectors inside the range: here none.
  ASSERT_FALSE(run_sync(dev->discard(4096 + 1, 511, 0)));
  file = test::read_file_bytes(dir_ / "a.img");
  EXPECT_EQ(static_cast<uint8_t>(file[4096 + 100]), test::pattern_byte(4096));
}

TEST_F(DeviceTest, RangeAndPermissionErrors) {
  auto dev = make("0 16 zero\n");
  std::vector<std::byte> buf(1024);
  EXPECT_EQ(run_sync(dev->read(15 * 512, buf, nullptr)), errno_status(EINVAL));
  EXPECT_EQ(run_sync(dev->write(15 * 512, buf, 0)), errno_status(ENOSPC));
  EXPECT_EQ(run_sync(dev->write_zeroes(16 * 512, 512, 0)), errno_status(ENOSPC));
  EXPECT_EQ(run_sync(dev->discard(16 * 512, 512, 0)), errno_status(EINVAL));
  EXPECT_EQ(run_sync(dev->read(UINT64_MAX - 10, buf, nullptr)), errno_status(EINVAL));

  auto ro = make("0 16 zero\n", true);
  EXPECT_EQ(run_sync(ro->write(0, buf, 0)), errno_status(EPERM));
  EXPECT_EQ(run_sync(ro->discard(0, 512, 0)), errno_status(EPERM));
  EXPECT_EQ(run_sync(ro->write_zeroes(0, 512, 0)), errno_status(EPERM));
  EXPECT_FALSE(run_sync(ro->read(0, buf, nullptr)));
}

TEST_F(DeviceTest, BlockStatusMergesAcrossTargets) {
  auto dev = make("0 8 zero\n8 8 zero\n16 8 linear a.img 0\n");
  std::vector<ByteExtent> out;
  ASSERT_FALSE(run_sync(dev->block_status_bytes(0, 24 * 512, 100, out)));
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].length, 16u * 512);
  EXPECT_EQ(out[0].flags, kExtentHole | kExtentZero);
  EXPECT_EQ(out[1].length, 8u * 512);
  EXPECT_EQ(out[1].flags, 0u);
  out.clear();
  ASSERT_FALSE(run_sync(dev->block_status_bytes(1024 + 100, 512, 1, out)));
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].length, 2u * 512 - 100);  // whole sectors 2-3, less the unaligned start
}

TEST_F(DeviceTest, StackedDeviceRoutesThroughTheLowerOne) {
  auto lower = make("0 8 zero\n8 2040 linear a.img 8\n");
  resolver_.add("lower", lower);
  auto upper = test::make_device("0 100 linear lower 4\n", resolver_, false, "upper");
  std::vector<std::byte> buf(8 * 512);
  bool zero = false;
  ASSERT_FALSE(run_sync(upper->submit({.op = BioOp::read,
                                       .sector = 0,
                                       .sectors = 4,
                                       .data = std::span(buf).first(2048),
                                       .reads_zero = &zero})));
  EXPECT_TRUE(zero);  // sectors 4-7 of lower are its zero target
  ASSERT_FALSE(run_sync(upper->read(0, buf, nullptr)));
  EXPECT_EQ(buf[0], std::byte{0});
  EXPECT_EQ(static_cast<uint8_t>(buf[4 * 512]), test::pattern_byte(8 * 512));
  std::vector<ByteExtent> out;
  ASSERT_FALSE(run_sync(upper->block_status_bytes(0, 8 * 512, 10, out)));
  EXPECT_EQ(out[0].flags, kExtentHole | kExtentZero);
  EXPECT_EQ(out[0].length, 4u * 512);

  // Every pass through the lower device's gate is given back: after writes
  // through the upper one, the lower one suspends at once and I/O flows again
  // after resume. (GCC 12 once miscompiled a co_await inside ?: here.)
  for (uint64_t offset : {4096u, 8192u, 4096u})
    ASSERT_FALSE(run_sync(upper->write(offset, buf, 0)));
  ASSERT_FALSE(run_sync(lower->suspend(true)));
  ASSERT_FALSE(run_sync(lower->resume()));
  ASSERT_FALSE(run_sync(upper->read(4096, buf, nullptr)));
}

}  // namespace
}  // namespace dmnbd
