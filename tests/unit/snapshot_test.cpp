// snapshot and snapshot-origin: constructor errors in the kernel's words,
// copy-on-write through the origin, writes to the snapshot, status lines,
// overflow and invalidation, handover on reload, and crashes of the COW.
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
using test::CrashDevice;
using test::MemoryDevice;
using test::run_sync;

constexpr uint64_t kOriginSectors = 1024;

std::vector<std::byte> filled(uint64_t sectors, uint8_t value) {
  return std::vector<std::byte>(sectors << kSectorShift, std::byte{value});
}

uint8_t first_byte(Device& dev, uint64_t sector) {
  std::vector<std::byte> buf(512);
  EXPECT_FALSE(run_sync(dev.read(sector << kSectorShift, buf, nullptr)));
  return std::to_integer<uint8_t>(buf[0]);
}

class SnapshotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    origin_->fill_pattern(0);  // sector i holds (i & 0xff)
    resolver_.add("base", origin_);
    resolver_.add("cow", cow_disk_);
  }
  void TearDown() override { drop(); }

  // The usual pair, as `dmnbd snapshot create` and dmsetup users build it.
  void make_pair(const std::string& store = "P", uint32_t chunk = 8) {
    origin_dev_ = test::make_device("0 1024 snapshot-origin base", resolver_, false, "origin");
    snap_dev_ = test::make_device("0 1024 snapshot base cow " + store + " " + std::to_string(chunk),
                                  resolver_, false, "snap");
  }
  void drop() {
    for (auto* d : {&snap_dev_, &origin_dev_})
      if (*d) {
        run_sync((*d)->drop_tables());
        d->reset();
      }
  }
  std::string status() { return status_of(*snap_dev_); }
  static std::string status_of(Device& dev) { return dev.live_table()->status_text(); }
  void write(Device& dev, uint64_t sector, uint64_t sectors, uint8_t value) {
    auto buf = filled(sectors, value);
    ASSERT_FALSE(run_sync(dev.write(sector << kSectorShift, buf, 0)));
  }

  std::shared_ptr<MemoryDevice> origin_ = std::make_shared<MemoryDevice>(kOriginSectors, "base");
  std::shared_ptr<BlockDevice> cow_disk_ = std::make_shared<MemoryDevice>(4096, "cow");
  test::TempDir dir_;
  test::DirResolver resolver_{dir_.path()};
  std::shared_ptr<Device> origin_dev_, snap_dev_;
};

TEST_F(SnapshotTest, ConstructorErrorsInTheKernelsWords) {
  EXPECT_EQ(build_error("0 64 snapshot base cow P", resolver_),
            "snapshot: requires 4 or more arguments");
  EXPECT_EQ(build_error("0 64 snapshot base cow P 8 1", resolver_),
            "snapshot: Invalid number of feature arguments");
  EXPECT_EQ(build_error("0 64 snapshot base cow P 8 1 nosuch", resolver_),
            "snapshot: Unrecognised feature requested");
  EXPECT_EQ(build_error("0 64 snapshot base cow P 8 1 discard_passdown_origin", resolver_),
            "snapshot: discard_passdown_origin feature depends on discard_zeroes_cow");
  EXPECT_EQ(build_error("0 64 snapshot base base P 8", resolver_),
            "snapshot: COW device cannot be the same as origin device");
  EXPECT_EQ(build_error("0 64 snapshot base cow X 8", resolver_)
                .rfind("snapshot: Couldn't create exception store (", 0),
            0u);
  EXPECT_EQ(build_error("0 64 snapshot base cow P 7", resolver_)
                .rfind("snapshot: Couldn't create exception store (", 0),
            0u);
  EXPECT_EQ(build_error("0 64 snapshot nosuch.img cow P 8", resolver_)
                .rfind("snapshot: Cannot get origin device (", 0),
            0u);
  EXPECT_EQ(build_error("0 64 snapshot base nosuch.img P 8", resolver_)
                .rfind("snapshot: Cannot get COW device (", 0),
            0u);
  EXPECT_EQ(build_error("0 64 snapshot-origin", resolver_),
            "snapshot-origin: origin: incorrect number of arguments");
  EXPECT_EQ(build_error("0 64 snapshot-origin base base", resolver_),
            "snapshot-origin: origin: incorrect number of arguments");
  EXPECT_NE(build_error("0 2048 snapshot-origin base", resolver_).find("too small for target"),
            std::string::npos);
}

