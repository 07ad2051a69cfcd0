// mirror: constructor errors in the kernel's words, table and status lines,
// the disk log's format and write order, recovery of exactly the dirty
// regions, leg errors with and without handle_errors/keep_log, reads that
// fall back to another leg, and crashes at any point of a write.
#include <gtest/gtest.h>

#include <boost/asio/steady_timer.hpp>
#include <cstring>

#include "devices/crash_device.hpp"
#include "devices/memory_device.hpp"
#include "devices/recording_device.hpp"
#include "dm/table.hpp"
#include "dmnbd/when_all.hpp"
#include "test_support.hpp"

namespace dmnbd {
namespace {

using test::build_error;
using test::MemoryDevice;
using test::RecordingDevice;
using test::run_sync;

constexpr uint64_t kLegSectors = 4096;  // 4 regions of 1024
constexpr uint64_t kRegion = 1024;

std::vector<std::byte> filled(uint64_t sectors, uint8_t value) {
  return std::vector<std::byte>(sectors << kSectorShift, std::byte{value});
}

Task<void> sleep_ms(int ms) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  timer.expires_after(std::chrono::milliseconds(ms));
  co_await timer.async_wait(asio::use_awaitable);
}

// The clean bit of region r in a disk log image.
bool clean_bit(std::span<const std::byte> log, uint64_t r) {
  return (uint8_t(log[1024 + r / 8]) >> (r % 8)) & 1;
}
void set_clean_bit(std::span<std::byte> log, uint64_t r, bool clean) {
  if (clean)
    log[1024 + r / 8] |= std::byte(1u << (r % 8));
  else
    log[1024 + r / 8] &= ~std::byte(1u << (r % 8));
}
// A valid version-2 log of `regions` regions, all clean but `dirty`.
void write_log(std::span<std::byte> log, uint64_t regions, std::vector<uint64_t> dirty) {
  const uint8_t header[16] = {0x72, 0x52, 0x69, 0x4d, 2, 0, 0, 0, uint8_t(regions)};
  std::memcpy(log.data(), header, 16);
  for (uint64_t r = 0; r < regions; ++r) set_clean_bit(log, r, true);
  for (uint64_t r : dirty) set_clean_bit(log, r, false);
}

class MirrorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    leg0_->memory()->fill_pattern(0);
    leg1_->memory()->fill_pattern(100);  // differs from leg 0 everywhere
    for (auto& [name, dev] : std::vector<std::pair<std::string, std::shared_ptr<BlockDevice>>>{
             {"leg0", leg0_}, {"leg1", leg1_}, {"log", log_}, {"tiny", tiny_}})
      resolver_.add(name, dev);
  }

  // Builds, opens, loads and resumes a device on the calling loop: the
  // mirror's recovery and clean passes run on the loop it was resumed on.
  Task<std::shared_ptr<Device>> make(const std::string& table) {
    auto dev = std::make_shared<Device>("mi", "", false, 0);
    co_await load(*dev, table);
    Status st = co_await dev->resume();
    EXPECT_FALSE(st);
    co_return dev;
  }
  Task<void> load(Device& dev, const std::string& table) {
    std::shared_ptr<Table> built =
        Table::build(table, resolver_, false, dev.event_callback(), dev.noflush_callback());
    co_await built->open();
    co_await dev.load(built);
  }
  static std::string status(Device& dev) { return dev.live_table()->status_text(); }
  // Waits until no bio is in flight on the log and the clean pass (100 ms
  // after a region went idle) is done.
  static Task<void> settle() { co_await sleep_ms(150); }

  // Polls until the status shows every region in sync (true) or 5 s passed.
  static Task<bool> wait_in_sync(Device& dev, const std::string& ratio) {
    for (int i = 0; i < 1000; ++i) {
      if (status(dev).find(" " + ratio + " 1 ") != std::string::npos) {
        co_await settle();  // the step after the last copy raises the in-sync event
        co_return true;
      }
      co_await sleep_ms(5);
    }
    co_return false;
  }
  bool legs_equal(uint64_t r) {
    return std::memcmp(leg0_->memory()->bytes(r * kRegion, kRegion).data(),
                       leg1_->memory()->bytes(r * kRegion, kRegion).data(), kRegion * 512) == 0;
  }
  std::span<std::byte> log_image() { return log_->memory()->bytes(); }

  std::shared_ptr<RecordingDevice> leg0_ = std::make_shared<RecordingDevice>("leg0", kLegSectors);
  std::shared_ptr<RecordingDevice> leg1_ = std::make_shared<RecordingDevice>("leg1", kLegSectors);
  std::shared_ptr<RecordingDevice> log_ = std::make_shared<RecordingDevice>("log", 16);
  std::shared_ptr<MemoryDevice> tiny_ = std::make_shared<MemoryDevice>(2, "tiny");
  test::TempDir dir_;
  test::DirResolver resolver_{dir_.path()};
};

