#include <gtest/gtest.h>

#include <cstdio>

#include "devices/recording_device.hpp"
#include "dm/table.hpp"
#include "test_support.hpp"

namespace dmnbd {
namespace {

using test::BioRecord;
using test::build_error;
using test::expect_label;
using test::make_labelled_file;
using test::RecordingDevice;
using test::run_sync;

std::string label(std::span<const std::byte> sector) {
  return std::string(reinterpret_cast<const char*>(sector.data()), 8);
}

class StripedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    make_labelled_file(dir_ / "a.img", 'A', 2048);
    make_labelled_file(dir_ / "b.img", 'B', 2048);
    make_labelled_file(dir_ / "c.img", 'C', 2048);
  }
  test::TempDir dir_;
  test::DirResolver resolver_{dir_.path()};
};

// The kernel's formula: chunk c = s / chunk, leg c % N, leg sector
// offset + (c / N) * chunk + s % chunk; checked for power-of-two and other chunks.
TEST_F(StripedTest, ReadsFollowTheKernelsFormula) {
  struct Case {
    uint32_t chunk;
    uint64_t offsets[3];
  } cases[] = {{8, {0, 0, 0}}, {6, {10, 3, 0}}, {1, {100, 7, 1}}, {128, {0, 512, 1}}};
  const char tags[] = {'A', 'B', 'C'};
  for (const Case& c : cases) {
    const uint64_t len = 3 * c.chunk * (384 / c.chunk);
    const std::string text = "0 " + std::to_string(len) + " striped 3 " + std::to_string(c.chunk) +
                             " a.img " + std::to_string(c.offsets[0]) + " b.img " +
                             std::to_string(c.offsets[1]) + " c.img " +
                             std::to_string(c.offsets[2]) + "\n";
    auto dev = test::make_device(text, resolver_);
    std::vector<std::byte> buf(len * 512);
    ASSERT_FALSE(run_sync(dev->read(0, buf, nullptr))) << text;
    for (uint64_t s = 0; s < len; ++s) {
      const uint64_t chunk = s / c.chunk, leg = chunk % 3;
      const uint64_t mapped = c.offsets[leg] + (chunk / 3) * c.chunk + s % c.chunk;
      ASSERT_EQ(label(std::span(buf).subspan(s * 512, 512)), expect_label(tags[leg], mapped))
          << text << " sector " << s;
    }
  }
}

TEST_F(StripedTest, WritesLandOnTheirLegAndTheTableRoundTrips) {
  auto table = Table::build("0 96 striped 2 16 a.img 4 b.img 0\n", resolver_, false);
  EXPECT_EQ(table->table_text(), "0 96 striped 2 16 a.img 4 b.img 0\n");
  EXPECT_EQ(table->status_text(), "0 96 striped 2 a.img b.img 1 AA\n");
  EXPECT_EQ(table->entries()[0].target->max_io_len(), 16u);
  EXPECT_EQ(table->entries()[0].target->device_areas().size(), 2u);
  auto dev = std::make_shared<Device>("s", "", false, 0);
  run_sync(dev->load(table));
  ASSERT_FALSE(run_sync(dev->resume()));
  // Sectors 10-40 span chunks 0 (leg a), 1 (leg b) and 2 (leg a, row 1).
  std::vector<std::byte> data(31 * 512, std::byte{0x5a});
  ASSERT_FALSE(run_sync(dev->write(10 * 512, data, 0)));
  ASSERT_FALSE(run_sync(dev->flush()));
  auto a = test::read_file_bytes(dir_ / "a.img");
  auto b = test::read_file_bytes(dir_ / "b.img");
  EXPECT_EQ(label(std::span(a).subspan(13 * 512)), "A:000013");  // leg a: 4 + 10 = 14 is first
  EXPECT_EQ(a[14 * 512], std::byte{0x5a});                       // chunk 0, sectors 10-15
  EXPECT_EQ(a[20 * 512 - 1], std::byte{0x5a});
  EXPECT_EQ(b[0], std::byte{0x5a});  // chunk 1 = leg b row 0, all 16 sectors
  EXPECT_EQ(b[16 * 512 - 1], std::byte{0x5a});
  EXPECT_EQ(label(std::span(b).subspan(16 * 512)), "B:000016");
  EXPECT_EQ(a[20 * 512], std::byte{0x5a});  // chunk 2 = leg a row 1: 4 + 16 = 20, sectors 32-40
  EXPECT_EQ(a[29 * 512 - 1], std::byte{0x5a});
  EXPECT_EQ(label(std::span(a).subspan(29 * 512)), "A:000029");
}