TEST_F(SnapshotTest, CorruptCowIsRefusedAtLoad) {
  auto& cow = static_cast<MemoryDevice&>(*cow_disk_);
  std::memcpy(cow.bytes().data(), "junk", 4);
  EXPECT_EQ(build_error("0 1024 snapshot base cow P 8", resolver_),
            "snapshot: Failed to read snapshot metadata");
}

TEST_F(SnapshotTest, TableAndFreshStatus) {
  make_pair("P", 8);
  EXPECT_EQ(snap_dev_->live_table()->table_text(), "0 1024 snapshot base cow P 8\n");
  EXPECT_EQ(origin_dev_->live_table()->table_text(), "0 1024 snapshot-origin base\n");
  EXPECT_EQ(status(), "0 1024 snapshot 16/4096 16\n");
  EXPECT_EQ(origin_dev_->live_table()->status_text(), "0 1024 snapshot-origin\n");
}

TEST_F(SnapshotTest, OriginWritesCopyTheOldChunkOutFirst) {
  make_pair();
  write(*origin_dev_, 100, 1, 0xee);  // chunk 12 (sectors 96..103)
  EXPECT_EQ(first_byte(*origin_dev_, 100), 0xee);
  EXPECT_EQ(first_byte(*snap_dev_, 100), 100);
  EXPECT_EQ(first_byte(*snap_dev_, 96), 96);
  EXPECT_EQ(status(), "0 1024 snapshot 24/4096 16\n");
  write(*origin_dev_, 101, 1, 0xdd);  // the same chunk: no second copy
  EXPECT_EQ(first_byte(*snap_dev_, 101), 101);
  EXPECT_EQ(status(), "0 1024 snapshot 24/4096 16\n");
}

TEST_F(SnapshotTest, WritesToTheSnapshotLeaveTheOriginAlone) {
  make_pair();
  write(*snap_dev_, 9, 1, 0xaa);  // part of chunk 1: copied first
  EXPECT_EQ(first_byte(*snap_dev_, 9), 0xaa);
  EXPECT_EQ(first_byte(*snap_dev_, 8), 8);
  EXPECT_EQ(first_byte(*snap_dev_, 15), 15);
  EXPECT_EQ(first_byte(*origin_dev_, 9), 9);
  write(*snap_dev_, 16, 8, 0xbb);  // all of chunk 2: written in place of a copy
  EXPECT_EQ(first_byte(*snap_dev_, 16), 0xbb);
  EXPECT_EQ(first_byte(*snap_dev_, 23), 0xbb);
  EXPECT_EQ(first_byte(*origin_dev_, 16), 16);
  EXPECT_EQ(status(), "0 1024 snapshot 32/4096 16\n");
}

TEST_F(SnapshotTest, ConcurrentOriginWritesToOneChunkCopyItOnce) {
  make_pair();
  run_sync([](Device& dev) -> Task<void> {
    std::vector<std::vector<std::byte>> bufs;
    for (int i = 0; i < 8; ++i) bufs.push_back(filled(1, static_cast<uint8_t>(0xc0 + i)));
    std::vector<Task<Status>> writes;
    for (int i = 0; i < 8; ++i) writes.push_back(dev.write((200 + i) * 512, bufs[i], 0));
    auto results = co_await when_all(std::span(writes));
    EXPECT_FALSE(first_error(results));
  }(*origin_dev_));
  for (uint64_t s = 200; s < 208; ++s) EXPECT_EQ(first_byte(*snap_dev_, s), s & 0xff);
  EXPECT_EQ(status(), "0 1024 snapshot 24/4096 16\n");  // chunk 25 alone
}

