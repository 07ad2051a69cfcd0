// raid (dm-raid): constructor errors in the kernel's words, table and status
// lines, md's raid0/raid10 layouts, the superblock and bitmap formats, a new
// set's resync, the bitmap's write order, a failed leg and its recovery of
// just what it missed, check/repair, degraded reads and crashes at any point.
#include <gtest/gtest.h>

#include <boost/asio/steady_timer.hpp>
#include <cstring>
#include <set>

#include "../../targets/raid/raid_layout.hpp"
#include "devices/crash_device.hpp"
#include "dmnbd/when_all.hpp"
#include "raid_fixture.hpp"

namespace dmnbd {
namespace {

using raid::DeviceSector;
using raid::Geometry;
using raid::Raid10Layout;
using test::build_error;
using test::MemoryDevice;
using test::RaidTest;
using test::RecordingDevice;
using test::run_sync;
using test::sleep_ms;
using test::write_fill;
namespace format = raid::format;
using test::kLeg;
using test::kMeta;

// ---- Layouts (md's raid0.c and raid10.c; the worked examples of the
// reference, chunk = 8 sectors, rows of 8 sectors).

std::vector<std::pair<unsigned, uint64_t>> copies_of(const Geometry& g, uint64_t chunk) {
  std::vector<std::pair<unsigned, uint64_t>> out;
  for (const DeviceSector& c : g.copies(chunk * g.chunk())) out.emplace_back(c.dev, c.sector / 8);
  return out;
}
using Rows = std::vector<std::pair<unsigned, uint64_t>>;

TEST(RaidLayoutTest, Raid10NearFarAndOffsetPlaceCopiesAsMdDoes) {
  const uint32_t c = 8;
  const Geometry near4 = Geometry::raid10(4, c, {2, 1, false, false}, 4 * c);
  EXPECT_EQ(near4.array_sectors(), 8 * c);
  EXPECT_EQ(copies_of(near4, 0), (Rows{{0, 0}, {1, 0}}));
  EXPECT_EQ(copies_of(near4, 1), (Rows{{2, 0}, {3, 0}}));
  EXPECT_EQ(copies_of(near4, 2), (Rows{{0, 1}, {1, 1}}));
  const Geometry near3 = Geometry::raid10(3, c, {2, 1, false, false}, 4 * c);
  EXPECT_EQ(near3.array_sectors(), 6 * c);
  EXPECT_EQ(copies_of(near3, 1), (Rows{{2, 0}, {0, 1}}));  // the copy wraps to the next row
  EXPECT_EQ(copies_of(near3, 4), (Rows{{2, 2}, {0, 3}}));
  const Geometry far4 = Geometry::raid10(4, c, {1, 2, false, true}, 4 * c);
  EXPECT_EQ(copies_of(far4, 0), (Rows{{0, 0}, {1, 2}}));
  EXPECT_EQ(copies_of(far4, 1), (Rows{{1, 0}, {0, 2}}));
  EXPECT_EQ(copies_of(far4, 3), (Rows{{3, 0}, {2, 2}}));
  EXPECT_EQ(copies_of(far4, 4), (Rows{{0, 1}, {1, 3}}));
  const Geometry offset4 = Geometry::raid10(4, c, {1, 2, true, true}, 4 * c);
  EXPECT_EQ(copies_of(offset4, 0), (Rows{{0, 0}, {1, 1}}));
  EXPECT_EQ(copies_of(offset4, 1), (Rows{{1, 0}, {0, 1}}));
  EXPECT_EQ(copies_of(offset4, 4), (Rows{{0, 2}, {1, 3}}));
  // 5 devices far 2: the last far set takes the odd device ({0,1}, {2,3,4}).
  const Geometry far5 = Geometry::raid10(5, c, {1, 2, false, true}, 4 * c);
  EXPECT_EQ(copies_of(far5, 2), (Rows{{2, 0}, {3, 2}}));
  EXPECT_EQ(copies_of(far5, 3), (Rows{{3, 0}, {4, 2}}));
  EXPECT_EQ(copies_of(far5, 4), (Rows{{4, 0}, {2, 2}}));
  // raid10_use_near_sets: copies rotate over the whole array.
  const Geometry far5_whole = Geometry::raid10(5, c, {1, 2, false, false}, 4 * c);
  EXPECT_EQ(copies_of(far5_whole, 0), (Rows{{0, 0}, {1, 2}}));
  EXPECT_EQ(copies_of(far5_whole, 4), (Rows{{4, 0}, {0, 2}}));
  const Geometry offset5 = Geometry::raid10(5, c, {1, 2, true, true}, 4 * c);
  EXPECT_EQ(copies_of(offset5, 4), (Rows{{4, 0}, {2, 1}}));
}

// Every copy of every array sector lands on its own device sector, and
// raid10_find_virt() takes each back to the array sector.
TEST(RaidLayoutTest, EveryLayoutMapsOneToOneAndBack) {
  struct Case {
    unsigned disks;
    Raid10Layout layout;
  };
  const Case cases[] = {{4, {2, 1, false, false}}, {3, {2, 1, false, false}},
                        {5, {3, 1, false, false}}, {4, {1, 2, false, true}},
                        {5, {1, 2, false, true}},  {3, {1, 2, false, true}},
                        {5, {1, 2, false, false}}, {4, {1, 2, true, true}},
                        {5, {1, 2, true, true}},   {6, {1, 3, false, true}}};
  for (const Case& k : cases) {
    SCOPED_TRACE(std::to_string(k.disks) + " devices, layout 0x" +
                 std::to_string(k.layout.md_layout()));
    const Geometry g = Geometry::raid10(k.disks, 8, k.layout, 96);
    std::set<std::pair<unsigned, uint64_t>> used;
    for (uint64_t x = 0; x < g.array_sectors(); ++x) {
      const auto copies = g.copies(x);
      ASSERT_EQ(copies.size(), k.layout.copies());
      std::set<unsigned> devices;
      for (const DeviceSector& c : copies) {
        ASSERT_LT(c.sector, g.used_device_sectors());
        EXPECT_TRUE(used.insert({c.dev, c.sector}).second) << x;
        EXPECT_TRUE(devices.insert(c.dev).second) << "two copies on one device, sector " << x;
        EXPECT_EQ(g.array_sector_of(c.dev, c.sector), x);
      }
    }
  }
  const Geometry r0 = Geometry::raid0(3, 8, 100);  // rounded down to 96 per device
  EXPECT_EQ(r0.array_sectors(), 288u);
  EXPECT_EQ(copies_of(r0, 4), (Rows{{1, 1}}));
  EXPECT_EQ(r0.array_sector_of(1, 8), 32u);
}

TEST(RaidFormatTest, SuperblockAndBitmapHeaderAreAtTheKernelsOffsets) {
  format::Superblock sb;
  sb.magic = format::kSuperblockMagic;
  sb.compat_features = format::kFeatureV190;
  sb.num_devices = 4;
  sb.array_position = 2;
  sb.events = 0x1122334455667788;
  sb.set_failed(1);
  sb.set_failed(70);
  sb.level = 10;
  sb.layout = 0x102;
  sb.stripe_sectors = 128;
  sb.array_sectors = 4096;
  sb.sectors = 2048;
  std::vector<std::byte> block(512, std::byte{0xee});
  format::encode_superblock(sb, block);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(block.data()), 4), "DmRd");
  EXPECT_EQ(uint8_t(block[16]), 0x88);
  EXPECT_EQ(uint8_t(block[24]), 0x02);       // failed_devices bit 1
  EXPECT_EQ(uint8_t(block[120 + 0]), 0x40);  // bit 70 = extended word 0, bit 6
  EXPECT_EQ(uint8_t(block[48]), 10);
  EXPECT_EQ(uint8_t(block[52]), 0x02);
  EXPECT_EQ(uint8_t(block[53]), 0x01);
  EXPECT_EQ(uint8_t(block[88 + 1]), 0x10);   // array_sectors 4096
  EXPECT_EQ(uint8_t(block[112 + 1]), 0x08);  // sectors 2048
  for (size_t i = 148; i < 512; ++i) ASSERT_EQ(uint8_t(block[i]), 0) << i;
  const format::Superblock back = format::decode_superblock(block);
  EXPECT_EQ(back.events, sb.events);
  EXPECT_TRUE(back.failed(1));
  EXPECT_TRUE(back.failed(70));
  EXPECT_FALSE(back.failed(2));
  EXPECT_EQ(back.layout, 0x102u);

