// raid4/5/6 (dm-raid over md's raid5.c): every layout's placement of data,
// P and Q against the reference's tables, P/Q known answers and rebuilding
// of every one or two lost blocks, the stripe lock, and the target: reads
// and writes against a model with parity checked independently (XOR of a
// row is zero), lost legs, rebuilds, check/repair counts, constructor
// errors and crashes at any point.
#include <gtest/gtest.h>

#include <isa-l/raid.h>

#include <cstring>
#include <random>
#include <set>

#include "../../targets/raid/parity_layout.hpp"
#include "../../targets/raid/parity_math.hpp"
#include "devices/crash_device.hpp"
#include "dmnbd/key_locks.hpp"
#include "dmnbd/when_all.hpp"
#include "raid_fixture.hpp"

namespace dmnbd {
namespace {

using raid::AlignedBuffer;
using raid::kNoDevice;
using raid::ParityGeometry;
using raid::RowLayout;
using test::build_error;
using test::kLeg;
using test::RaidTest;
using test::run_sync;
using test::sleep_ms;

// md's level and layout for a dm-raid type name.
struct Type {
  const char* name;
  unsigned level;
  uint32_t algorithm;
};
constexpr Type kRaid5Types[] = {
    {"raid4", 5, raid::kParity0},           {"raid5_n", 5, raid::kParityN},
    {"raid5_la", 5, raid::kLeftAsymmetric}, {"raid5_ra", 5, raid::kRightAsymmetric},
    {"raid5_ls", 5, raid::kLeftSymmetric},  {"raid5_rs", 5, raid::kRightSymmetric}};
constexpr Type kRaid6Types[] = {
    {"raid6_zr", 6, raid::kRotatingZeroRestart}, {"raid6_nr", 6, raid::kRotatingNRestart},
    {"raid6_nc", 6, raid::kRotatingNContinue},   {"raid6_n_6", 6, raid::kParityN},
    {"raid6_la_6", 6, raid::kLeftAsymmetric6},   {"raid6_ra_6", 6, raid::kRightAsymmetric6},
    {"raid6_ls_6", 6, raid::kLeftSymmetric6},    {"raid6_rs_6", 6, raid::kRightSymmetric6}};

// A row as the reference draws it: "D0 D1 P Q D2", device by device.
std::string drawn(const RowLayout& r, unsigned disks) {
  std::vector<std::string> names(disks, "?");
  for (unsigned k = 0; k < r.data.size(); ++k) names[r.data[k]] = "D" + std::to_string(k);
  names[r.p] = "P";
  if (r.q != kNoDevice) names[r.q] = "Q";
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : " ") + n;
  return out;
}

std::vector<std::string> rows(const Type& t, unsigned disks, unsigned count) {
  const ParityGeometry g(t.level, t.algorithm, disks, 8, 8 * count);
  std::vector<std::string> out;
  for (unsigned s = 0; s < count; ++s) out.push_back(drawn(g.row(s), disks));
  return out;
}
using Drawn = std::vector<std::string>;

// ---- Layouts: the reference's worked examples and raid5_compute_sector().

TEST(ParityLayoutTest, Raid4And5PlaceDataAndParityAsMdDoes) {
  EXPECT_EQ(rows(kRaid5Types[0], 4, 2), (Drawn{"P D0 D1 D2", "P D0 D1 D2"}));  // raid4: first
  EXPECT_EQ(rows(kRaid5Types[1], 4, 2), (Drawn{"D0 D1 D2 P", "D0 D1 D2 P"}));
  EXPECT_EQ(rows(kRaid5Types[2], 4, 4),
            (Drawn{"D0 D1 D2 P", "D0 D1 P D2", "D0 P D1 D2", "P D0 D1 D2"}));
  EXPECT_EQ(rows(kRaid5Types[3], 4, 4),
            (Drawn{"P D0 D1 D2", "D0 P D1 D2", "D0 D1 P D2", "D0 D1 D2 P"}));
  EXPECT_EQ(rows(kRaid5Types[4], 4, 4),
            (Drawn{"D0 D1 D2 P", "D1 D2 P D0", "D2 P D0 D1", "P D0 D1 D2"}));
  EXPECT_EQ(rows(kRaid5Types[5], 4, 4),
            (Drawn{"P D0 D1 D2", "D2 P D0 D1", "D1 D2 P D0", "D0 D1 D2 P"}));
  EXPECT_EQ(rows(kRaid5Types[4], 2, 2), (Drawn{"D0 P", "P D0"}));  // two legs: P is a copy
}

TEST(ParityLayoutTest, Raid6PlacesDataPAndQAsMdDoes) {
  EXPECT_EQ(rows(kRaid6Types[0], 5, 5), (Drawn{"P Q D0 D1 D2", "D0 P Q D1 D2", "D0 D1 P Q D2",
                                               "D0 D1 D2 P Q", "Q D0 D1 D2 P"}));
  EXPECT_EQ(rows(kRaid6Types[1], 5, 5), (Drawn{"D0 D1 D2 P Q", "D0 D1 P Q D2", "D0 P Q D1 D2",
                                               "P Q D0 D1 D2", "Q D0 D1 D2 P"}));
  EXPECT_EQ(rows(kRaid6Types[2], 5, 3), (Drawn{"D0 D1 D2 Q P", "D1 D2 Q P D0", "D2 Q P D0 D1"}));
  EXPECT_EQ(rows(kRaid6Types[3], 5, 2), (Drawn{"D0 D1 D2 P Q", "D0 D1 D2 P Q"}));
  EXPECT_EQ(rows(kRaid6Types[4], 5, 4),
            (Drawn{"D0 D1 D2 P Q", "D0 D1 P D2 Q", "D0 P D1 D2 Q", "P D0 D1 D2 Q"}));
  EXPECT_EQ(rows(kRaid6Types[5], 5, 4),
            (Drawn{"P D0 D1 D2 Q", "D0 P D1 D2 Q", "D0 D1 P D2 Q", "D0 D1 D2 P Q"}));
  EXPECT_EQ(rows(kRaid6Types[6], 5, 4),
            (Drawn{"D0 D1 D2 P Q", "D1 D2 P D0 Q", "D2 P D0 D1 Q", "P D0 D1 D2 Q"}));
  EXPECT_EQ(rows(kRaid6Types[7], 5, 4),
            (Drawn{"P D0 D1 D2 Q", "D2 P D0 D1 Q", "D1 D2 P D0 Q", "D0 D1 D2 P Q"}));
}

// Q's sources: md walks from just after Q over the data devices (ls_6 row
// 1, "D1 D2 P D0 Q": devices 0, 1, 3); DDF layouts count every device,
// with P and Q as zero blocks.
TEST(ParityLayoutTest, QWeighsEachDataDeviceByMdsSlot) {
  using List = std::vector<unsigned>;
  auto sources = [](const Type& t, unsigned disks, uint64_t s) {
    const RowLayout r = ParityGeometry(t.level, t.algorithm, disks, 8, 64).row(s);
    return List(r.syndrome_sources.begin(), r.syndrome_sources.end());
  };
  EXPECT_EQ(sources(kRaid6Types[6], 5, 1), (List{0, 1, 3}));
  EXPECT_EQ(sources(kRaid6Types[3], 5, 0), (List{0, 1, 2}));
  EXPECT_EQ(sources(kRaid6Types[0], 5, 1), (List{0, kNoDevice, kNoDevice, 3, 4}));
  EXPECT_EQ(sources(kRaid6Types[0], 5, 4), (List{kNoDevice, 1, 2, 3, kNoDevice}));
  // nc row 1 "D1 D2 Q P D0": Q on device 2 (not last): md would start at 3,
  // DDF starts at 0.
  EXPECT_EQ(sources(kRaid6Types[2], 5, 1), (List{0, 1, kNoDevice, kNoDevice, 4}));
}

TEST(ParityLayoutTest, EveryArraySectorHasOneDataPlaceAndRowsCoverTheLegs) {
  std::vector<Type> all(std::begin(kRaid5Types), std::end(kRaid5Types));
  all.insert(all.end(), std::begin(kRaid6Types), std::end(kRaid6Types));
  for (const Type& t : all)
    for (unsigned disks : {4u, 5u, 7u}) {
      SCOPED_TRACE(std::string(t.name) + " over " + std::to_string(disks));
      const ParityGeometry g(t.level, t.algorithm, disks, 8, 8 * 21 + 5);
      EXPECT_EQ(g.used_device_sectors(), 8u * 21);
      EXPECT_EQ(g.array_sectors(), 8u * 21 * g.data_disks());
      std::set<std::pair<unsigned, uint64_t>> used;
      for (uint64_t x = 0; x < g.array_sectors(); ++x) {
        const ParityGeometry::Location at = g.locate(x);
        const RowLayout r = g.row(at.row);
        EXPECT_FALSE(r.is_parity(at.dev)) << x;
        EXPECT_EQ(at.sector / 8, at.row);
        EXPECT_TRUE(used.insert({at.dev, at.sector}).second) << x;
      }
      for (uint64_t s = 0; s < g.rows(); ++s) {
        const RowLayout r = g.row(s);
        std::set<unsigned> devs(r.data.begin(), r.data.end());
        devs.insert(r.p);
        if (t.level == 6) devs.insert(r.q);
        EXPECT_EQ(devs.size(), disks) << "row " << s;
      }
    }
}

// ---- P and Q.

struct RowData {
  RowData(unsigned disks, size_t len) : len(len), buffer(disks * len), blocks(disks) {
    for (unsigned i = 0; i < disks; ++i) blocks[i] = buffer.data() + i * len;
  }
  size_t len;
  AlignedBuffer buffer;
  std::vector<std::byte*> blocks;
};

TEST(ParityMathTest, PAndQMatchTheKnownAnswer) {
  // Slots 0, 1, 2 = 0x01, 0x02, 0x80: P = 0x83, Q = 1 + 2*2 + 4*0x80 = 0x3f.
  const ParityGeometry g(6, raid::kParityN, 5, 8, 64);
  const RowLayout r = g.row(0);
  RowData row(5, 512);
  const uint8_t values[] = {0x01, 0x02, 0x80};
  for (unsigned k = 0; k < 3; ++k) std::memset(row.blocks[r.data[k]], values[k], 512);
  raid::parity::compute(r, row.blocks, 512);
  EXPECT_EQ(uint8_t(row.blocks[r.p][0]), 0x83);
  EXPECT_EQ(uint8_t(row.blocks[r.q][511]), 0x3f);
}

std::vector<std::byte> random_bytes(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<std::byte> out(n);
  for (auto& b : out) b = std::byte(rng());
  return out;
}

// Every lost block (raid6: every pair) comes back from the others, in every
// layout, and a read-modify-write gives the parity a full recompute gives.
TEST(ParityMathTest, EveryOneOrTwoLostBlocksAreRebuiltAndRmwEqualsRecompute) {
  std::vector<Type> all(std::begin(kRaid5Types), std::end(kRaid5Types));
  all.insert(all.end(), std::begin(kRaid6Types), std::end(kRaid6Types));
  const size_t len = 80 << 10;  // more than ISA-L's per-call piece
  for (const Type& t : all)
    for (unsigned disks : {4u, 6u}) {
      const ParityGeometry g(t.level, t.algorithm, disks, 8, 8 * disks);
      for (uint64_t s = 0; s < disks; ++s) {
        SCOPED_TRACE(std::string(t.name) + " over " + std::to_string(disks) + ", row " +
                     std::to_string(s));
        const RowLayout r = g.row(s);
        RowData row(disks, len);
        for (unsigned dev : r.data)
          std::memcpy(row.blocks[dev], random_bytes(len, dev * 7 + unsigned(s)).data(), len);
        raid::parity::compute(r, row.blocks, len);
        const std::vector<std::byte> good(row.buffer.data(), row.buffer.data() + disks * len);
        // P is the XOR of the data, checked by ISA-L's own checker.
        std::vector<void*> xv;
        for (unsigned dev : r.data) xv.push_back(row.blocks[dev]);
        xv.push_back(row.blocks[r.p]);
        EXPECT_EQ(xor_check(int(xv.size()), int(len), xv.data()), 0);
        const unsigned lose = g.parity_disks();
        for (unsigned a = 0; a < disks; ++a)
          for (unsigned b = lose == 2 ? a : disks; b <= disks; ++b) {
            if (b == a) continue;
            const unsigned second = b == disks ? kNoDevice : b;
            std::memset(row.blocks[a], 0x5a, len);
            if (second != kNoDevice) std::memset(row.blocks[second], 0xa5, len);
            raid::parity::reconstruct(r, row.blocks, len, a, second);
            EXPECT_EQ(std::memcmp(row.buffer.data(), good.data(), good.size()), 0)
                << "lost " << a << " and " << int(second);
            std::memcpy(row.buffer.data(), good.data(), good.size());
          }
        // Read-modify-write of one data block.
        const unsigned dev = r.data.back();
        const std::vector<std::byte> before(row.blocks[dev], row.blocks[dev] + len);
        const std::vector<std::byte> after = random_bytes(len, 99);
        std::memcpy(row.blocks[dev], after.data(), len);
        raid::parity::fold_change(r, dev, before.data(), after.data(), row.blocks, len);
        RowData fresh(disks, len);
        std::memcpy(fresh.buffer.data(), row.buffer.data(), disks * len);
        raid::parity::compute(r, fresh.blocks, len);
        EXPECT_EQ(std::memcmp(fresh.buffer.data(), row.buffer.data(), disks * len), 0);
      }
    }
}

// ---- The stripe lock.

TEST(StripeLockTest, OneRowAtATimeOtherRowsAlongside) {
  KeyLocks locks;
  std::vector<int> order;
  auto holder = [&](uint64_t row, int id, int ms) -> Task<Status> {
    auto guard = co_await locks.lock(row);
    order.push_back(id);
    co_await sleep_ms(ms);
    order.push_back(-id);
    co_return ok();
  };
  auto body = [&]() -> Task<void> {
    std::vector<Task<Status>> tasks;
    tasks.push_back(holder(7, 1, 30));
    tasks.push_back(holder(7, 2, 1));
    tasks.push_back(holder(8, 3, 1));
    co_await when_all(tasks);
  };
  run_sync(body());
  // 2 waits for 1 to let go; 3, on another row, runs while 1 holds row 7.
  const auto at = [&](int id) { return std::find(order.begin(), order.end(), id) - order.begin(); };
  EXPECT_LT(at(-1), at(2));
  EXPECT_LT(at(3), at(-1));
  EXPECT_EQ(locks.locked(), 0u);
}

// ---- The target.

// The legs' XOR over the same device sectors: zero where P is right
// (raid5: every block of a row, P included, XORs to zero).
bool rows_xor_to_zero(const std::vector<std::shared_ptr<test::RecordingDevice>>& legs,
                      unsigned disks, uint64_t sectors, uint64_t from = 0) {
  std::vector<uint8_t> x(sectors * 512);
  for (unsigned i = 0; i < disks; ++i) {
    auto bytes = legs[i]->memory()->bytes(from, sectors);
    for (size_t k = 0; k < x.size(); ++k) x[k] ^= uint8_t(bytes[k]);
  }
  return std::all_of(x.begin(), x.end(), [](uint8_t b) { return b == 0; });
}

class RaidParityTest : public RaidTest {
 protected:
  // Writes of every shape (whole rows, parts of blocks, across blocks)
  // through `dev`, kept in `model`; then everything read back.
  Task<void> write_and_verify(Device& dev, std::vector<std::byte>& model, unsigned seed,
                              unsigned count = 60) {
    std::mt19937 rng(seed);
    const uint64_t sectors = model.size() / 512;
    for (unsigned i = 0; i < count; ++i) {
      const uint64_t n = i % 5 == 0 ? 384 : 1 + rng() % 40;
      const uint64_t at = rng() % (sectors - n);
      std::vector<std::byte> data = random_bytes(n * 512, seed * 1000 + i);
      EXPECT_FALSE(co_await dev.write(at * 512, data, i % 7 == 0 ? kBioFua : 0)) << at;
      std::memcpy(model.data() + at * 512, data.data(), data.size());
    }
    co_await expect_reads(dev, model);
  }
  static Task<void> expect_reads(Device& dev, const std::vector<std::byte>& model) {
    std::vector<std::byte> back(model.size());
    EXPECT_FALSE(co_await dev.read(0, back, nullptr, nullptr));
    EXPECT_TRUE(back == model);
  }
  Task<std::vector<std::byte>> read_all(Device& dev, uint64_t sectors) {
    std::vector<std::byte> back(sectors * 512);
    EXPECT_FALSE(co_await dev.read(0, back, nullptr, nullptr));
    co_return back;
  }
};

const std::string kRaid5 =
    "0 24576 raid raid5_ls 5 64 region_size 1024 daemon_sleep 10 4 m0 d0 m1 d1 m2 d2 m3 d3";
const std::string kRaid6 =
    "0 24576 raid raid6_zr 3 64 region_size 1024 5 m0 d0 m1 d1 m2 d2 m3 "
    "d3 m4 d4";

TEST_F(RaidParityTest, ANewRaid5ResyncsParityAndEveryWriteKeepsItRight) {
  auto body = [&]() -> Task<void> {
    auto dev = co_await make(kRaid5);
    EXPECT_EQ(status(*dev).substr(0, 38), "0 24576 raid raid5_ls 4 aaaa 0/8192 re");
    EXPECT_TRUE(co_await wait_idle(*dev));
    EXPECT_EQ(status(*dev), "0 24576 raid raid5_ls 4 AAAA 8192/8192 idle 0 0 -\n");
    EXPECT_TRUE(rows_xor_to_zero(legs_, 4, kLeg));
    auto model = co_await read_all(*dev, 24576);
    co_await write_and_verify(*dev, model, 1);
    EXPECT_TRUE(rows_xor_to_zero(legs_, 4, kLeg));
    co_await message(*dev, "check");
    EXPECT_TRUE(co_await wait_idle(*dev));
    EXPECT_EQ(status(*dev), "0 24576 raid raid5_ls 4 AAAA 8192/8192 idle 0 0 -\n");
    EXPECT_EQ(table_line(*dev),
              "0 24576 raid raid5_ls 5 64 daemon_sleep 10 region_size 1024 4 m0 d0 m1 d1 m2 d2 "
              "m3 d3\n");
    co_await dev->drop_tables();
  };
  run_sync(body());
}

// A write to one block of a row reads two blocks (old data and P) rather
// than the other data; one that covers every data block reads nothing.
TEST_F(RaidParityTest, WritesReadTheLeastTheyNeed) {
  // 5 legs, 4 data: rmw reads 2, rcw 3 for a one-block write.
  auto run = [&]() -> Task<void> {
    auto dev = co_await make("0 32768 raid raid5_ls 2 64 nosync 5 - d0 - d1 - d2 - d3 - d4");
    EXPECT_TRUE(co_await wait_idle(*dev));
    for (auto& l : legs_) l->clear();
    EXPECT_FALSE(co_await test::write_fill(*dev, 0, 8, 0x11));
    unsigned reads = 0;
    for (auto& l : legs_) reads += unsigned(l->bios(BioOp::read).size());
    EXPECT_EQ(reads, 2u);  // D0's old bytes and P
    for (auto& l : legs_) l->clear();
    std::vector<std::byte> row(4 * 64 * 512, std::byte{0x22});
    EXPECT_FALSE(co_await dev->write(64 * 4 * 512, row, 0));  // all of row 1
    reads = 0;
    for (auto& l : legs_) reads += unsigned(l->bios(BioOp::read).size());
    EXPECT_EQ(reads, 0u);
    EXPECT_TRUE(rows_xor_to_zero(legs_, 5, 64, 64));  // nosync: only row 1 is known right
    co_await dev->drop_tables();
  };
  run_sync(run());
}

TEST_F(RaidParityTest, Raid6ReadsAndWritesWithTwoLegsLostThenRebuildsThem) {
  std::vector<std::byte> model;
  auto body = [&]() -> Task<void> {
    auto dev = co_await make(kRaid6);
    EXPECT_TRUE(co_await wait_idle(*dev));
    model = co_await read_all(*dev, 24576);
    co_await write_and_verify(*dev, model, 2, 20);
    legs_[1]->fail_all(errno_status(EIO));
    co_await write_and_verify(*dev, model, 3, 30);
    legs_[3]->fail_all(errno_status(EIO));
    co_await write_and_verify(*dev, model, 4, 30);
    EXPECT_EQ(status(*dev), "0 24576 raid raid6_zr 5 ADADA 8192/8192 idle 0 0 -\n");
    co_await dev->drop_tables();
  };
  run_sync(body());
  // The legs come back, empty: a reload rebuilds both.
  for (int i : {1, 3}) {
    legs_[i]->set_fault(nullptr);
    legs_[i]->memory()->fill_pattern(7);
  }
  auto rebuild = [&]() -> Task<void> {
    auto dev = co_await make(
        "0 24576 raid raid6_zr 7 64 region_size 1024 rebuild 1 rebuild 3 5 m0 "
        "d0 m1 d1 m2 d2 m3 d3 m4 d4");
    EXPECT_TRUE(co_await wait_idle(*dev));
    EXPECT_EQ(status(*dev), "0 24576 raid raid6_zr 5 AAAAA 8192/8192 idle 0 0 -\n");
    co_await expect_reads(*dev, model);
    co_await message(*dev, "check");
    EXPECT_TRUE(co_await wait_idle(*dev));
    EXPECT_EQ(status(*dev), "0 24576 raid raid6_zr 5 AAAAA 8192/8192 idle 0 0 -\n");
    co_await dev->drop_tables();
  };
  run_sync(rebuild());
  // With only legs 1 and 3 (rebuilt) and one other, the data is still all
  // there; a third lost leg is more than raid6 survives.
  auto degraded = [&]() -> Task<void> {
    auto dev = co_await make("0 24576 raid raid6_zr 1 64 5 - - - d1 - d2 - d3 - -");
    co_await expect_reads(*dev, model);
    legs_[2]->fail_all(errno_status(EIO));
    std::vector<std::byte> back(24576 * 512);
    EXPECT_TRUE(co_await dev->read(0, back, nullptr, nullptr));
    co_await dev->drop_tables();
  };
  run_sync(degraded());
}

// A leg that failed and reads again is re-added by a resume, and only the
// regions written without it (device sectors, as md's bitmap counts them
// for raid4/5/6) are rebuilt on it.
TEST_F(RaidParityTest, AReturningLegGetsOnlyTheRegionsItMissed) {
  auto body = [&]() -> Task<void> {
    auto dev = co_await make(kRaid5);
    EXPECT_TRUE(co_await wait_idle(*dev));
    auto model = co_await read_all(*dev, 24576);
    legs_[2]->fail_all(errno_status(EIO));
    // Array sectors in device regions 1 and 5 (rows of 192 array sectors,
    // 64 device sectors: region r holds rows 16r..16r+15).
    for (uint64_t region : {1, 5}) {
      const uint64_t x = region * 16 * 192 + 100;
      EXPECT_FALSE(co_await test::write_fill(*dev, x * 512, 8, uint8_t(0x40 + region)));
      std::memset(model.data() + x * 512, 0x40 + int(region), 8 * 512);
    }
    EXPECT_EQ(status(*dev), "0 24576 raid raid5_ls 4 AADA 8192/8192 idle 0 0 -\n");
    co_await expect_reads(*dev, model);
    legs_[2]->set_fault(nullptr);
    legs_[2]->clear();
    EXPECT_FALSE(co_await dev->suspend(false));
    EXPECT_FALSE(co_await dev->resume());
    EXPECT_TRUE(co_await wait_idle(*dev));
    EXPECT_EQ(status(*dev), "0 24576 raid raid5_ls 4 AAAA 8192/8192 idle 0 0 -\n");
    std::set<uint64_t> regions;
    for (const auto& b : legs_[2]->bios(BioOp::write)) regions.insert(b.sector / 1024);
    EXPECT_EQ(regions, (std::set<uint64_t>{1, 5}));
    co_await expect_reads(*dev, model);
    co_await dev->drop_tables();
  };
  run_sync(body());
  EXPECT_TRUE(rows_xor_to_zero(legs_, 4, kLeg));
}

TEST_F(RaidParityTest, CheckCountsEightSectorsPerWrongStripeAndRepairRewritesParityOnly) {
  auto body = [&]() -> Task<void> {
    auto dev = co_await make(kRaid5);
    EXPECT_TRUE(co_await wait_idle(*dev));
    // Row 0 of raid5_ls over 4 legs: "D0 D1 D2 P". One byte of P, then one
    // of D1 in two 4 KiB stripes of row 1 ("D1 D2 P D0": D1 is on leg 0).
    legs_[3]->memory()->bytes(3, 1)[7] ^= std::byte{1};
    co_await message(*dev, "check");
    EXPECT_TRUE(co_await wait_idle(*dev));
    EXPECT_EQ(status(*dev), "0 24576 raid raid5_ls 4 AAAA 8192/8192 idle 8 0 -\n");
    legs_[0]->memory()->bytes(64 + 1, 1)[0] ^= std::byte{1};
    legs_[0]->memory()->bytes(64 + 9, 1)[0] ^= std::byte{1};
    co_await message(*dev, "check");
    EXPECT_TRUE(co_await wait_idle(*dev));
    EXPECT_EQ(status(*dev), "0 24576 raid raid5_ls 4 AAAA 8192/8192 idle 24 0 -\n");
    const std::vector<std::byte> d1(legs_[0]->memory()->bytes(64, 64).begin(),
                                    legs_[0]->memory()->bytes(64, 64).end());
    co_await message(*dev, "repair");
    EXPECT_TRUE(co_await wait_idle(*dev));
    EXPECT_TRUE(rows_xor_to_zero(legs_, 4, kLeg));
    // Data stays as it is: the parity follows it.
    EXPECT_EQ(std::memcmp(legs_[0]->memory()->bytes(64, 64).data(), d1.data(), d1.size()), 0);
    co_await message(*dev, "check");
    EXPECT_TRUE(co_await wait_idle(*dev));
    EXPECT_EQ(status(*dev), "0 24576 raid raid5_ls 4 AAAA 8192/8192 idle 0 0 -\n");
    co_await dev->drop_tables();
  };
  run_sync(body());
}

// Many writes at once to the blocks of a few rows: the stripe lock keeps
// every parity update.
TEST_F(RaidParityTest, ConcurrentWritesToOneRowLoseNoParityUpdate) {
  auto body = [&]() -> Task<void> {
    auto dev = co_await make("0 24576 raid raid5_la 2 64 nosync 4 - d0 - d1 - d2 - d3");
    std::vector<Task<Status>> writes;
    for (unsigned i = 0; i < 48; ++i)
      writes.push_back(test::write_fill(*dev, (i % 3) * 64 * 512 + (i / 3) * 8 * 512 % (64 * 512),
                                        8, uint8_t(i + 1)));
    for (const Status& st : co_await when_all(writes)) EXPECT_FALSE(st);
    co_await dev->drop_tables();
  };
  // nosync over legs that differ: fix parity first, with a resync of its own.
  auto prepare = [&]() -> Task<void> {
    auto dev = co_await make("0 24576 raid raid5_la 1 64 4 - d0 - d1 - d2 - d3");
    co_await message(*dev, "repair");
    EXPECT_TRUE(co_await wait_idle(*dev));
    co_await dev->drop_tables();
  };
  run_sync(prepare());
  EXPECT_TRUE(rows_xor_to_zero(legs_, 4, kLeg));
  run_sync(body());
  EXPECT_TRUE(rows_xor_to_zero(legs_, 4, kLeg));
}

TEST_F(RaidParityTest, ConstructorErrorsInTheKernelsWords) {
  const std::string four = " 4 - d0 - d1 - d2 - d3";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"0 8192 raid raid6_zr 1 8 3 - d0 - d1 - d2", "Failed to run raid array"},
      {"0 24576 raid raid4 3 8 stripe_cache 16" + four,
       "Failed to set raid4/5/6 stripe cache size"},
      {"0 24576 raid raid4 3 8 stripe_cache 40000" + four,
       "Failed to set raid4/5/6 stripe cache size"},
      {"0 16384 raid raid6_zr 2 64 nosync" + four, "Invalid flags combination"},
      {"0 24576 raid raid5_ls 3 64 journal_mode writeback" + four,
       "raid4/5/6 'journal_mode' is invalid without 'journal_dev'"},
      {"0 24576 raid raid5_ls 3 64 journal_dev tiny" + four, "No space for raid4/5/6 journal"},
      {"0 24576 raid raid5_ls 3 64 journal_dev m0" + four, "No space for raid4/5/6 journal"},
      {"0 24576 raid raid5_n 3 64 raid10_copies 2" + four, "Invalid flags combination"},
      {"0 24576 raid raid5_ls 1 64 4 - d0 - d1 - - - -", "Failed to run raid array"},
  };
  for (const auto& [table, error] : cases) {
    const std::string got = build_error(table, resolver_);
    EXPECT_EQ(got.substr(0, 6 + error.size()), "raid: " + error) << table << "\n got " << got;
  }
  // A stripe cache smaller than a chunk's stripes is raised to it.
  auto body = [&]() -> Task<void> {
    // Legs of 8032 sectors are used as 8000 (whole chunks), as raid5_run()
    // does; the tail past the rows fails.
    auto tail = co_await make("0 24096 raid raid5_ls 1 64" + four);
    EXPECT_EQ(status(*tail), "0 24096 raid raid5_ls 4 AAAA 8000/8000 idle 0 0 -\n");
    std::vector<std::byte> block(512);
    EXPECT_FALSE(co_await tail->read(23999 * 512, block, nullptr, nullptr));
    EXPECT_TRUE(co_await tail->read(24000 * 512, block, nullptr, nullptr));
    co_await tail->drop_tables();
    auto dev = co_await make("0 24576 raid raid5_la 3 64 stripe_cache 10" + four);
    EXPECT_EQ(table_line(*dev), "0 24576 raid raid5_la 3 64 stripe_cache 32" + four + "\n");
    co_await dev->drop_tables();
  };
  run_sync(body());
}