TEST_F(SnapshotTest, ExceptionsSurviveAReload) {
  make_pair();
  write(*origin_dev_, 40, 16, 0x11);  // chunks 5 and 6
  write(*snap_dev_, 500, 1, 0x22);
  drop();
  origin_->bytes(40, 16)[0] = std::byte{0x33};  // the origin changes behind the snapshot's back
  make_pair();
  EXPECT_EQ(first_byte(*snap_dev_, 40), 40);
  EXPECT_EQ(first_byte(*snap_dev_, 55), 55);
  EXPECT_EQ(first_byte(*snap_dev_, 500), 0x22);
  EXPECT_EQ(status(), "0 1024 snapshot 40/4096 16\n");
}

TEST_F(SnapshotTest, AReloadedTableTakesTheLiveSnapshotOver) {
  make_pair();
  write(*origin_dev_, 0, 1, 0x44);
  // Overwrite the COW's header: a handover must not read it again.
  auto& cow = static_cast<MemoryDevice&>(*cow_disk_);
  std::vector<std::byte> saved(cow.bytes(0, 1).begin(), cow.bytes(0, 1).end());
  std::memcpy(cow.bytes().data(), "junk", 4);
  ASSERT_NO_THROW(
      run_sync(snap_dev_->load(test::open_table("0 1024 snapshot base cow P 8", resolver_))));
  ASSERT_FALSE(run_sync(snap_dev_->resume()));
  EXPECT_EQ(first_byte(*snap_dev_, 0), 0);
  EXPECT_EQ(status(), "0 1024 snapshot 24/4096 16\n");
  std::memcpy(cow.bytes().data(), saved.data(), saved.size());
}

TEST_F(SnapshotTest, ManySnapshotsOfOneOrigin) {
  auto cow2 = std::make_shared<MemoryDevice>(4096, "cow2");
  resolver_.add("cow2", cow2);
  make_pair("P", 8);
  write(*origin_dev_, 0, 1, 0x01);
  auto snap2 = test::make_device("0 1024 snapshot base cow2 P 16", resolver_, false, "snap2");
  write(*origin_dev_, 0, 1, 0x02);
  write(*origin_dev_, 64, 1, 0x03);
  EXPECT_EQ(first_byte(*snap_dev_, 0), 0);
  EXPECT_EQ(first_byte(*snap2, 0), 0x01);
  EXPECT_EQ(first_byte(*snap_dev_, 64), 64);
  EXPECT_EQ(first_byte(*snap2, 64), 64);
  EXPECT_EQ(snap2->live_table()->status_text(), "0 1024 snapshot 64/4096 32\n");
  run_sync(snap2->drop_tables());
}

// An origin write already under way when a snapshot resumes made no copy for
// it: the resume waits until it has landed (the kernel fast-suspends the
// origin for this), so the snapshot never changes after it is made.
TEST_F(SnapshotTest, AResumingSnapshotWaitsForOriginWritesUnderWay) {
  auto slow = std::make_shared<test::RecordingDevice>(origin_, "base");
  resolver_.add("base", slow);
  origin_dev_ = test::make_device("0 1024 snapshot-origin base", resolver_, false, "origin");
  slow->set_hops([](const Bio& b) { return b.op == BioOp::write ? 500u : 0u; });
  const std::string seen =
      run_sync([](Device& origin, DeviceResolver& resolver) -> Task<std::string> {
        bool landed = false;
        auto data = filled(1, 0x99);
        asio::co_spawn(
            co_await asio::this_coro::executor,
            [](Device& dev, std::span<std::byte> buf, bool& landed) -> Task<void> {
              co_await dev.write(300 * 512, buf, 0);
              landed = true;
            }(origin, data, landed),
            asio::detached);
        co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
        auto snap = std::make_shared<Device>("snap", "", false, 1);
        std::shared_ptr<Table> table =
            Table::build("0 1024 snapshot base cow P 8", resolver, false, snap->event_callback());
        co_await table->open();
        co_await snap->load(table);
        co_await snap->resume();
        const bool landed_at_resume = landed;
        std::vector<std::byte> first(512), second(512);
        co_await snap->read(300 * 512, first, nullptr);
        asio::steady_timer timer(co_await asio::this_coro::executor);
        while (!landed) {
          timer.expires_after(std::chrono::milliseconds(1));
          co_await timer.async_wait(asio::use_awaitable);
        }
        co_await snap->read(300 * 512, second, nullptr);
        co_await snap->drop_tables();
        co_return std::string(landed_at_resume ? "landed" : "in flight") + " " +
            std::to_string(std::to_integer<int>(first[0])) + " " +
            std::to_string(std::to_integer<int>(second[0]));
      }(*origin_dev_, resolver_));
  // The write counts as before the snapshot: it is in it, and stays.
  EXPECT_EQ(seen, "landed 153 153");
}