  format::BitmapHeader h;
  h.events = 7;
  h.sync_size = 8192;
  h.chunksize = 1u << 19;
  std::vector<std::byte> page(512);
  format::encode_bitmap_header(h, page);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(page.data()), 4), "bitm");
  EXPECT_EQ(uint8_t(page[4]), 4);
  EXPECT_EQ(uint8_t(page[24]), 7);
  EXPECT_EQ(uint8_t(page[41]), 0x20);  // sync_size
  EXPECT_EQ(uint8_t(page[54]), 0x08);  // chunksize 512 KiB
  EXPECT_EQ(uint8_t(page[56]), 5);     // daemon_sleep, seconds
  EXPECT_EQ(format::decode_bitmap_header(page).chunksize, 1u << 19);
}

// ---- The target.

const std::string kRaid1 = "0 8192 raid raid1 3 0 region_size 1024 2 m0 d0 m1 d1";

TEST_F(RaidTest, ConstructorErrorsInTheKernelsWords) {
  const std::string two = " 2 - d0 - d1";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "No arguments"},
      {"raid7 1 0" + two, "Unrecognised raid_type"},
      {"raid1 x 0" + two, "Cannot understand number of raid parameters"},
      {"raid1 9 0" + two, "Cannot understand number of raid parameters"},
      {"raid1 1 0 3 - d0 - d1", "Cannot understand number of raid devices parameters"},
      {"raid1 1 0 0", "Cannot understand number of raid devices parameters"},
      {"raid0 1 x" + two, "Bad numerical argument given for chunk_size"},
      {"raid0 1 12" + two, "Chunk size must be a power of 2"},
      {"raid0 1 4" + two, "Chunk size value is too small"},
      {"raid1 2 0 rebuild" + two, "Wrong number of raid parameters given"},
      {"raid1 3 0 nosync nosync" + two, "Only one 'nosync' argument allowed"},
      {"raid1 3 0 sync nosync" + two, "sync and nosync are mutually exclusive"},
      {"raid1 4 0 rebuild 0 sync" + two, "sync/nosync and rebuild are mutually exclusive"},
      {"raid1 3 0 rebuild 2" + two, "Invalid rebuild index given"},
      {"raid1 5 0 rebuild 1 rebuild 1" + two, "rebuild for this index already given"},
      {"raid1 3 0 rebuild x" + two, "Bad numerical argument given in raid params"},
      {"raid1 3 0 rebuild 1 2 - d0 - -", "Drive designated for rebuild not specified"},
      {"raid1 1 0 2 - d0 m1 -", "No data device supplied with metadata device"},
      {"raid10 3 8 write_mostly 0 4 - d0 - d1 - d2 - d3",
       "write_mostly option is only valid for RAID1"},
      {"raid1 5 0 write_mostly 0 write_mostly 1" + two,
       "Can't set all raid1 devices to write_mostly"},
      {"raid1 3 0 write_mostly 2" + two, "Invalid write_mostly index given"},
      {"raid1 3 0 max_write_behind -2" + two, "Max write-behind limit out of range"},
      {"raid1 3 0 daemon_sleep -1" + two, "daemon sleep period out of range"},
      {"raid1 5 0 min_recovery_rate 10 max_recovery_rate 5" + two, "Bogus recovery rates"},
      {"raid1 3 0 region_size 1000" + two, "Region size is not a power of 2"},
      {"raid1 3 0 region_size 16384" + two, "Supplied region size is too large"},
      {"raid0 3 64 region_size 32" + two, "Invalid flags combination"},
      {"raid10 3 64 region_size 32 4 - d0 - d1 - d2 - d3",
       "Region size is smaller than the chunk size"},
      {"raid1 3 0 raid10_copies 2" + two, "Invalid flags combination"},
      {"raid10 3 8 raid10_copies 5 4 - d0 - d1 - d2 - d3", "Bad value for 'raid10_copies'"},
      {"raid10 3 8 raid10_format wide 4 - d0 - d1 - d2 - d3",
       "Invalid 'raid10_format' value given"},
      {"raid1 3 0 raid10_format far" + two,
       "'raid10_format' is an invalid parameter for this RAID type"},
      {"raid10 2 8 raid10_use_near_sets 4 - d0 - d1 - d2 - d3",
       "RAID10 format 'near' and 'raid10_use_near_sets' are incompatible"},
      {"raid1 3 0 stripe_cache 64" + two, "Inappropriate argument: stripe_cache"},
      {"raid1 3 0 data_offset 9" + two, "Bogus data_offset value"},
      {"raid1 3 0 delta_disks 0" + two, "Too many delta_disk requested"},
      {"raid1 3 0 frobnicate 1" + two, "Unable to parse RAID parameter"},
      {"raid0 1 8" + two + "x", "RAID device lookup failure (Device lookup failed ("},
      {"raid0 1 8 3 - d0 - d1 - d2", "Target length not divisible by number of data devices"},
      {"raid10 1 8 3 - d0 - d1 - d2", "Target length not divisible by number of data devices"},
      {"raid1 1 0 2 - d0 - tiny", "Component device(s) too small"},
      {"raid10 1 8 4 - d0 - d1 - d2 - d3", "Failed to run raid array"},
      {"raid0 1 8 2 - d0 - -", "Failed to run raid array"},
      // New superblocks on some devices only (d1 has no metadata device).
      {"raid1 1 0 2 m0 d0 - d1", "Unable to assemble array: Invalid superblocks"},
  };
  for (const auto& [args, error] : cases) {
    const std::string got = build_error("0 8192 raid " + args, resolver_);
    EXPECT_EQ(got.substr(0, 6 + error.size()), "raid: " + error) << args << "\n got " << got;
  }
  EXPECT_EQ(build_error("0 8192 raid RAID1 1 0 2 - d0 - d1", resolver_), "(built)");
}