TEST_F(MirrorTest, ConstructorErrorsInTheKernelsWords) {
  const std::string legs = " 2 leg0 0 leg1 0";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"core", "Insufficient mirror log arguments"},
      {"core x 1024" + legs, "Invalid mirror log argument count"},
      {"core 9 1024" + legs, "Insufficient mirror log arguments"},
      {"nolog 1 1024" + legs, "Error creating mirror dirty log (unknown dirty log type nolog)"},
      {"core 0" + legs,
       "Error creating mirror dirty log (wrong number of arguments to dirty "
       "region log)"},
      {"core 1 1000" + legs, "Error creating mirror dirty log (invalid region size 1000)"},
      {"core 1 1" + legs, "Error creating mirror dirty log (invalid region size 1)"},
      {"core 1 8192" + legs, "Error creating mirror dirty log (invalid region size 8192)"},
      {"core 2 1024 maybe" + legs,
       "Error creating mirror dirty log (unrecognised sync argument to dirty region log: maybe)"},
      {"disk 1 log" + legs,
       "Error creating mirror dirty log (wrong number of arguments to disk dirty region log)"},
      {"disk 2 tiny 1024" + legs,
       "Error creating mirror dirty log (log device tiny too small: need 1536 bytes)"},
      {"core 1 1024 1 leg0 0", "Invalid number of mirrors"},
      {"core 1 1024 10 leg0 0", "Invalid number of mirrors"},
      {"core 1 1024 2 leg0 0", "Too few mirror arguments"},
      {"core 1 1024 2 leg0 0 leg1 x", "Invalid offset"},
      {"core 1 1024" + legs + " x", "Invalid number of features"},
      {"core 1 1024" + legs + " 2 handle_errors", "Not enough arguments to support feature count"},
      {"core 1 1024" + legs + " 1 Handle_errors", "Unrecognised feature requested"},
      {"core 1 1024" + legs + " 1 keep_log", "keep_log feature requires the handle_errors feature"},
      {"core 1 1024" + legs + " 1 handle_errors more", "Too many mirror arguments"},
  };
  for (const auto& [args, error] : cases)
    EXPECT_EQ(build_error("0 4096 mirror " + args, resolver_), "mirror: " + error) << args;
  EXPECT_EQ(
      build_error("0 4096 mirror core 1 1024" + legs + " 2 handle_errors keep_log", resolver_),
      "(built)");
  EXPECT_NE(build_error("0 8192 mirror core 1 1024" + legs, resolver_).find("too small for target"),
            std::string::npos);
}

TEST_F(MirrorTest, TableAndStatusLinesAreTheKernels) {
  const std::vector<std::pair<std::string, std::string>> tables = {
      {"core 1 1024 2 leg0 0 leg1 0", "2 leg0 leg1 0/4 1 AA 1 core"},
      {"core 2 1024 nosync 2 leg0 0 leg1 0", "2 leg0 leg1 4/4 1 AA 1 core"},
      {"core 2 512 sync 2 leg0 0 leg1 8 1 handle_errors", "2 leg0 leg1 0/8 1 AA 1 core"},
      {"disk 2 log 1024 2 leg0 0 leg1 0 2 handle_errors keep_log",
       "2 leg0 leg1 0/4 1 AA 3 disk log A"},
      {"disk 3 log 1024 nosync 3 leg0 0 leg1 0 leg0 0", "3 leg0 leg1 leg0 4/4 1 AAA 3 disk log A"},
  };
  for (const auto& [args, want_status] : tables) {
    auto table = test::open_table("0 4088 mirror " + args, resolver_);
    EXPECT_EQ(table->table_text(), "0 4088 mirror " + args + "\n");
    // Before the first resume: the log has not been read yet.
    EXPECT_EQ(table->status_text(), "0 4088 mirror " + want_status + "\n") << args;
    run_sync(table->teardown());
  }
}