TEST_F(SnapshotTest, FullCowWithPOOverflowsAndStaysReadable) {
  cow_disk_ = std::make_shared<MemoryDevice>(40, "cow");  // header, area, 3 data chunks
  resolver_.add("cow", cow_disk_);
  make_pair("PO", 8);
  for (int c = 0; c < 3; ++c) write(*snap_dev_, c * 8, 8, 0x50 + c);
  auto buf = filled(8, 0x60);
  EXPECT_EQ(run_sync(snap_dev_->write(3 * 8 * 512, buf, 0)), errno_status(EIO));
  EXPECT_EQ(status(), "0 1024 snapshot Overflow\n");
  EXPECT_EQ(first_byte(*snap_dev_, 8), 0x51);
  EXPECT_EQ(first_byte(*snap_dev_, 100), 100);
}

TEST_F(SnapshotTest, FullCowWithPInvalidatesAndTheOriginGoesOn) {
  cow_disk_ = std::make_shared<MemoryDevice>(40, "cow");
  resolver_.add("cow", cow_disk_);
  make_pair("P", 8);
  const uint64_t events = snap_dev_->event_nr();
  for (int c = 0; c < 4; ++c) write(*origin_dev_, c * 8, 1, 0x70);
  EXPECT_EQ(status(), "0 1024 snapshot Invalid\n");
  EXPECT_GT(snap_dev_->event_nr(), events);
  std::vector<std::byte> buf(512);
  EXPECT_EQ(run_sync(snap_dev_->read(0, buf, nullptr)), errno_status(EIO));
  EXPECT_EQ(first_byte(*origin_dev_, 24), 0x70);
  // On disk: the header says invalid, and a reload keeps it so.
  auto& cow = static_cast<MemoryDevice&>(*cow_disk_);
  EXPECT_EQ(std::to_integer<int>(cow.bytes()[4]), 0);
  drop();
  make_pair("P", 8);
  EXPECT_EQ(status(), "0 1024 snapshot Invalid\n");
}

TEST_F(SnapshotTest, TransientStoreKeepsExceptionsInMemory) {
  make_pair("N", 8);
  EXPECT_EQ(status(), "0 1024 snapshot 0/4096 0\n");
  write(*origin_dev_, 10, 1, 0x99);
  EXPECT_EQ(first_byte(*snap_dev_, 10), 10);
  EXPECT_EQ(status(), "0 1024 snapshot 8/4096 0\n");
  EXPECT_EQ(snap_dev_->live_table()->table_text(), "0 1024 snapshot base cow N 8\n");
}

// Runs a merge to its end inside one event loop (the merge is a background
// job of the loop its device was resumed on): loads `table` into `dev`,
// resumes it and polls its status until the merge is done or failed.
std::string merge_to_the_end(Device& dev, const std::string& table, DeviceResolver& resolver) {
  return run_sync(
      [](Device& dev, std::string table, DeviceResolver& resolver) -> Task<std::string> {
        std::shared_ptr<Table> built = Table::build(table, resolver, false, dev.event_callback());
        co_await built->open();
        co_await dev.load(built);
        if (Status st = co_await dev.resume()) co_return "resume failed: " + st.message();
        asio::steady_timer timer(co_await asio::this_coro::executor);
        std::string status;
        for (int i = 0; i < 2000; ++i) {
          status = dev.live_table()->status_text();
          // Merged: allocated == metadata == 2 chunks (16/T 16 at chunk 8).
          if (status.find(" 16/") != std::string::npos && status.ends_with(" 16\n")) break;
          if (status.find("failed") != std::string::npos) break;
          timer.expires_after(std::chrono::milliseconds(5));
          co_await timer.async_wait(asio::use_awaitable);
        }
        // The merge's last batch may still be finishing its bookkeeping.
        co_await dev.suspend(false);
        co_await dev.resume();
        co_return status;
      }(dev, table, resolver));
}