TEST_F(RaidTest, TableLinesAreTheKernels) {
  const std::vector<std::pair<std::string, std::string>> tables = {
      {"raid1 1 0 2 - d0 - d1", "raid1 1 0 2 - d0 - d1"},
      // Printed in dm-raid's fixed order, whatever the order given.
      {"raid1 8 64 region_size 1024 write_mostly 1 nosync max_write_behind 256 2 m0 d0 m1 d1",
       "raid1 8 0 nosync write_mostly 1 max_write_behind 128 region_size 1024 2 m0 d0 m1 d1"},
      {"raid1 7 0 max_recovery_rate 100 min_recovery_rate 10 daemon_sleep 250 2 - d0 - d1",
       "raid1 7 0 daemon_sleep 250 min_recovery_rate 10 max_recovery_rate 100 2 - d0 - d1"},
      {"raid10 5 64 raid10_format offset raid10_copies 2 4 m0 d0 m1 d1 m2 d2 m3 d3",
       "raid10 5 64 raid10_copies 2 raid10_format offset 4 m0 d0 m1 d1 m2 d2 m3 d3"},
      // raid10_use_near_sets is counted but not printed, as the kernel does.
      {"raid10 4 64 raid10_format far raid10_use_near_sets 4 m0 d0 m1 d1 m2 d2 m3 d3",
       "raid10 4 64 raid10_format far 4 m0 d0 m1 d1 m2 d2 m3 d3"},
      {"raid0 1 64 3 - d0 - d1 - d2", "raid0 1 64 3 - d0 - d1 - d2"},
  };
  for (const auto& [args, want] : tables) {
    const uint64_t len = args.rfind("raid0", 0) == 0    ? 3 * 8192
                         : args.rfind("raid10", 0) == 0 ? 16384
                                                        : 8192;
    auto table = test::open_table("0 " + std::to_string(len) + " raid " + args, resolver_);
    EXPECT_EQ(table->table_text(), "0 " + std::to_string(len) + " raid " + want + "\n") << args;
    // Loaded, not resumed: frozen, as the kernel keeps it until the first resume.
    EXPECT_NE(table->status_text().find(" frozen 0 0 -"), std::string::npos)
        << table->status_text();
    run_sync(table->teardown());
  }
}

