#include "devices/crash_device.hpp"

#include <gtest/gtest.h>

#include <boost/asio/experimental/awaitable_operators.hpp>

#include "devices/memory_device.hpp"
#include "devices/recording_device.hpp"
#include "test_support.hpp"

namespace dmnbd {
namespace {

using namespace boost::asio::experimental::awaitable_operators;
using test::all_are;
using test::CrashDevice;
using test::filled;
using test::MemoryDevice;
using test::RecordingDevice;
using test::run_sync;

Task<Status> write(BlockDevice& dev, uint64_t sector, uint8_t value, uint32_t flags = 0,
                   uint64_t sectors = 1) {
  std::vector<std::byte> buf = filled(sectors, value);
  co_return co_await dev.submit(
      {.op = BioOp::write, .sector = sector, .sectors = sectors, .data = buf, .flags = flags});
}

Task<Status> flush(BlockDevice& dev) {
  co_return co_await dev.submit(flush_bio());
}

// A disk of 128 sectors, sector i filled with byte i, under a CrashDevice;
// `slow` sits between them when a test needs bios to overlap.
class CrashDeviceTest : public ::testing::Test {
 protected:
  CrashDeviceTest() { disk_->fill_pattern(); }
  bool original(uint64_t sector) { return all_are(disk_->bytes(sector, 1), sector & 0xff); }
  bool holds(uint64_t sector, uint8_t value) { return all_are(disk_->bytes(sector, 1), value); }