TEST_F(StripedTest, FlushReachesEveryLegAndDiscardsAreSplitPerLeg) {
  auto r0 = std::make_shared<RecordingDevice>("r0", 1000);
  auto r1 = std::make_shared<RecordingDevice>("r1", 1000);
  auto r2 = std::make_shared<RecordingDevice>("r2", 1000);
  resolver_.add("r0", r0);
  resolver_.add("r1", r1);
  resolver_.add("r2", r2);
  auto table = Table::build("0 240 striped 3 8 r0 0 r1 100 r2 200\n", resolver_, false);
  Target& t = *table->entries()[0].target;
  ASSERT_FALSE(run_sync(t.flush()));
  for (auto* r : {r0.get(), r1.get(), r2.get()}) {
    EXPECT_EQ(r->bios(), std::vector<BioRecord>{{BioOp::flush}});
    r->clear();
  }
  // Sectors 5..53: chunks 0 (r0, part), 1 (r1), 2 (r2), 3 (r0), 4 (r1), 5 (r2) and
  // 6 (r0, up to 53). Each leg gets one bio for its share, as dm's per-leg bios do.
  ASSERT_FALSE(run_sync(t.map({.op = BioOp::discard, .sector = 5, .sectors = 49})));
  EXPECT_EQ(r0->bios(), (std::vector<BioRecord>{{BioOp::discard, 5, 17}}));
  EXPECT_EQ(r1->bios(), (std::vector<BioRecord>{{BioOp::discard, 100, 16}}));
  EXPECT_EQ(r2->bios(), (std::vector<BioRecord>{{BioOp::discard, 200, 16}}));
  for (auto* r : {r0.get(), r1.get(), r2.get()}) r->clear();
  // A range inside one chunk reaches only that leg.
  ASSERT_FALSE(run_sync(t.map({.op = BioOp::write_zeroes, .sector = 9, .sectors = 3})));
  EXPECT_TRUE(r0->bios().empty());
  EXPECT_EQ(r1->bios(), (std::vector<BioRecord>{{BioOp::write_zeroes, 101, 3}}));
  EXPECT_TRUE(r2->bios().empty());
}

TEST_F(StripedTest, DeviceSplitsAtChunksAndDiscardsReachTheFiles) {
  auto dev = test::make_device("0 96 striped 2 16 a.img 0 b.img 0\n", resolver_);
  ASSERT_FALSE(run_sync(dev->discard(0, 96 * 512, 0)));
  auto a = test::read_file_bytes(dir_ / "a.img");
  auto b = test::read_file_bytes(dir_ / "b.img");
  for (size_t i : {0ul, 48ul * 512 - 1}) {
    EXPECT_EQ(a[i], std::byte{0}) << i;
    EXPECT_EQ(b[i], std::byte{0}) << i;
  }
  EXPECT_EQ(label(std::span(a).subspan(48 * 512)), "A:000048");
}

TEST_F(StripedTest, FailingLegIsMarkedDeadAndRaisesEvents) {
  auto good = std::make_shared<RecordingDevice>("good", 1000);
  auto bad = std::make_shared<RecordingDevice>("bad", 1000);
  bad->fail_all(errno_status(EIO));
  resolver_.add("good", good);
  resolver_.add("bad", bad);
  int events = 0;
  auto table = Table::build("0 64 striped 2 8 good 0 bad 0\n", resolver_, false, [&] { ++events; });
  Target& t = *table->entries()[0].target;
  std::vector<std::byte> buf(512);
  EXPECT_FALSE(run_sync(t.map({.op = BioOp::read, .sector = 0, .sectors = 1, .data = buf})));
  EXPECT_EQ(t.status(), "2 good bad 1 AA");
  EXPECT_EQ(run_sync(t.map({.op = BioOp::read, .sector = 8, .sectors = 1, .data = buf})),
            errno_status(EIO));
  EXPECT_EQ(t.status(), "2 good bad 1 AD");
  EXPECT_EQ(events, 1);
  // A flush fails on the bad leg too; after 15 errors the events stop.
  EXPECT_EQ(run_sync(t.flush()), errno_status(EIO));
  for (int i = 0; i < 20; ++i)
    (void)run_sync(t.map({.op = BioOp::read, .sector = 8, .sectors = 1, .data = buf}));
  EXPECT_EQ(events, 14);
  // "Not supported" is not the leg's fault.
  auto other = std::make_shared<RecordingDevice>("nosupp", 1000);
  other->fail_all(errno_status(EOPNOTSUPP));
  resolver_.add("nosupp", other);
  auto t2 = Table::build("0 64 striped 2 8 good 0 nosupp 0\n", resolver_, false);
  EXPECT_EQ(run_sync(t2->entries()[0].target->map(
                {.op = BioOp::write_zeroes, .sector = 8, .sectors = 8})),
            errno_status(EOPNOTSUPP));
  EXPECT_EQ(t2->entries()[0].target->status(), "2 good nosupp 1 AA");
}