TEST_F(RaidTest, ANewSetResyncsAndWritesTheKernelsSuperblocksAndBitmap) {
  auto body = [&]() -> Task<void> {
    auto dev = co_await make(kRaid1);
    EXPECT_TRUE(co_await wait_idle(*dev));
    EXPECT_EQ(status(*dev), "0 8192 raid raid1 2 AA 8192/8192 idle 0 0 -\n");
    co_await dev->drop_tables();
  };
  run_sync(body());
  EXPECT_TRUE(legs_equal(0, 1));
  for (int i = 0; i < 2; ++i) {
    const format::Superblock sb = superblock(i);
    EXPECT_EQ(sb.magic, format::kSuperblockMagic);
    EXPECT_EQ(sb.compat_features, format::kFeatureV190);
    EXPECT_EQ(sb.num_devices, 2u);
    EXPECT_EQ(sb.array_position, uint32_t(i));
    EXPECT_EQ(sb.level, 1u);
    EXPECT_EQ(sb.disk_recovery_offset, format::kMaxSector);
    EXPECT_EQ(sb.array_resync_offset, format::kMaxSector);
    EXPECT_EQ(sb.reshape_position, format::kMaxSector);
    EXPECT_EQ(sb.array_sectors, 8192u);
    EXPECT_EQ(sb.sectors, 8192u);
    EXPECT_EQ(sb.failed_devices[0], 0u);
    const format::BitmapHeader h = bitmap_header(i);
    EXPECT_EQ(h.magic, format::kBitmapMagic);
    EXPECT_EQ(h.events, sb.events);  // the bitmap never falls behind
    EXPECT_EQ(h.sync_size, 8192u);
    EXPECT_EQ(h.chunksize, 1024u * 512);
    EXPECT_EQ(h.state, 0u);
    for (uint64_t r = 0; r < 8; ++r) EXPECT_FALSE(bit(i, r)) << r;  // the suspend cleared them
  }
}