std::vector<std::byte> whole(Device& dev) {
  std::vector<std::byte> buf(dev.size_bytes());
  EXPECT_FALSE(run_sync(dev.read(0, buf, nullptr)));
  return buf;
}

TEST_F(SnapshotTest, MergeHandsTheLiveSnapshotOverAndCopiesItBack) {
  make_pair();
  // Runs of consecutive chunks (merged in one batch) and single ones, in
  // more than one area (256 exceptions per area at chunk 8).
  for (uint64_t c : {3, 4, 5, 6, 40, 41, 90}) write(*origin_dev_, c * 8, 8, 0xe0);
  for (uint64_t c = 0; c < 120; c += 1) write(*snap_dev_, c * 8 + 1, 1, uint8_t(0x10 + c));
  const std::vector<std::byte> view = whole(*snap_dev_);
  ASSERT_NE(view, whole(*origin_dev_));
  const uint64_t events = origin_dev_->event_nr();
  // dmsetup's order: the snapshot suspended, then the origin reloaded.
  ASSERT_FALSE(run_sync(snap_dev_->suspend(false)));
  const std::string status =
      merge_to_the_end(*origin_dev_, "0 1024 snapshot-merge base cow P 8", resolver_);
  EXPECT_EQ(status, "0 1024 snapshot-merge 16/4096 16\n");
  EXPECT_EQ(whole(*origin_dev_), view);
  EXPECT_EQ(std::vector<std::byte>(origin_->bytes().begin(), origin_->bytes().end()), view);
  EXPECT_GT(origin_dev_->event_nr(), events);  // dmnbd raises one when the merge is done
  ASSERT_FALSE(run_sync(snap_dev_->resume()));
  EXPECT_EQ(status_of(*snap_dev_), "0 1024 snapshot Invalid\n");  // handed over
  std::vector<std::byte> buf(512);
  EXPECT_EQ(run_sync(snap_dev_->read(0, buf, nullptr)), errno_status(EIO));
  // The COW's areas end all zero, its header as it was.
  auto& cow = static_cast<MemoryDevice&>(*cow_disk_);
  for (uint64_t area_sector : {8, 8 + 257 * 8})
    for (std::byte b : cow.bytes(area_sector, 8)) ASSERT_EQ(b, std::byte{0});
  EXPECT_EQ(std::memcmp(cow.bytes().data(), "SnAp", 4), 0);
}

TEST_F(SnapshotTest, MergeOfACowAloneGoesOnFromTheDisk) {
  make_pair();
  for (uint64_t c : {7, 8, 9, 100}) write(*origin_dev_, c * 8 + 2, 1, 0xd0);
  write(*snap_dev_, 110 * 8, 8, 0x5a);
  const std::vector<std::byte> view = whole(*snap_dev_);
  drop();
  // As after a restart: a snapshot-merge line over the COW, no live snapshot.
  auto merging = test::make_device("0 1024 error", resolver_, false, "merging");
  EXPECT_EQ(merge_to_the_end(*merging, "0 1024 snapshot-merge base cow P 8", resolver_),
            "0 1024 snapshot-merge 16/4096 16\n");
  EXPECT_EQ(whole(*merging), view);
  run_sync(merging->drop_tables());
}