TEST_F(StripedTest, BlockStatusIsEachLegsAtTheMappedPlace) {
  // Leg a: data everywhere; leg s: a sparse file with data only in sectors 16-31.
  int fd = ::open((dir_ / "s.img").c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_EQ(ftruncate(fd, 1 << 20), 0);
  std::vector<char> data(16 * 512, 'x');
  ASSERT_EQ(pwrite(fd, data.data(), data.size(), 16 * 512), 16 * 512);
  ::close(fd);
  auto dev = test::make_device("0 128 striped 2 16 a.img 0 s.img 0\n", resolver_);
  std::vector<ByteExtent> out;
  ASSERT_FALSE(run_sync(dev->block_status_bytes(0, 128 * 512, 100, out)));
  // Chunks: a, s(0-15: hole), a, s(16-31: data), a, s(hole), a, s(hole).
  std::vector<std::pair<uint64_t, uint32_t>> got;
  for (auto& e : out) got.push_back({e.length / 512, e.flags});
  const uint32_t hole = kExtentHole | kExtentZero;
  EXPECT_EQ(got, (std::vector<std::pair<uint64_t, uint32_t>>{
                     {16, 0}, {16, hole}, {48, 0}, {16, hole}, {16, 0}, {16, hole}}));
}

TEST_F(StripedTest, ConstructorErrors) {
  auto err = [&](const std::string& args, uint64_t len = 64) {
    return build_error("0 " + std::to_string(len) + " striped" + args + "\n", resolver_);
  };
  EXPECT_EQ(err(""), "striped: Not enough arguments");
  EXPECT_EQ(err(" 2"), "striped: Not enough arguments");
  EXPECT_EQ(err(" 0 8 a.img 0"), "striped: Invalid stripe count");
  EXPECT_EQ(err(" x 8 a.img 0"), "striped: Invalid stripe count");
  EXPECT_EQ(err(" -1 8 a.img 0"), "striped: Invalid stripe count");
  EXPECT_EQ(err(" 4294967296 8 a.img 0"), "striped: Invalid stripe count");
  EXPECT_EQ(err(" 1 0 a.img 0"), "striped: Invalid chunk_size");
  EXPECT_EQ(err(" 1 8k a.img 0"), "striped: Invalid chunk_size");
  EXPECT_EQ(err(" 3 8 a.img 0 b.img 0 c.img 0"),
            "striped: Target length not divisible by number of stripes");
  EXPECT_EQ(err(" 2 7 a.img 0 b.img 0"), "striped: Target length not divisible by chunk size");
  EXPECT_EQ(err(" 2 8 a.img 0"), "striped: Not enough destinations specified");
  EXPECT_EQ(err(" 2 8 a.img 0 b.img 0 c.img"), "striped: Not enough destinations specified");
  EXPECT_EQ(err(" 2 8 a.img 0 b.img x"), "striped: Couldn't parse stripe destination");
  EXPECT_EQ(err(" 2 8 a.img -1 b.img 0"), "striped: Couldn't parse stripe destination");
  EXPECT_EQ(err(" 2 8 a.img 0 nope.img 0").rfind("striped: Couldn't parse stripe destination (", 0),
            0u);
  EXPECT_EQ(err(" 2 8 a.img 0 b.img 2017"),
            "striped: b.img too small for target: start=2017, len=32, dev_size=2048");
  EXPECT_EQ(err(" 2 8 a.img 0 b.img 2016"), "(built)");
  EXPECT_EQ(err(" +2 8 a.img 0 b.img 0"), "(built)");  // kstrtouint takes a '+'
}

}  // namespace
}  // namespace dmnbd