TEST_F(RaidTest, AWriteSetsItsBitOnDiskFirstAndTheDaemonClearsItWhenIdle) {
  auto body = [&]() -> Task<void> {
    // daemon_sleep 25 jiffies = 100 ms: a bit clears after 200 ms idle.
    auto dev =
        co_await make("0 8192 raid raid1 5 0 region_size 1024 daemon_sleep 25 2 m0 d0 m1 d1");
    EXPECT_TRUE(co_await wait_idle(*dev));
    co_await sleep_ms(400);
    EXPECT_FALSE(bit(0, 3));
    metas_[0]->clear();
    // The bitmap page and its flush went out before the data did.
    bool bit_on_disk_first = false;
    legs_[1]->set_fault([&](const Bio& bio) {
      if (bio.op == BioOp::write) bit_on_disk_first = bit(0, 3) && bit(1, 3);
      return ok();
    });
    EXPECT_FALSE(co_await write_fill(*dev, 3 * 1024 * 512, 8, 0xab, 0));
    legs_[1]->set_fault(nullptr);
    EXPECT_TRUE(bit_on_disk_first);
    const auto meta_bios = metas_[0]->bios();
    EXPECT_GE(meta_bios.size(), 2u);
    if (meta_bios.size() >= 2) {
      EXPECT_EQ(meta_bios[0].op, BioOp::write);
      EXPECT_EQ(meta_bios[0].sector, 8u);
      EXPECT_EQ(meta_bios[1].op, BioOp::flush);
    }
    co_await sleep_ms(500);
    EXPECT_FALSE(bit(0, 3));
    EXPECT_FALSE(bit(1, 3));
    co_await dev->drop_tables();
  };
  run_sync(body());
  EXPECT_TRUE(legs_equal(0, 1));
}

