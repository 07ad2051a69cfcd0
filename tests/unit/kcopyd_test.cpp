#include "dmnbd/kcopyd.hpp"

#include <gtest/gtest.h>

#include <random>

#include <boost/asio/experimental/awaitable_operators.hpp>

#include "devices/memory_device.hpp"
#include "devices/recording_device.hpp"
#include "test_support.hpp"

namespace dmnbd {
namespace {

using namespace boost::asio::experimental::awaitable_operators;
using test::all_are;
using test::BioRecord;
using test::RecordingDevice;
using test::run_sync;

constexpr uint64_t kChunk = 16;  // sectors, for the tests with many chunks

std::shared_ptr<RecordingDevice> random_device(const char* name, uint64_t sectors, uint64_t seed) {
  auto dev = std::make_shared<RecordingDevice>(name, sectors);
  std::mt19937_64 random(seed);
  for (std::byte& b : dev->memory()->bytes()) b = static_cast<std::byte>(random());
  return dev;
}

bool same(RecordingDevice& a, uint64_t a_sector, RecordingDevice& b, uint64_t b_sector,
          uint64_t count) {
  auto x = a.memory()->bytes(a_sector, count);
  auto y = b.memory()->bytes(b_sector, count);
  return std::equal(x.begin(), x.end(), y.begin(), y.end());
}

// A copy to one destination.
Task<CopyResult> copy_to(Kcopyd& kc, Region from, Region to) {
  co_return co_await kc.copy(from, std::span(&to, 1));
}

class KcopydTest : public ::testing::Test {
 protected:
  std::shared_ptr<RecordingDevice> src_ = random_device("src", 4096, 1);
  std::shared_ptr<RecordingDevice> a_ = random_device("a", 4096, 2);
  std::shared_ptr<RecordingDevice> b_ = random_device("b", 4096, 3);
};

TEST_F(KcopydTest, CopiesByteExactToTwoDestinationsInKernelSizedChunks) {
  Kcopyd kc;
  EXPECT_EQ(kc.chunk_sectors(), 1024u);  // 512 KiB, the kernel's default sub-job
  const Region to[] = {{a_.get(), 0, 3000}, {b_.get(), 500, 3000}};
  CopyResult r = run_sync(kc.copy({src_.get(), 100, 3000}, to));
  ASSERT_FALSE(r) << r.status.message();
  EXPECT_TRUE(same(*src_, 100, *a_, 0, 3000));
  EXPECT_TRUE(same(*src_, 100, *b_, 500, 3000));
  EXPECT_FALSE(same(*src_, 3100, *a_, 3000, 1));  // nothing past the region
  EXPECT_EQ(src_->bios(),
            (std::vector<BioRecord>{
                {BioOp::read, 100, 1024}, {BioOp::read, 1124, 1024}, {BioOp::read, 2148, 952}}));
  auto writes = b_->bios();
  std::sort(writes.begin(), writes.end(), [](auto& x, auto& y) { return x.sector < y.sector; });
  EXPECT_EQ(writes,
            (std::vector<BioRecord>{
                {BioOp::write, 500, 1024}, {BioOp::write, 1524, 1024}, {BioOp::write, 2548, 952}}));
  EXPECT_EQ(kc.jobs(), 0u);
  EXPECT_EQ(kc.bytes_in_flight(), 0u);
}

TEST_F(KcopydTest, ManyChunksRunAtOnceButTheBytesHeldStayWithinTheBound) {
  Kcopyd kc({.chunk_sectors = kChunk, .max_bytes_in_flight = 4 * kChunk * 512});
  for (auto* d : {src_.get(), a_.get(), b_.get()}) d->set_hops(3);
  // Two copies share the client's budget.
  run_sync([&]() -> Task<void> {
    auto [r1, r2] = co_await (copy_to(kc, {src_.get(), 0, 1024}, {a_.get(), 0, 1024}) &&
                              copy_to(kc, {src_.get(), 2048, 1024}, {b_.get(), 0, 1024}));
    EXPECT_FALSE(r1);
    EXPECT_FALSE(r2);
  }());
  EXPECT_TRUE(same(*src_, 0, *a_, 0, 1024));
  EXPECT_TRUE(same(*src_, 2048, *b_, 0, 1024));
  EXPECT_EQ(src_->bios(BioOp::read).size(), 128u);
  EXPECT_EQ(kc.peak_bytes_in_flight(), 4 * kChunk * 512);
  EXPECT_GT(src_->max_in_flight_bios(), 1u);  // chunks overlap
  // Every buffer a device saw in flight is one of the four.
  EXPECT_LE(src_->max_in_flight_bytes(), 4 * kChunk * 512);
  EXPECT_LE(a_->max_in_flight_bytes() + b_->max_in_flight_bytes(), 2 * 4 * kChunk * 512);
}

TEST_F(KcopydTest, AReadErrorStopsTheCopyAndIsReportedAsSuch) {
  Kcopyd kc({.chunk_sectors = kChunk, .max_bytes_in_flight = 2 * kChunk * 512});
  src_->set_hops(2);
  src_->set_fault([](const Bio& bio) { return bio.sector >= 64 ? errno_status(EIO) : ok(); });
  const Region to[] = {{a_.get(), 0, 1024}, {b_.get(), 0, 1024}};
  CopyResult r = run_sync(kc.copy({src_.get(), 0, 1024}, to));
  EXPECT_EQ(r.status, errno_status(EIO));
  EXPECT_TRUE(r.read_error);
  EXPECT_EQ(r.write_errors, 0u);
  // No new chunk after the failure: at most the ones already waiting for a slot.
  EXPECT_LE(src_->bios(BioOp::read).size(), 64 / kChunk + 2);
  EXPECT_TRUE(same(*src_, 0, *a_, 0, 64));
}

TEST_F(KcopydTest, AWriteErrorNamesItsDestination) {
  Kcopyd kc({.chunk_sectors = kChunk});
  b_->fail_all(errno_status(ENOSPC));
  const Region to[] = {{a_.get(), 0, 256}, {b_.get(), 0, 256}};
  CopyResult r = run_sync(kc.copy({src_.get(), 0, 256}, to));
  EXPECT_EQ(r.status, errno_status(ENOSPC));
  EXPECT_FALSE(r.read_error);
  EXPECT_EQ(r.write_errors, 0b10u);
  EXPECT_LT(src_->bios(BioOp::read).size(), 256 / kChunk);

  // DM_KCOPYD_IGNORE_ERROR: the good leg still gets everything.
  src_->clear();
  const Region again[] = {{a_.get(), 1024, 256}, {b_.get(), 0, 256}};
  CopyResult ignored =
      run_sync(kc.copy({src_.get(), 1024, 256}, again, nullptr, kKcopydIgnoreErrors));
  EXPECT_EQ(ignored.status, errno_status(ENOSPC));
  EXPECT_EQ(ignored.write_errors, 0b10u);
  EXPECT_EQ(src_->bios(BioOp::read).size(), 256 / kChunk);
  EXPECT_TRUE(same(*src_, 1024, *a_, 1024, 256));
}

TEST_F(KcopydTest, CancellingStopsNewChunksAndWaitsForTheOnesInFlight) {
  Kcopyd kc({.chunk_sectors = kChunk, .max_bytes_in_flight = 2 * kChunk * 512});
  CancelToken cancel;
  src_->set_hops(4);
  a_->set_hops(4);
  int reads = 0;
  src_->set_fault([&](const Bio&) {
    if (++reads == 4) cancel.cancel();
    return ok();
  });
  const Region to[] = {{a_.get(), 0, 1024}};
  CopyResult r = run_sync(kc.copy({src_.get(), 0, 1024}, to, &cancel));
  EXPECT_EQ(r.status, errno_status(ECANCELED));
  EXPECT_FALSE(r.read_error);
  const size_t read = src_->bios(BioOp::read).size();
  EXPECT_GE(read, 4u);
  EXPECT_LE(read, 4u + 2);  // only what had a slot already
  // Every chunk that started was finished before copy() returned.
  EXPECT_EQ(a_->bios(BioOp::write).size(), read);
  EXPECT_EQ(src_->in_flight_bios() + a_->in_flight_bios(), 0u);
  EXPECT_TRUE(same(*src_, 0, *a_, 0, read * kChunk));
  // A token cancelled already: nothing is sent.
  src_->clear();
  const Region small[] = {{a_.get(), 0, 64}};
  EXPECT_EQ(run_sync(kc.copy({src_.get(), 0, 64}, small, &cancel)).status, errno_status(ECANCELED));
  EXPECT_TRUE(src_->bios().empty());
}

TEST_F(KcopydTest, ZeroUsesWriteZeroesAndFallsBackToWritesWhereRefused) {
  Kcopyd kc({.chunk_sectors = kChunk});
  b_->set_fault([](const Bio& bio) {
    return bio.op == BioOp::write_zeroes ? errno_status(EOPNOTSUPP) : ok();
  });
  const Region to[] = {{a_.get(), 10, 40}, {b_.get(), 20, 40}};
  CopyResult r = run_sync(kc.zero(to));
  ASSERT_FALSE(r) << r.status.message();
  EXPECT_TRUE(all_are(a_->memory()->bytes(10, 40), 0));
  EXPECT_TRUE(all_are(b_->memory()->bytes(20, 40), 0));
  EXPECT_FALSE(all_are(a_->memory()->bytes(50, 1), 0));
  EXPECT_EQ(a_->bios(BioOp::write_zeroes).size(), 3u);  // 16 + 16 + 8
  EXPECT_TRUE(a_->bios(BioOp::write).empty());
  EXPECT_EQ(b_->bios(BioOp::write).size(), 3u);
}

TEST_F(KcopydTest, DrainWaitsForEveryJob) {
  Kcopyd kc({.chunk_sectors = kChunk});
  for (auto* d : {src_.get(), a_.get(), b_.get()}) d->set_hops(2);
  size_t jobs_after_drain = 99;
  int finished = 0;
  run_sync([&]() -> Task<void> {
    auto executor = co_await asio::this_coro::executor;
    for (auto& dest : {a_, b_})
      asio::co_spawn(
          executor,
          [&kc, this, dest, &finished]() -> Task<void> {
            EXPECT_FALSE(co_await copy_to(kc, {src_.get(), 0, 512}, {dest.get(), 0, 512}));
            ++finished;
          },
          asio::detached);
    co_await asio::post(executor, asio::use_awaitable);  // both jobs have started
    EXPECT_EQ(kc.jobs(), 2u);
    co_await kc.drain();
    jobs_after_drain = kc.jobs();
  }());
  EXPECT_EQ(jobs_after_drain, 0u);
  EXPECT_TRUE(same(*src_, 0, *a_, 0, 512));
  EXPECT_TRUE(same(*src_, 0, *b_, 0, 512));
}

TEST_F(KcopydTest, BadRegionsAreRefusedBeforeAnyIo) {
  Kcopyd kc;
  auto einval = [&](Region from, std::vector<Region> to) {
    return run_sync(kc.copy(from, to)).status == errno_status(EINVAL);
  };
  RecordingDevice* src = src_.get();
  RecordingDevice* a = a_.get();
  EXPECT_TRUE(einval({src, 0, 8}, {}));
  EXPECT_TRUE(einval({src, 0, 8}, {{a, 0, 9}}));
  EXPECT_TRUE(einval({src, 4090, 8}, {{a, 0, 8}}));
  EXPECT_TRUE(einval({src, 0, 8}, {{a, 4090, 8}}));
  EXPECT_TRUE(einval({src, 0, 8}, std::vector<Region>(9, Region{a, 0, 8})));
  EXPECT_TRUE(einval({nullptr, 0, 8}, {{a, 0, 8}}));
  EXPECT_TRUE(src_->bios().empty());
  const std::vector<Region> eight(8, Region{a, 0, 8});
  EXPECT_FALSE(run_sync(kc.copy({src, 0, 8}, eight)));
}

}  // namespace
}  // namespace dmnbd