TEST_F(MirrorTest, ANewDiskLogResyncsEveryRegionAndEndsAllClean) {
  auto body = [&]() -> Task<void> {
    auto dev = co_await make("0 4096 mirror disk 2 log 1024 2 leg0 0 leg1 0");
    EXPECT_TRUE(co_await wait_in_sync(*dev, "4/4"));
    EXPECT_EQ(status(*dev), "0 4096 mirror 2 leg0 leg1 4/4 1 AA 3 disk log A\n");
    co_await dev->drop_tables();
  };
  run_sync(body());
  for (uint64_t r = 0; r < 4; ++r) EXPECT_TRUE(legs_equal(r)) << r;
  auto log = log_image();
  const uint8_t header[16] = {0x72, 0x52, 0x69, 0x4d, 2, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0};
  EXPECT_EQ(std::memcmp(log.data(), header, 16), 0);
  EXPECT_EQ(uint8_t(log[1024]), 0x0f);  // 4 regions clean, the rest of the long clear
  for (size_t i = 1025; i < 1032; ++i) EXPECT_EQ(uint8_t(log[i]), 0) << i;
}

// A table can go without a suspend (a server stopping with no client): the
// region just written is clean on the log all the same, as after a suspend.
TEST_F(MirrorTest, ATableDroppedRightAfterAWriteLeavesItsRegionClean) {
  auto body = [&]() -> Task<void> {
    auto dev = co_await make("0 4096 mirror disk 2 log 1024 2 leg0 0 leg1 0");
    EXPECT_TRUE(co_await wait_in_sync(*dev, "4/4"));
    auto data = filled(8, 0x5c);
    EXPECT_FALSE(co_await dev->write(kRegion * 512, data, 0));
    EXPECT_FALSE(clean_bit(log_image(), 1));  // marked before the write went out
    co_await dev->drop_tables();              // well inside the 100 ms of idle
  };
  run_sync(body());
  for (uint64_t r = 0; r < 4; ++r) EXPECT_TRUE(clean_bit(log_image(), r)) << r;
}

TEST_F(MirrorTest, ResyncCopiesExactlyTheDirtyRegionsAndKeepsTheRestOfTheHeader) {
  write_log(log_image(), 4, {1, 3});
  std::memset(log_image().data() + 16, 0x5a, 1024 - 16);  // the kernel keeps these bytes
  auto body = [&]() -> Task<void> {
    auto dev = co_await make("0 4096 mirror disk 2 log 1024 2 leg0 0 leg1 0");
    EXPECT_TRUE(co_await wait_in_sync(*dev, "4/4"));
    co_await dev->drop_tables();
  };
  run_sync(body());
  EXPECT_FALSE(legs_equal(0));
  EXPECT_TRUE(legs_equal(1));
  EXPECT_FALSE(legs_equal(2));
  EXPECT_TRUE(legs_equal(3));
  for (uint64_t r = 0; r < 4; ++r) EXPECT_TRUE(clean_bit(log_image(), r)) << r;
  for (size_t i = 16; i < 1024; ++i) ASSERT_EQ(uint8_t(log_image()[i]), 0x5a) << i;
}