TEST_F(RaidTest, AFailedLegIsRecordedAndOnlyTheRegionsItMissedAreRecovered) {
  auto body = [&]() -> Task<void> {
    auto dev = co_await make(kRaid1);
    EXPECT_TRUE(co_await wait_idle(*dev));
    const uint64_t events_before = superblock(0).events;
    legs_[1]->fail_all(errno_status(EIO));
    // The write succeeds on leg 0; leg 1 is failed, in the superblock first.
    bool recorded_first = false;
    legs_[0]->set_fault([&](const Bio&) { return ok(); });
    EXPECT_FALSE(co_await write_fill(*dev, 2 * 1024 * 512, 16, 0xcd, 0));
    recorded_first = superblock(0).failed(1) && superblock(0).events > events_before;
    EXPECT_TRUE(recorded_first);
    EXPECT_EQ(status(*dev), "0 8192 raid raid1 2 AD 8192/8192 idle 0 0 -\n");
    EXPECT_FALSE(co_await write_fill(*dev, 5 * 1024 * 512 + 8, 8, 0xce, 0));
    co_await sleep_ms(50);
    // The bits of what leg 1 missed stay set while the set is degraded.
    EXPECT_TRUE(bit(0, 2));
    EXPECT_TRUE(bit(0, 5));
    // Make a region leg 1 did not miss differ: recovery must leave it alone.
    std::memset(legs_[1]->memory()->bytes(7 * 1024, 1).data(), 0x77, 512);
    legs_[1]->set_fault(nullptr);
    legs_[1]->clear();
    EXPECT_FALSE(co_await dev->suspend(false));
    EXPECT_FALSE(co_await dev->resume());  // the leg reads again: it is re-added
    EXPECT_TRUE(co_await wait_idle(*dev));
    EXPECT_EQ(status(*dev), "0 8192 raid raid1 2 AA 8192/8192 idle 0 0 -\n");
    // Leg 1 got the two regions it missed, and nothing else.
    std::set<uint64_t> regions;
    for (const auto& b : legs_[1]->bios(BioOp::write)) regions.insert(b.sector / 1024);
    EXPECT_EQ(regions, (std::set<uint64_t>{2, 5}));
    EXPECT_FALSE(superblock(0).failed(1));
    co_await dev->drop_tables();
  };
  run_sync(body());
  EXPECT_TRUE(legs_equal(0, 1, 0, 7 * 1024));
  EXPECT_FALSE(legs_equal(0, 1, 7 * 1024, 1024));
}

TEST_F(RaidTest, CheckCountsMismatchesAndRepairFixesThem) {
  auto body = [&]() -> Task<void> {
    auto dev = co_await make(kRaid1);
    EXPECT_TRUE(co_await wait_idle(*dev));
    // 3 sectors differ in one 64 KiB block, 1 in another.
    std::memset(legs_[1]->memory()->bytes(100, 3).data(), 0x11, 3 * 512);
    std::memset(legs_[1]->memory()->bytes(5000, 1).data(), 0x22, 512);
    co_await message(*dev, "check");
    EXPECT_TRUE(co_await wait_idle(*dev));
    EXPECT_EQ(status(*dev), "0 8192 raid raid1 2 AA 8192/8192 idle 256 0 -\n");
    EXPECT_FALSE(legs_equal(0, 1));
    co_await message(*dev, "repair");
    EXPECT_TRUE(co_await wait_idle(*dev));
    EXPECT_EQ(status(*dev),
              "0 8192 raid raid1 2 AA 8192/8192 idle 0 0 -\n");  // shown after a check only
    EXPECT_TRUE(legs_equal(0, 1));
    co_await message(*dev, "check");
    EXPECT_TRUE(co_await wait_idle(*dev));
    EXPECT_EQ(status(*dev), "0 8192 raid raid1 2 AA 8192/8192 idle 0 0 -\n");
    co_await message(*dev, "frozen");
    EXPECT_EQ(status(*dev), "0 8192 raid raid1 2 AA 8192/8192 frozen 0 0 -\n");
    co_await message(*dev, "idle");
    EXPECT_THROW(co_await message(*dev, "scrub"), TargetError);
    co_await dev->drop_tables();
  };
  run_sync(body());
}

