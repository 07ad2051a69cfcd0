#include <gtest/gtest.h>

#include "dm/table.hpp"
#include "test_support.hpp"

namespace dmnbd {
namespace {

using test::run_sync;

class LinearTest : public ::testing::TestWithParam<bool> {  // param: io_uring or thread pool
 protected:
  void SetUp() override { test::make_patterned_file(dir_ / "a.img", 1 << 20); }
  test::TempDir dir_;
  test::DirResolver resolver_{dir_.path()};
};

TEST_P(LinearTest, ReadsAndWritesAtTheOffset) {
  auto table = Table::build("0 64 linear a.img 100\n", resolver_, false);
  Target& t = *table->entries()[0].target;
  std::vector<std::byte> buf(8 * 512);
  Bio read{.op = BioOp::read, .sector = 3, .sectors = 8, .data = buf};
  ASSERT_FALSE(run_sync(t.map(read), GetParam()));
  for (size_t i = 0; i < buf.size(); i += 512)
    EXPECT_EQ(static_cast<uint8_t>(buf[i]), test::pattern_byte((103 * 512) + i)) << i;

  std::fill(buf.begin(), buf.end(), std::byte{0x5a});
  Bio write{.op = BioOp::write, .sector = 0, .sectors = 8, .data = buf, .flags = kBioFua};
  ASSERT_FALSE(run_sync(t.map(write), GetParam()));
  ASSERT_FALSE(run_sync(t.flush(), GetParam()));
  auto file = test::read_file_bytes(dir_ / "a.img");
  EXPECT_EQ(file[100 * 512], std::byte{0x5a});
  EXPECT_EQ(file[108 * 512 - 1], std::byte{0x5a});
  EXPECT_EQ(static_cast<uint8_t>(file[108 * 512]), test::pattern_byte(108 * 512));
  EXPECT_EQ(static_cast<uint8_t>(file[99 * 512]), test::pattern_byte(99 * 512));
}

TEST_P(LinearTest, BlockStatusFollowsTheFilesHoles) {
  // 1 MiB sparse file with data only in its second 64 KiB.
  int fd = ::open((dir_ / "sparse.img").c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_EQ(ftruncate(fd, 1 << 20), 0);
  std::vector<char> data(65536, 'x');
  ASSERT_EQ(pwrite(fd, data.data(), data.size(), 65536), 65536);
  ::close(fd);
  auto table = Table::build("0 2048 linear sparse.img 0\n", resolver_, false);
  ExtentList out;
  ASSERT_FALSE(run_sync(table->entries()[0].target->block_status(0, 2048, out), GetParam()));
  ASSERT_EQ(out.total_sectors(), 2048u);
  ASSERT_GE(out.extents().size(), 3u);
  EXPECT_EQ(out.extents()[0], (Extent{128, kExtentHole | kExtentZero}));
  EXPECT_EQ(out.extents()[1], (Extent{128, 0}));
  EXPECT_EQ(out.extents()[2].flags, kExtentHole | kExtentZero);
}

TEST_P(LinearTest, DiscardPunchesAHoleThatReadsAsZero) {
  auto table = Table::build("0 2048 linear a.img 0\n", resolver_, false);
  Target& t = *table->entries()[0].target;
  ASSERT_FALSE(run_sync(t.map({.op = BioOp::discard, .sector = 128, .sectors = 128}), GetParam()));
  auto file = test::read_file_bytes(dir_ / "a.img");
  EXPECT_EQ(file[128 * 512], std::byte{0});
  EXPECT_EQ(file[256 * 512 - 1], std::byte{0});
  EXPECT_EQ(static_cast<uint8_t>(file[256 * 512]), test::pattern_byte(256 * 512));
}

TEST_P(LinearTest, WriteZeroesKeepsOrPunchesAllocation) {
  auto table = Table::build("0 2048 linear a.img 0\n", resolver_, false);
  Target& t = *table->entries()[0].target;
  ASSERT_FALSE(run_sync(
      t.map({.op = BioOp::write_zeroes, .sector = 0, .sectors = 128, .flags = kBioNoUnmap}),
      GetParam()));
  ASSERT_FALSE(
      run_sync(t.map({.op = BioOp::write_zeroes, .sector = 512, .sectors = 128}), GetParam()));
  auto file = test::read_file_bytes(dir_ / "a.img");
  for (size_t i : {0ul, 128ul * 512 - 1, 512ul * 512, 640ul * 512 - 1})
    EXPECT_EQ(file[i], std::byte{0}) << i;
  ExtentList out;
  ASSERT_FALSE(run_sync(t.block_status(0, 2048, out), GetParam()));
  EXPECT_EQ(out.extents()[0].flags, 0u);  // NOUNMAP kept the blocks allocated
}

TEST_P(LinearTest, TableLineRoundTrips) {
  auto table = Table::build("0 64 linear a.img 100\n", resolver_, false);
  EXPECT_EQ(table->table_text(), "0 64 linear a.img 100\n");
  EXPECT_EQ(table->entries()[0].target->device_areas().size(), 1u);
}

INSTANTIATE_TEST_SUITE_P(Engines, LinearTest, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "io_uring" : "thread_pool"; });

}  // namespace
}  // namespace dmnbd