TEST_F(MirrorTest, NosyncTrustsTheLegsAndSyncResyncsAClean) {
  write_log(log_image(), 4, {});
  auto nosync = [&]() -> Task<void> {
    auto dev = co_await make("0 4096 mirror core 2 1024 nosync 2 leg0 0 leg1 0");
    EXPECT_EQ(status(*dev), "0 4096 mirror 2 leg0 leg1 4/4 1 AA 1 core\n");
    co_await dev->drop_tables();
  };
  run_sync(nosync());
  for (uint64_t r = 0; r < 4; ++r) EXPECT_FALSE(legs_equal(r));
  auto force = [&]() -> Task<void> {
    auto dev = co_await make("0 4096 mirror disk 3 log 1024 sync 2 leg0 0 leg1 0");
    EXPECT_TRUE(co_await wait_in_sync(*dev, "4/4"));
    co_await dev->drop_tables();
  };
  run_sync(force());
  for (uint64_t r = 0; r < 4; ++r) EXPECT_TRUE(legs_equal(r));
}

// The kernel's order: the region's clean bit cleared and flushed on the log
// before the data goes to the legs; the legs flushed before the bit is set
// again (and that log write needs no flush).
TEST_F(MirrorTest, AWriteIsOrderedAroundTheLog) {
  write_log(log_image(), 4, {});
  std::vector<std::string> order;
  std::mutex order_mutex;
  auto record = [&](const std::string& name) {
    return [&, name](const Bio& bio) {
      const char* op = bio.op == BioOp::write ? "write" : bio.op == BioOp::flush ? "flush" : "read";
      std::lock_guard lk(order_mutex);
      order.push_back(name + " " + op);
      return ok();
    };
  };
  auto body = [&]() -> Task<void> {
    auto dev = co_await make("0 4096 mirror disk 2 log 1024 2 leg0 0 leg1 0");
    EXPECT_TRUE(co_await wait_in_sync(*dev, "4/4"));
    co_await settle();
    for (auto* d : {leg0_.get(), leg1_.get()}) d->set_fault(record(d->name()));
    log_->set_fault(record("log"));
    auto data = filled(8, 0xee);
    EXPECT_FALSE(co_await dev->write(2 * kRegion * 512, data, 0));
    co_await settle();
    co_await dev->drop_tables();
  };
  run_sync(body());
  ASSERT_EQ(order.size(), 7u);
  EXPECT_EQ(order[0], "log write");
  EXPECT_EQ(order[1], "log flush");
  std::vector<std::string> data_writes(order.begin() + 2, order.begin() + 4);
  std::sort(data_writes.begin(), data_writes.end());
  EXPECT_EQ(data_writes, (std::vector<std::string>{"leg0 write", "leg1 write"}));
  std::vector<std::string> leg_flushes(order.begin() + 4, order.begin() + 6);
  std::sort(leg_flushes.begin(), leg_flushes.end());
  EXPECT_EQ(leg_flushes, (std::vector<std::string>{"leg0 flush", "leg1 flush"}));
  EXPECT_EQ(order[6], "log write");
  EXPECT_TRUE(clean_bit(log_image(), 2));
  EXPECT_EQ(uint8_t(leg1_->memory()->bytes(2 * kRegion, 1)[0]), 0xee);
}

TEST_F(MirrorTest, ManyWritesShareOneLogFlush) {
  write_log(log_image(), 4, {});
  auto body = [&]() -> Task<void> {
    auto dev = co_await make("0 4096 mirror disk 2 log 1024 2 leg0 0 leg1 0");
    EXPECT_TRUE(co_await wait_in_sync(*dev, "4/4"));
    co_await settle();
    log_->clear();
    leg0_->set_hops(3);  // writes stay in flight together
    std::vector<Task<Status>> writes;
    std::vector<std::vector<std::byte>> bufs;
    for (int i = 0; i < 32; ++i) bufs.push_back(filled(8, uint8_t(i)));
    for (int i = 0; i < 32; ++i)
      writes.push_back(
          dev->write(uint64_t(i % 4) * kRegion * 512 + uint64_t(i) * 4096, bufs[i], 0));
    const std::vector<Status> results = co_await when_all(writes);
    EXPECT_FALSE(first_error(results));
    co_await settle();
    co_await dev->drop_tables();
  };
  run_sync(body());
  // Four regions marked: far fewer log flushes than writes.
  EXPECT_LE(log_->bios(BioOp::flush).size(), 4u);
  for (uint64_t r = 0; r < 4; ++r) EXPECT_TRUE(clean_bit(log_image(), r));
}