TEST_F(RaidTest, Raid10ReadsTheSameBytesWithALegMissing) {
  const std::string legs4 = " 4 m0 d0 m1 d1 m2 d2 m3 d3";
  const std::string table = "0 16384 raid raid10 3 64 raid10_format near";
  auto pattern = [](uint64_t sector) { return uint8_t(sector * 7 + 3); };
  auto body = [&]() -> Task<void> {
    auto dev = co_await make(table + legs4);
    EXPECT_TRUE(co_await wait_idle(*dev));
    EXPECT_EQ(status(*dev), "0 16384 raid raid10 4 AAAA 16384/16384 idle 0 0 -\n");
    for (uint64_t s = 0; s < 16384; s += 64) {
      EXPECT_FALSE(co_await write_fill(*dev, s * 512, 64, pattern(s)));
    }
    co_await dev->drop_tables();
    // Leg 2 gone: its copies are read from leg 3.
    auto degraded = co_await make(table + " 4 m0 d0 m1 d1 - - m3 d3");
    EXPECT_EQ(status(*degraded), "0 16384 raid raid10 4 AA-A 16384/16384 idle 0 0 -\n");
    std::vector<std::byte> buf(64 * 512);
    for (uint64_t s = 0; s < 16384; s += 64) {
      EXPECT_FALSE(co_await degraded->read(s * 512, buf, nullptr));
      EXPECT_EQ(uint8_t(buf[0]), pattern(s)) << s;
      EXPECT_EQ(uint8_t(buf.back()), pattern(s)) << s;
    }
    co_await degraded->drop_tables();
  };
  run_sync(body());
}

TEST_F(RaidTest, ReadsSpreadOverTheCopiesButNotOntoAWriteMostlyLeg) {
  auto body = [&]() -> Task<void> {
    auto dev = co_await make("0 8192 raid raid1 2 0 nosync 3 - d0 - d1 - d2");
    // Reads in flight at once go to the copies with the fewest in flight.
    for (auto& leg : legs_) leg->set_hops(4);
    std::vector<std::vector<std::byte>> bufs(6, std::vector<std::byte>(4096));
    std::vector<Task<Status>> reads;
    for (size_t i = 0; i < bufs.size(); ++i) reads.push_back(dev->read(i * 4096, bufs[i], nullptr));
    co_await when_all(reads);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(legs_[i]->bios(BioOp::read).size(), 2u) << i;
    co_await dev->drop_tables();
    for (auto& leg : legs_) leg->clear();
    auto wm = co_await make(
        "0 8192 raid raid1 6 0 nosync write_mostly 0 write_mostly 2 3 - d0 - d1 - d2");
    reads.clear();
    for (size_t i = 0; i < bufs.size(); ++i) reads.push_back(wm->read(i * 4096, bufs[i], nullptr));
    co_await when_all(reads);
    EXPECT_EQ(legs_[0]->bios(BioOp::read).size(), 0u);
    EXPECT_EQ(legs_[1]->bios(BioOp::read).size(), 6u);
    EXPECT_EQ(legs_[2]->bios(BioOp::read).size(), 0u);
    co_await wm->drop_tables();
  };
  run_sync(body());
}