// A COW that cannot be read stops the merge: status "Merge failed" (the
// kernel's merge_callback on a read error), the origin keeps what was merged.
TEST_F(SnapshotTest, AReadErrorStopsTheMergeWithMergeFailed) {
  auto cow = std::make_shared<test::RecordingDevice>(cow_disk_, "cow");
  resolver_.add("cow", cow);
  make_pair();
  for (uint64_t c : {3, 9, 27}) write(*origin_dev_, c * 8, 1, 0xe0);
  ASSERT_FALSE(run_sync(snap_dev_->suspend(false)));
  cow->set_fault([](const Bio& b) { return b.op == BioOp::read ? errno_status(EIO) : ok(); });
  EXPECT_EQ(merge_to_the_end(*origin_dev_, "0 1024 snapshot-merge base cow P 8", resolver_),
            "0 1024 snapshot-merge Merge failed\n");
  cow->set_fault(nullptr);
}

TEST_F(SnapshotTest, MergeRefusesATransientStore) {
  EXPECT_EQ(build_error("0 1024 snapshot-merge base cow N 8", resolver_),
            "snapshot-merge: Snapshot exception store does not support snapshot-merge.");
}

// A crash of the whole machine at any point: the origin and the COW live on
// one disk that loses power at once and forgets what no flush or FUA
// covered (all of it, or a random part). After it, the snapshot still reads
// every chunk as it was when the snapshot was made, and no write that was
// acknowledged with FUA is lost, on the origin or on the snapshot.
TEST_F(SnapshotTest, CrashAtAnyPointKeepsTheSnapshotAndEveryDurableWrite) {
  constexpr uint64_t kChunks = 8;
  for (uint64_t stop_after = 0; stop_after < 60; stop_after += 3)
    for (int keep : {-1, 0, 1}) {
      SCOPED_TRACE("stop after " + std::to_string(stop_after) + " keep " + std::to_string(keep));
      auto disk = std::make_shared<MemoryDevice>(kOriginSectors + 4096, "disk");
      disk->fill_pattern(0);
      std::memset(disk->bytes(kOriginSectors).data(), 0, 4096 * 512);
      auto power = std::make_shared<CrashDevice>(disk, "disk");
      resolver_.add("disk", power);
      auto build = [&] {
        auto real = test::make_device("0 1024 linear disk 0", resolver_, false, "base-real");
        auto cow = test::make_device("0 4096 linear disk 1024", resolver_, false, "cowdev");
        resolver_.add("base-real", real);
        resolver_.add("cowdev", cow);
        origin_dev_ = test::make_device("0 1024 snapshot-origin base-real", resolver_, false, "o");
        snap_dev_ =
            test::make_device("0 1024 snapshot base-real cowdev P 8", resolver_, false, "s");
        return std::vector{real, cow};
      };
      auto lower = build();
      power->power_off_after(stop_after);
      std::vector<uint64_t> durable_origin, durable_snap;
      for (uint64_t c = 0; c < kChunks; ++c) {
        auto a = filled(1, 0xfe);
        const uint32_t fua_a = (c % 2) ? kBioFua : 0;
        if (!run_sync(origin_dev_->write(c * 8 * 512, a, fua_a)) && fua_a)
          durable_origin.push_back(c);
        auto b = filled(1, static_cast<uint8_t>(0xa0 + c));
        const uint64_t snap_sector = 201 + c * 8;
        const uint32_t fua_b = (c % 2) ? 0 : kBioFua;
        if (!run_sync(snap_dev_->write(snap_sector * 512, b, fua_b)) && fua_b)
          durable_snap.push_back(c);
      }
      ASSERT_FALSE(run_sync(keep < 0 ? power->crash() : power->crash(uint64_t(stop_after + keep))));
      drop();
      for (auto& d : lower) run_sync(d->drop_tables());
      lower = build();
      ASSERT_EQ(status().find("Invalid"), std::string::npos);
      for (uint64_t c = 0; c < kChunks; ++c)
        EXPECT_EQ(first_byte(*snap_dev_, c * 8), (c * 8) & 0xff);
      for (uint64_t c : durable_origin) EXPECT_EQ(first_byte(*origin_dev_, c * 8), 0xfe);
      for (uint64_t c : durable_snap) EXPECT_EQ(first_byte(*snap_dev_, 201 + c * 8), 0xa0 + c);
      drop();
      for (auto& d : lower) run_sync(d->drop_tables());
    }
}

}  // namespace
}  // namespace dmnbd
