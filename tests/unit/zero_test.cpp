#include <gtest/gtest.h>

#include "dm/table.hpp"
#include "test_support.hpp"

namespace dmnbd {
namespace {

using test::run_sync;

TEST(ZeroTarget, ReadsZeroesAndReportsThem) {
  test::TempDir dir;
  test::DirResolver resolver(dir.path());
  auto table = Table::build("0 64 zero\n", resolver, false);
  Target& t = *table->entries()[0].target;
  std::vector<std::byte> buf(4096, std::byte{0xff});
  bool zero = false;
  ASSERT_FALSE(run_sync(
      t.map({.op = BioOp::read, .sector = 8, .sectors = 8, .data = buf, .reads_zero = &zero})));
  EXPECT_TRUE(zero);
  EXPECT_TRUE(std::all_of(buf.begin(), buf.end(), [](std::byte b) { return b == std::byte{0}; }));
}

TEST(ZeroTarget, DropsWritesDiscardsAndFlushes) {
  test::TempDir dir;
  test::DirResolver resolver(dir.path());
  auto table = Table::build("0 64 zero\n", resolver, false);
  Target& t = *table->entries()[0].target;
  std::vector<std::byte> buf(512, std::byte{1});
  EXPECT_FALSE(run_sync(t.map({.op = BioOp::write, .sector = 0, .sectors = 1, .data = buf})));
  EXPECT_FALSE(run_sync(t.map({.op = BioOp::discard, .sector = 0, .sectors = 64})));
  EXPECT_FALSE(run_sync(t.map({.op = BioOp::write_zeroes, .sector = 0, .sectors = 64})));
  EXPECT_FALSE(run_sync(t.flush()));
  ExtentList out;
  ASSERT_FALSE(run_sync(t.block_status(0, 64, out)));
  EXPECT_EQ(out.extents(), (std::vector<Extent>{{64, kExtentHole | kExtentZero}}));
  EXPECT_EQ(table->table_text(), "0 64 zero\n");
}

TEST(ZeroTarget, TakesNoArguments) {
  test::TempDir dir;
  test::DirResolver resolver(dir.path());
  EXPECT_THROW(Table::build("0 64 zero x\n", resolver, false), TableError);
}

}  // namespace
}  // namespace dmnbd
