#include <gtest/gtest.h>

#include <cstdio>

#include "dm/table.hpp"
#include "test_support.hpp"

namespace dmnbd {
namespace {

using test::build_error;
using test::expect_label;
using test::label;
using test::make_labelled_file;
using test::run_sync;

class UnstripedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    make_labelled_file(dir_ / "r.img", 'R', 4096);
    make_labelled_file(dir_ / "a.img", 'A', 1024);
    make_labelled_file(dir_ / "b.img", 'B', 1024);
    make_labelled_file(dir_ / "c.img", 'C', 1024);
  }
  test::TempDir dir_;
  test::DirResolver resolver_{dir_.path()};
};

// phys = offset + s + (N - 1) * chunk * (s / chunk) + stripe * chunk, for
// power-of-two and other chunk sizes (current kernels take both).
TEST_F(UnstripedTest, ReadsFollowTheKernelsFormula) {
  struct Case {
    uint32_t stripes, chunk, stripe;
    uint64_t offset;
  } cases[] = {{3, 8, 0, 0}, {3, 8, 2, 5}, {4, 6, 1, 0}, {2, 128, 1, 3}, {1, 16, 0, 7}};
  for (const Case& c : cases) {
    const uint64_t len = c.chunk * (384 / c.chunk);
    const std::string text = "0 " + std::to_string(len) + " unstriped " +
                             std::to_string(c.stripes) + " " + std::to_string(c.chunk) + " " +
                             std::to_string(c.stripe) + " r.img " + std::to_string(c.offset) + "\n";
    auto dev = test::make_device(text, resolver_);
    std::vector<std::byte> buf(len * 512);
    ASSERT_FALSE(run_sync(dev->read(0, buf, nullptr))) << text;
    for (uint64_t s = 0; s < len; ++s) {
      const uint64_t phys =
          c.offset + s + uint64_t{c.stripes - 1} * c.chunk * (s / c.chunk) + c.stripe * c.chunk;
      ASSERT_EQ(label(buf, s), expect_label('R', phys)) << text << " sector " << s;
    }
  }
}

// Unstriping a striped device gives back each leg, for every chunk size.
TEST_F(UnstripedTest, UndoesStriped) {
  for (uint32_t chunk : {8u, 6u, 64u}) {
    const uint64_t per_leg = chunk * (512 / chunk);
    auto raid = test::make_device("0 " + std::to_string(3 * per_leg) + " striped 3 " +
                                      std::to_string(chunk) + " a.img 0 b.img 0 c.img 0\n",
                                  resolver_, false, "raid");
    resolver_.add("raid", raid);
    const char tags[] = {'A', 'B', 'C'};
    for (uint32_t leg = 0; leg < 3; ++leg) {
      auto dev =
          test::make_device("0 " + std::to_string(per_leg) + " unstriped 3 " +
                                std::to_string(chunk) + " " + std::to_string(leg) + " raid 0\n",
                            resolver_, false, "leg");
      std::vector<std::byte> buf(per_leg * 512);
      ASSERT_FALSE(run_sync(dev->read(0, buf, nullptr)));
      for (uint64_t s = 0; s < per_leg; ++s)
        ASSERT_EQ(label(buf, s), expect_label(tags[leg], s)) << chunk << " leg " << leg;
    }
  }
}

TEST_F(UnstripedTest, WritesDiscardsFlushesAndTheTable) {
  auto table = Table::build("0 64 unstriped 2 8 1 r.img 16\n", resolver_, false);
  EXPECT_EQ(table->table_text(), "0 64 unstriped 2 8 1 r.img 16\n");
  EXPECT_EQ(table->status_text(), "0 64 unstriped\n");
  Target& t = *table->entries()[0].target;
  EXPECT_EQ(t.max_io_len(), 8u);
  std::vector<std::byte> data(8 * 512, std::byte{0x77});
  // Sector 8 is row 1 of stripe 1: 16 + 8 + 8 + 8 = 40.
  ASSERT_FALSE(run_sync(t.map({.op = BioOp::write, .sector = 8, .sectors = 8, .data = data})));
  ASSERT_FALSE(run_sync(t.flush()));
  auto file = test::read_file_bytes(dir_ / "r.img");
  EXPECT_EQ(label(file, 39), "R:000039");
  EXPECT_EQ(file[40 * 512], std::byte{0x77});
  EXPECT_EQ(file[48 * 512 - 1], std::byte{0x77});
  EXPECT_EQ(label(file, 48), "R:000048");
  // The kernel's target takes no discards: they leave the data alone.
  ASSERT_FALSE(run_sync(t.map({.op = BioOp::discard, .sector = 8, .sectors = 8})));
  EXPECT_EQ(test::read_file_bytes(dir_ / "r.img")[40 * 512], std::byte{0x77});
  ASSERT_FALSE(run_sync(t.map({.op = BioOp::write_zeroes, .sector = 8, .sectors = 8})));
  EXPECT_EQ(test::read_file_bytes(dir_ / "r.img")[40 * 512], std::byte{0});
}

// Like current kernels (checked by the kernel oracle), the formula uses the
// target's own sector: a line at sector 8 starts with its stripe's first chunk.
TEST_F(UnstripedTest, UsesTheTargetsOwnSector) {
  auto dev = test::make_device("0 8 zero\n8 64 unstriped 2 8 1 r.img 0\n", resolver_);
  std::vector<std::byte> buf(512);
  ASSERT_FALSE(run_sync(dev->read(8 * 512, buf, nullptr)));
  EXPECT_EQ(label(buf, 0), "R:000008");  // target sector 0 = row 0 of stripe 1
}

TEST_F(UnstripedTest, ConstructorErrors) {
  auto err = [&](const std::string& args, uint64_t len = 64) {
    return build_error("0 " + std::to_string(len) + " unstriped" + args + "\n", resolver_);
  };
  EXPECT_EQ(err(" 2 8 0 r.img"), "unstriped: Invalid number of arguments");
  EXPECT_EQ(err(" 2 8 0 r.img 0 0"), "unstriped: Invalid number of arguments");
  EXPECT_EQ(err(" 0 8 0 r.img 0"), "unstriped: Invalid stripe count");
  EXPECT_EQ(err(" two 8 0 r.img 0"), "unstriped: Invalid stripe count");
  EXPECT_EQ(err(" 2 0 0 r.img 0"), "unstriped: Invalid chunk_size");
  EXPECT_EQ(err(" 2 -8 0 r.img 0"), "unstriped: Invalid chunk_size");
  EXPECT_EQ(err(" 2 8 x r.img 0"), "unstriped: Invalid stripe number");
  EXPECT_EQ(err(" 2 8 3 r.img 0"), "unstriped: Please provide stripe between [0, # of stripes]");
  EXPECT_EQ(err(" 2 8 2 r.img 0"), "(built)");  // the kernel's bound is inclusive
  EXPECT_EQ(err(" 1 8 9 r.img 0"), "(built)");  // and not checked for one stripe
  EXPECT_EQ(err(" 2 8 0 nope.img 0").rfind("unstriped: Couldn't get striped device (", 0), 0u);
  EXPECT_EQ(err(" 2 8 0 r.img 1x"), "unstriped: Invalid striped device offset");
  EXPECT_EQ(err(" 2 8 0 r.img 0", 60), "unstriped: Target length not divisible by chunk size");
  EXPECT_EQ(err(" 3 8 0 r.img 0"), "(built)");  // length need not divide by N any more
  EXPECT_EQ(err(" 2 8 0 r.img 4033"),
            "unstriped: r.img too small for target: start=4033, len=64, dev_size=4096");
}

}  // namespace
}  // namespace dmnbd