// Power fails after any number of writes, remembered or not: after a
// restart (which resyncs the dirty regions' parity) every write that
// reported FUA reads back, with all legs and with any one leg missing.
TEST_F(RaidParityTest, CrashAtAnyPointKeepsFuaWritesAndParity) {
  constexpr uint64_t leg = 4096, meta = 64;
  for (uint64_t stop_after = 0; stop_after < 40; stop_after += 4)
    for (int keep : {-1, 2}) {
      SCOPED_TRACE("stop after " + std::to_string(stop_after) + " keep " + std::to_string(keep));
      auto disk = std::make_shared<test::MemoryDevice>(4 * (leg + meta), "disk");
      auto power = std::make_shared<test::CrashDevice>(disk, "disk");
      resolver_.add("disk", power);
      std::vector<std::pair<uint64_t, uint8_t>> durable;
      std::string legs;
      for (unsigned i = 0; i < 4; ++i) legs += " n" + std::to_string(i) + " c" + std::to_string(i);
      auto run = [&](bool writes, std::string table) -> Task<void> {
        std::vector<std::shared_ptr<Device>> parts;
        for (unsigned i = 0; i < 4; ++i) {
          const std::pair<std::string, std::string> lines[] = {
              {"c" + std::to_string(i), "0 4096 linear disk " + std::to_string(i * leg)},
              {"n" + std::to_string(i), "0 64 linear disk " + std::to_string(4 * leg + i * meta)}};
          for (const auto& [name, t] : lines) {
            auto d = std::make_shared<Device>(name, "", false, parts.size() + 1);
            std::shared_ptr<Table> built = Table::build(t, resolver_, false, [] {});
            co_await built->open();
            co_await d->load(built);
            co_await d->resume();
            resolver_.add(name, d);
            parts.push_back(d);
          }
        }
        auto dev = co_await make(table);
        EXPECT_TRUE(co_await wait_idle(*dev));
        if (writes) {
          co_await sleep_ms(60);  // the resync's bits cleared
          power->power_off_after(stop_after);
          for (uint64_t i = 0; i < 16; ++i) {
            const uint64_t sector = (i % 4) * 3072 + (i * 40) % 3072;
            const uint32_t fua = i % 3 == 0 ? kBioFua : 0;
            const uint8_t value = uint8_t(0xa0 + i);
            const Status st = co_await test::write_fill(*dev, sector * 512, 8, value, fua);
            if (!st && fua) durable.emplace_back(sector, value);
          }
        } else {
          for (const auto& [sector, value] : durable) {
            std::vector<std::byte> back(512);
            EXPECT_FALSE(co_await dev->read(sector * 512, back, nullptr, nullptr));
            EXPECT_EQ(uint8_t(back[0]), value) << sector;
          }
        }
        co_await dev->drop_tables();
        for (auto& d : parts) co_await d->drop_tables();
      };
      const std::string table = "0 12288 raid raid5_rs 5 64 region_size 1024 daemon_sleep 10 4";
      run_sync(run(true, table + legs));
      // Overwritten FUA writes: only the last to each sector counts.
      std::vector<std::pair<uint64_t, uint8_t>> last;
      for (auto it = durable.rbegin(); it != durable.rend(); ++it)
        if (std::none_of(last.begin(), last.end(), [&](auto& p) { return p.first == it->first; }))
          last.push_back(*it);
      durable = last;
      ASSERT_FALSE(run_sync(keep < 0 ? power->crash() : power->crash(uint64_t(stop_after + keep))));
      run_sync(run(false, table + legs));
      for (unsigned gone = 0; gone < 4; ++gone) {
        std::string fewer;
        for (unsigned i = 0; i < 4; ++i) fewer += i == gone ? " - -" : " - c" + std::to_string(i);
        run_sync(run(false, "0 12288 raid raid5_rs 1 64 4" + fewer));
      }
    }
}

}  // namespace
}  // namespace dmnbd