TEST_F(MirrorTest, WithoutHandleErrorsAFailedLegWriteSucceedsAndItsRegionIsResyncedLater) {
  write_log(log_image(), 4, {});
  uint64_t events_before = 0, events_after = 0;
  auto body = [&]() -> Task<void> {
    auto dev = co_await make("0 4096 mirror disk 2 log 1024 2 leg0 0 leg1 0");
    EXPECT_TRUE(co_await wait_in_sync(*dev, "4/4"));
    events_before = dev->event_nr();
    leg1_->set_fault([](const Bio& b) { return b.op == BioOp::write ? errno_status(EIO) : ok(); });
    auto data = filled(8, 0xee);
    EXPECT_FALSE(co_await dev->write(kRegion * 512, data, 0));
    co_await settle();
    EXPECT_EQ(status(*dev), "0 4096 mirror 2 leg0 leg1 3/4 1 AD 3 disk log A\n");
    events_after = dev->event_nr();
    co_await dev->drop_tables();
  };
  run_sync(body());
  EXPECT_EQ(events_after, events_before);
  EXPECT_FALSE(clean_bit(log_image(), 1));  // resynced at the next activation
  EXPECT_TRUE(clean_bit(log_image(), 0));
  leg1_->set_fault(nullptr);
  auto again = [&]() -> Task<void> {
    auto dev = co_await make("0 4096 mirror disk 2 log 1024 2 leg0 0 leg1 0");
    EXPECT_TRUE(co_await wait_in_sync(*dev, "4/4"));
    co_await dev->drop_tables();
  };
  run_sync(again());
  EXPECT_TRUE(legs_equal(1));
  EXPECT_EQ(uint8_t(leg1_->memory()->bytes(kRegion, 1)[0]), 0xee);
}

TEST_F(MirrorTest, HandleErrorsHoldsAFailedWriteUntilSuspendAndRaisesAnEvent) {
  write_log(log_image(), 4, {});
  auto body = [&]() -> Task<void> {
    auto dev = co_await make("0 4096 mirror disk 2 log 1024 2 leg0 0 leg1 0 1 handle_errors");
    EXPECT_TRUE(co_await wait_in_sync(*dev, "4/4"));
    const uint64_t events = dev->event_nr();
    leg1_->set_fault([](const Bio& b) { return b.op == BioOp::write ? errno_status(EIO) : ok(); });
    std::optional<Status> result;
    auto data = filled(8, 0xee);
    asio::co_spawn(co_await asio::this_coro::executor, dev->write(0, data, 0),
                   [&](std::exception_ptr, Status st) { result = st; });
    co_await sleep_ms(50);
    EXPECT_FALSE(result.has_value());  // held
    EXPECT_GT(dev->event_nr(), events);
    EXPECT_NE(status(*dev).find(" AD "), std::string::npos) << status(*dev);
    co_await dev->suspend(false);
    for (int i = 0; i < 100 && !result; ++i) co_await sleep_ms(5);
    EXPECT_TRUE(result.has_value() && *result == std::errc::io_error);
    co_await dev->resume();
    co_await dev->drop_tables();
  };
  run_sync(body());
  EXPECT_FALSE(clean_bit(log_image(), 0));
}