TEST_F(RaidTest, RebuildCopiesAWholeLegAndStatusShowsItRecovering) {
  auto body = [&]() -> Task<void> {
    auto dev = co_await make(kRaid1);
    EXPECT_TRUE(co_await wait_idle(*dev));
    co_await dev->drop_tables();
    legs_[1]->memory()->fill_pattern(99);  // a replacement disk
    legs_[1]->clear();
    auto rebuilt = co_await make("0 8192 raid raid1 5 0 region_size 1024 rebuild 1 2 m0 d0 m1 d1");
    const std::string st = status(*rebuilt);
    EXPECT_TRUE(st.find(" Aa ") != std::string::npos || idle_and_complete(st)) << st;
    EXPECT_TRUE(co_await wait_idle(*rebuilt));
    EXPECT_EQ(status(*rebuilt), "0 8192 raid raid1 2 AA 8192/8192 idle 0 0 -\n");
    uint64_t written = 0;
    for (const auto& b : legs_[1]->bios(BioOp::write)) written += b.sectors;
    EXPECT_EQ(written, kLeg);  // every sector, whatever the bitmap said
    EXPECT_EQ(table_line(*rebuilt),
              "0 8192 raid raid1 5 0 rebuild 1 region_size 1024 2 m0 d0 m1 d1\n");
    co_await rebuilt->drop_tables();
  };
  run_sync(body());
  EXPECT_TRUE(legs_equal(0, 1));
  EXPECT_EQ(superblock(1).disk_recovery_offset, format::kMaxSector);
}

// Power fails after any number of writes and flushes under a raid1 whose
// legs and metadata share one disk; after it comes back, every write
// acknowledged with FUA is there and the legs agree (the bitmap's dirty
// regions are resynced).
TEST_F(RaidTest, CrashAtAnyPointLeavesTheLegsIdenticalAfterTheResync) {
  for (uint64_t stop_after = 0; stop_after < 30; stop_after += 3)
    for (int keep : {-1, 1}) {
      SCOPED_TRACE("stop after " + std::to_string(stop_after) + " keep " + std::to_string(keep));
      auto disk = std::make_shared<MemoryDevice>(2 * kLeg + 2 * kMeta, "disk");
      auto power = std::make_shared<test::CrashDevice>(disk, "disk");
      resolver_.add("disk", power);
      std::vector<uint64_t> durable;
      auto run = [&](bool writes) -> Task<void> {
        std::vector<std::shared_ptr<Device>> parts;
        const std::pair<std::string, std::string> lines[] = {{"c0", "0 8192 linear disk 0"},
                                                             {"c1", "0 8192 linear disk 8192"},
                                                             {"n0", "0 64 linear disk 16384"},
                                                             {"n1", "0 64 linear disk 16448"}};
        for (const auto& [name, t] : lines) {
          auto d = std::make_shared<Device>(name, "", false, parts.size() + 1);
          std::shared_ptr<Table> built = Table::build(t, resolver_, false, [] {});
          co_await built->open();
          co_await d->load(built);
          co_await d->resume();
          resolver_.add(name, d);
          parts.push_back(d);
        }
        auto dev =
            co_await make("0 8192 raid raid1 5 0 region_size 1024 daemon_sleep 10 2 n0 c0 n1 c1");
        EXPECT_TRUE(co_await wait_idle(*dev));
        if (writes) {
          co_await sleep_ms(100);  // the resync's bits cleared
          power->power_off_after(stop_after);
          for (uint64_t i = 0; i < 12; ++i) {
            const uint64_t sector = (i % 8) * 1024 + i * 8;
            const uint32_t fua = i % 3 == 0 ? kBioFua : 0;
            const Status st = co_await write_fill(*dev, sector * 512, 8, uint8_t(0xa0 + i), fua);
            if (!st && fua) durable.push_back(sector);
          }
        }
        co_await dev->drop_tables();
        for (auto& d : parts) co_await d->drop_tables();
      };
      run_sync(run(true));
      ASSERT_FALSE(run_sync(keep < 0 ? power->crash() : power->crash(uint64_t(stop_after + keep))));
      run_sync(run(false));
      EXPECT_EQ(
          std::memcmp(disk->bytes(0, kLeg).data(), disk->bytes(kLeg, kLeg).data(), kLeg * 512), 0);
      for (uint64_t sector : durable)
        EXPECT_EQ(uint8_t(disk->bytes(sector, 1)[0]) & 0xf0, 0xa0) << sector;
    }
}

}  // namespace
}  // namespace dmnbd