  std::shared_ptr<MemoryDevice> disk_ = std::make_shared<MemoryDevice>(128);
  std::shared_ptr<RecordingDevice> slow_ = std::make_shared<RecordingDevice>(disk_, "slow");
  CrashDevice crash_{slow_};
};

TEST_F(CrashDeviceTest, ACrashLosesWritesNoFlushCovered) {
  ASSERT_FALSE(run_sync(write(crash_, 1, 0xaa)));
  ASSERT_FALSE(run_sync(write(crash_, 2, 0xbb, 0, 2)));  // sectors 2 and 3
  ASSERT_FALSE(run_sync(flush(crash_)));
  ASSERT_FALSE(run_sync(write(crash_, 4, 0xcc)));  // after the flush: lost
  ASSERT_FALSE(run_sync(write(crash_, 1, 0xdd)));  // overwrites a durable sector: lost
  EXPECT_TRUE(holds(4, 0xcc));                     // the disk had them, volatile
  EXPECT_EQ(crash_.volatile_writes(), 2u);
  ASSERT_FALSE(run_sync(crash_.crash()));
  EXPECT_TRUE(holds(1, 0xaa));
  EXPECT_TRUE(holds(2, 0xbb));
  EXPECT_TRUE(holds(3, 0xbb));
  EXPECT_TRUE(original(4));
  EXPECT_TRUE(original(5));
  EXPECT_EQ(crash_.volatile_writes(), 0u);
  EXPECT_TRUE(crash_.powered());
  // A second crash keeps what the first left.
  ASSERT_FALSE(run_sync(crash_.crash()));
  EXPECT_TRUE(holds(1, 0xaa));
  EXPECT_TRUE(original(4));
}

TEST_F(CrashDeviceTest, FuaMakesOnlyItsOwnSectorsDurable) {
  ASSERT_FALSE(run_sync(write(crash_, 1, 0xaa)));
  ASSERT_FALSE(run_sync(write(crash_, 2, 0xbb, kBioFua)));
  ASSERT_FALSE(run_sync(crash_.crash()));
  EXPECT_TRUE(original(1));
  EXPECT_TRUE(holds(2, 0xbb));
}

TEST_F(CrashDeviceTest, AFlushDoesNotCoverAWriteStillInFlightWhenItWasSent) {
  slow_->set_hops([](const Bio& bio) { return bio.op == BioOp::flush ? 20u : 2u; });
  run_sync([&]() -> Task<void> {
    auto [w, f] = co_await (write(crash_, 4, 0xee) && flush(crash_));
    EXPECT_FALSE(w);
    EXPECT_FALSE(f);
  }());
  // The write completed before the flush did, but had not when it was sent.
  ASSERT_EQ(slow_->bios(BioOp::flush).size(), 1u);
  ASSERT_FALSE(run_sync(crash_.crash()));
  EXPECT_TRUE(original(4));
}

TEST_F(CrashDeviceTest, AFuaWriteDuringAFlushIsNotUndoneByTheFlush) {
  ASSERT_FALSE(run_sync(write(crash_, 5, 0x11)));
  slow_->set_hops([](const Bio& bio) { return bio.op == BioOp::flush ? 20u : 1u; });
  run_sync([&]() -> Task<void> {
    // The flush covers the 0x11 write; the FUA write completes before the flush.
    auto [f, w] = co_await (flush(crash_) && write(crash_, 5, 0x22, kBioFua));
    EXPECT_FALSE(f);
    EXPECT_FALSE(w);
  }());
  ASSERT_FALSE(run_sync(crash_.crash()));
  EXPECT_TRUE(holds(5, 0x22));
}

TEST_F(CrashDeviceTest, DiscardAndWriteZeroesAreUndoneLikeWrites) {
  ASSERT_FALSE(run_sync(crash_.submit({.op = BioOp::discard, .sector = 6, .sectors = 2})));
  ASSERT_FALSE(run_sync(crash_.submit({.op = BioOp::write_zeroes, .sector = 9, .sectors = 1})));
  EXPECT_TRUE(holds(6, 0) && holds(7, 0) && holds(9, 0));
  ASSERT_FALSE(run_sync(crash_.crash()));
  EXPECT_TRUE(original(6) && original(7) && original(9));
}

TEST_F(CrashDeviceTest, AFailedWriteIsNeverMadeDurable) {
  slow_->set_fault([](const Bio& bio) {
    return bio.op == BioOp::write && bio.sector == 10 ? errno_status(EIO) : ok();
  });
  EXPECT_EQ(run_sync(write(crash_, 10, 0x33)), errno_status(EIO));
  ASSERT_FALSE(run_sync(flush(crash_)));
  slow_->set_fault({});  // the disk takes the restoring writes
  ASSERT_FALSE(run_sync(crash_.crash()));
  EXPECT_TRUE(original(10));
}

TEST_F(CrashDeviceTest, PowerOffAfterCutsTheIoAtThatPoint) {
  crash_.power_off_after(2);
  ASSERT_FALSE(run_sync(write(crash_, 1, 0xaa)));
  ASSERT_FALSE(run_sync(flush(crash_)));
  EXPECT_EQ(run_sync(write(crash_, 2, 0xbb)), errno_status(EIO));
  EXPECT_FALSE(crash_.powered());
  std::vector<std::byte> buf(512);
  EXPECT_EQ(run_sync(crash_.submit({.op = BioOp::read, .sector = 1, .sectors = 1, .data = buf})),
            errno_status(EIO));
  EXPECT_EQ(slow_->bios(BioOp::write).size(), 1u);  // the refused write never reached the disk
  ASSERT_FALSE(run_sync(crash_.crash()));
  EXPECT_TRUE(holds(1, 0xaa));
  EXPECT_TRUE(original(2));
  // Powered again, with no limit.
  EXPECT_FALSE(
      run_sync(crash_.submit({.op = BioOp::read, .sector = 1, .sectors = 1, .data = buf})));
  EXPECT_TRUE(all_are(buf, 0xaa));
  EXPECT_FALSE(run_sync(write(crash_, 2, 0xbb)));
  EXPECT_FALSE(run_sync(write(crash_, 3, 0xbb)));
}

// What a seeded crash keeps of 64 volatile writes: each sector is either the
// old bytes or the new ones, some kept and some lost, the same for one seed.
std::vector<bool> kept_after_seeded_crash(uint64_t seed) {
  auto disk = std::make_shared<MemoryDevice>(128);
  disk->fill_pattern();
  CrashDevice crash(disk);
  for (uint64_t s = 0; s < 64; ++s) EXPECT_FALSE(run_sync(write(crash, s, 0xee)));
  EXPECT_FALSE(run_sync(crash.crash(seed)));
  std::vector<bool> kept;
  for (uint64_t s = 0; s < 64; ++s) {
    const bool is_new = all_are(disk->bytes(s, 1), 0xee);
    EXPECT_TRUE(is_new || all_are(disk->bytes(s, 1), s & 0xff)) << s;
    kept.push_back(is_new);
  }
  return kept;
}

TEST(CrashDeviceSeededTest, KeepsARandomSubsetOfVolatileWritesRepeatably) {
  const std::vector<bool> a = kept_after_seeded_crash(7);
  const auto kept = std::count(a.begin(), a.end(), true);
  EXPECT_GT(kept, 0);
  EXPECT_LT(kept, 64);
  EXPECT_EQ(kept_after_seeded_crash(7), a);
  EXPECT_NE(kept_after_seeded_crash(8), a);
}

}  // namespace
}  // namespace dmnbd