// What dmeventd does about a failed leg: suspend --noflush (the held write
// goes back to the device), a table without the leg, resume: the write goes
// again, to the new table, and the client sees no error.
TEST_F(MirrorTest, ANoflushSuspendRequeuesAHeldWriteIntoTheNextTable) {
  write_log(log_image(), 4, {});
  auto body = [&]() -> Task<void> {
    auto dev = co_await make("0 4096 mirror disk 2 log 1024 2 leg0 0 leg1 0 1 handle_errors");
    EXPECT_TRUE(co_await wait_in_sync(*dev, "4/4"));
    leg1_->set_fault([](const Bio& b) { return b.op == BioOp::write ? errno_status(EIO) : ok(); });
    std::optional<Status> result;
    auto data = filled(8, 0xee);
    asio::co_spawn(co_await asio::this_coro::executor, dev->write(kRegion * 512, data, 0),
                   [&](std::exception_ptr, Status st) { result = st; });
    co_await sleep_ms(50);
    EXPECT_FALSE(result.has_value());  // held
    co_await dev->suspend(true);
    EXPECT_FALSE(result.has_value());  // given back to the device, waiting for the resume
    co_await load(*dev, "0 4096 linear leg0 0");
    leg0_->clear();
    EXPECT_FALSE(co_await dev->resume());
    for (int i = 0; i < 100 && !result; ++i) co_await sleep_ms(5);
    EXPECT_TRUE(result.has_value() && !*result);
    EXPECT_EQ(leg0_->bios(BioOp::write).size(), 1u);  // sent again, through the linear table
    co_await dev->drop_tables();
  };
  run_sync(body());
  EXPECT_EQ(uint8_t(leg0_->memory()->bytes(kRegion, 1)[0]), 0xee);
}

TEST_F(MirrorTest, KeepLogCompletesAFailedWriteAndKeepsTheRegionOutOfSync) {
  write_log(log_image(), 4, {});
  auto body = [&]() -> Task<void> {
    auto dev =
        co_await make("0 4096 mirror disk 2 log 1024 2 leg0 0 leg1 0 2 handle_errors keep_log");
    EXPECT_TRUE(co_await wait_in_sync(*dev, "4/4"));
    const uint64_t events = dev->event_nr();
    leg1_->set_fault([](const Bio& b) { return b.op == BioOp::write ? errno_status(EIO) : ok(); });
    auto data = filled(8, 0xee);
    EXPECT_FALSE(co_await dev->write(3 * kRegion * 512, data, 0));
    EXPECT_GT(dev->event_nr(), events);
    co_await settle();
    EXPECT_EQ(status(*dev), "0 4096 mirror 2 leg0 leg1 3/4 1 AD 3 disk log A\n");
    co_await dev->drop_tables();
  };
  run_sync(body());
  EXPECT_FALSE(clean_bit(log_image(), 3));
}

TEST_F(MirrorTest, AReadErrorFallsBackToAnInSyncLegAndFailsOverTheDefault) {
  auto body = [&]() -> Task<void> {
    auto dev = co_await make("0 4096 mirror core 2 1024 nosync 2 leg0 0 leg1 0 1 handle_errors");
    co_await settle();  // in sync (an event): only then may the default leg change
    const uint64_t events = dev->event_nr();
    leg0_->set_fault([](const Bio& b) { return b.op == BioOp::read ? errno_status(EIO) : ok(); });
    std::vector<std::byte> buf(512);
    EXPECT_FALSE(co_await dev->read(5 * 512, buf, nullptr));
    EXPECT_EQ(uint8_t(buf[0]), 105);  // leg 1's pattern
    EXPECT_GT(dev->event_nr(), events);
    EXPECT_EQ(status(*dev), "0 4096 mirror 2 leg0 leg1 4/4 1 RA 1 core\n");
    // Leg 1 is the default now: reads go there first.
    leg0_->clear();
    EXPECT_FALSE(co_await dev->read(6 * 512, buf, nullptr));
    EXPECT_TRUE(leg0_->bios(BioOp::read).empty());
    co_await dev->drop_tables();
  };
  run_sync(body());
}

TEST_F(MirrorTest, OutOfSyncRegionsAreReadFromTheDefaultLegOnly) {
  auto body = [&]() -> Task<void> {
    // A core log without nosync starts out of sync; a slow copy keeps it so.
    leg1_->set_hops([](const Bio& b) { return b.op == BioOp::write ? 200u : 0u; });
    auto dev = co_await make("0 4096 mirror core 1 1024 2 leg0 0 leg1 0");
    leg0_->set_fault([](const Bio& b) { return b.op == BioOp::read ? errno_status(EIO) : ok(); });
    std::vector<std::byte> buf(512);
    const Status st = co_await dev->read(3 * kRegion * 512, buf, nullptr);
    EXPECT_EQ(st, std::errc::io_error);
    EXPECT_TRUE(leg1_->bios(BioOp::read).empty());
    leg0_->set_fault(nullptr);
    co_await dev->drop_tables();
  };
  run_sync(body());
}

