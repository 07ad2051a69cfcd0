#include "dmnbd/dm_io.hpp"

#include <gtest/gtest.h>

#include <boost/asio/this_coro.hpp>

#include "devices/memory_device.hpp"
#include "devices/recording_device.hpp"
#include "dmnbd/when_all.hpp"
#include "test_support.hpp"

namespace dmnbd {
namespace {

using test::all_are;
using test::BioRecord;
using test::RecordingDevice;
using test::run_sync;

class DmIoTest : public ::testing::Test {
 protected:
  DmIoTest() { dev_.memory()->fill_pattern(); }  // sector i holds byte i
  RecordingDevice dev_{"dev", 16};
};

TEST_F(DmIoTest, ReadBytesReadsWholeSectorsInPlaceAndBouncesOnlyTheTail) {
  std::vector<std::byte> buf(700);
  ASSERT_FALSE(run_sync(read_bytes(dev_, 2, buf)));
  EXPECT_TRUE(all_are(std::span(buf).first(512), 2));
  EXPECT_TRUE(all_are(std::span(buf).subspan(512), 3));
  EXPECT_EQ(dev_.bios(), (std::vector<BioRecord>{{BioOp::read, 2, 1}, {BioOp::read, 3, 1}}));
  dev_.clear();
  std::vector<std::byte> small(10);
  ASSERT_FALSE(run_sync(read_bytes(dev_, 5, small)));
  EXPECT_TRUE(all_are(small, 5));
  EXPECT_EQ(dev_.bios(), (std::vector<BioRecord>{{BioOp::read, 5, 1}}));
}

TEST_F(DmIoTest, WriteBytesPadsTheLastSectorWithZeroesAndKeepsFua) {
  std::vector<std::byte> header(700, std::byte{0x5a});
  ASSERT_FALSE(run_sync(write_bytes(dev_, 2, header, kBioFua)));
  EXPECT_EQ(dev_.bios(), (std::vector<BioRecord>{{BioOp::write, 2, 2, kBioFua}}));
  auto stored = dev_.memory()->bytes(2, 2);
  EXPECT_TRUE(all_are(stored.first(700), 0x5a));
  EXPECT_TRUE(all_are(stored.subspan(700), 0));
  EXPECT_TRUE(all_are(dev_.memory()->bytes(4, 1), 4));
}

TEST_F(DmIoTest, WholeSectorHelpersRefuseAPartialSectorAndPassErrorsBack) {
  std::vector<std::byte> odd(513);
  EXPECT_EQ(run_sync(read_sectors(dev_, 0, odd)), errno_status(EINVAL));
  EXPECT_EQ(run_sync(write_sectors(dev_, 0, odd)), errno_status(EINVAL));
  EXPECT_TRUE(dev_.bios().empty());
  std::vector<std::byte> two(1024, std::byte{7});
  ASSERT_FALSE(run_sync(write_sectors(dev_, 8, two)));
  std::vector<std::byte> back(1024);
  ASSERT_FALSE(run_sync(read_sectors(dev_, 8, back)));
  EXPECT_EQ(back, two);
  dev_.fail_all(errno_status(ENOSPC));
  EXPECT_EQ(run_sync(read_sectors(dev_, 8, back)), errno_status(ENOSPC));
  EXPECT_EQ(run_sync(write_bytes(dev_, 8, two)), errno_status(ENOSPC));
  EXPECT_EQ(run_sync(flush_device(dev_)), errno_status(ENOSPC));
}

TEST(DmIoFlushAllTest, FlushesEveryDeviceAtOnceAndReportsTheFirstError) {
  std::vector<std::shared_ptr<RecordingDevice>> devs;
  for (const char* name : {"a", "b", "c"})
    devs.push_back(std::make_shared<RecordingDevice>(name, 8));
  // Each flush waits 10 loop trips, then looks how many flushes are in flight.
  uint64_t most_at_once = 0;
  for (auto& d : devs) {
    d->set_hops(10);
    d->set_fault([&devs, &most_at_once](const Bio&) {
      uint64_t n = 0;
      for (auto& other : devs) n += other->in_flight_bios();
      most_at_once = std::max(most_at_once, n);
      return ok();
    });
  }
  std::vector<std::shared_ptr<BlockDevice>> all(devs.begin(), devs.end());
  ASSERT_FALSE(run_sync(flush_all(all)));
  EXPECT_EQ(most_at_once, 3u);
  for (auto& d : devs) EXPECT_EQ(d->bios(), std::vector<BioRecord>{{BioOp::flush}});

  devs[1]->fail_all(errno_status(EIO));
  devs[2]->fail_all(errno_status(ENOSPC));
  EXPECT_EQ(run_sync(flush_all(all)), errno_status(EIO));
  for (auto& d : devs) EXPECT_EQ(d->bios(BioOp::flush).size(), 2u);
  EXPECT_FALSE(run_sync(flush_all({})));
}

TEST(WhenAllTest, ResultsComeInTheOrderGivenAndExceptionsAfterAllFinish) {
  int finished = 0;
  auto slow = [&finished](int hops, Status st) -> Task<Status> {
    auto executor = co_await asio::this_coro::executor;
    for (int i = 0; i < hops; ++i) co_await asio::post(executor, asio::use_awaitable);
    ++finished;
    co_return st;
  };
  std::vector<Task<Status>> tasks;
  tasks.push_back(slow(5, errno_status(EIO)));
  tasks.push_back(slow(0, ok()));
  tasks.push_back(slow(2, errno_status(EAGAIN)));
  auto results = run_sync(when_all(tasks));
  EXPECT_EQ(results, (std::vector<Status>{errno_status(EIO), ok(), errno_status(EAGAIN)}));
  EXPECT_EQ(first_error(results), errno_status(EIO));
  EXPECT_EQ(finished, 3);

  auto throws = [&finished]() -> Task<Status> {
    ++finished;
    throw std::runtime_error("boom");
    co_return ok();
  };
  std::vector<Task<Status>> more;
  more.push_back(throws());
  more.push_back(slow(3, ok()));
  EXPECT_THROW(run_sync(when_all(more)), std::runtime_error);
  EXPECT_EQ(finished, 5);  // the slow one finished before the exception came out
}

}  // namespace
}  // namespace dmnbd