// Power goes at any point of a run of writes, on the one disk that holds
// both legs and the log. Whatever the disk kept, a region the log says is
// clean holds the same bytes on both legs, and after the next activation's
// resync the legs are identical and every write that was acknowledged with
// FUA reads back.
TEST_F(MirrorTest, CrashAtAnyPointLeavesEveryCleanRegionInSync) {
  for (uint64_t stop_after = 0; stop_after < 40; stop_after += 3)
    for (int keep : {-1, 1}) {
      SCOPED_TRACE("stop after " + std::to_string(stop_after) + " keep " + std::to_string(keep));
      auto disk = std::make_shared<MemoryDevice>(2 * kLegSectors + 16, "disk");
      disk->fill_pattern(0);
      auto power = std::make_shared<test::CrashDevice>(disk, "disk");
      resolver_.add("disk", power);
      std::vector<uint64_t> durable;  // sectors written with FUA and acknowledged
      auto run = [&](bool writes) -> Task<void> {
        auto l0 = std::make_shared<Device>("l0", "", false, 0);
        auto l1 = std::make_shared<Device>("l1", "", false, 1);
        auto lg = std::make_shared<Device>("lg", "", false, 2);
        const std::pair<Device*, std::string> parts[] = {{l0.get(), "0 4096 linear disk 0"},
                                                         {l1.get(), "0 4096 linear disk 4096"},
                                                         {lg.get(), "0 16 linear disk 8192"}};
        for (const auto& [d, t] : parts) {
          std::shared_ptr<Table> built = Table::build(t, resolver_, false, [] {});
          co_await built->open();
          co_await d->load(built);
          co_await d->resume();
        }
        resolver_.add("l0", l0);
        resolver_.add("l1", l1);
        resolver_.add("lg", lg);
        auto dev = co_await make("0 4096 mirror disk 2 lg 1024 2 l0 0 l1 0");
        if (writes) {
          EXPECT_TRUE(co_await wait_in_sync(*dev, "4/4"));
          power->power_off_after(stop_after);
          for (uint64_t i = 0; i < 12; ++i) {
            const uint64_t sector = (i % 4) * kRegion + i * 8;
            auto data = filled(8, uint8_t(0xa0 + i));
            const uint32_t fua = i % 3 == 0 ? kBioFua : 0;
            if (!(co_await dev->write(sector * 512, data, fua)) && fua) durable.push_back(sector);
          }
          co_await settle();
        } else {
          // After the crash: first what the disk kept, then the resync.
          EXPECT_TRUE(co_await wait_in_sync(*dev, "4/4"));
        }
        co_await dev->drop_tables();
        for (auto* d : {l0.get(), l1.get(), lg.get()}) co_await d->drop_tables();
      };
      run_sync(run(true));
      ASSERT_FALSE(run_sync(keep < 0 ? power->crash() : power->crash(uint64_t(stop_after + keep))));
      auto leg = [&](int n, uint64_t r) {
        return disk->bytes(n * kLegSectors + r * kRegion, kRegion);
      };
      auto log = disk->bytes(2 * kLegSectors, 16);
      const bool valid_log = uint8_t(log[0]) == 0x72 && uint8_t(log[3]) == 0x4d;
      for (uint64_t r = 0; r < 4 && valid_log; ++r)
        if (clean_bit(log, r))
          EXPECT_EQ(std::memcmp(leg(0, r).data(), leg(1, r).data(), kRegion * 512), 0) << r;
      run_sync(run(false));
      for (uint64_t r = 0; r < 4; ++r)
        EXPECT_EQ(std::memcmp(leg(0, r).data(), leg(1, r).data(), kRegion * 512), 0) << r;
      for (uint64_t sector : durable)
        EXPECT_EQ(uint8_t(disk->bytes(sector, 1)[0]) & 0xf0, 0xa0) << sector;
    }
}

}  // namespace
}  // namespace dmnbd
