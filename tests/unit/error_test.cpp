#include <gtest/gtest.h>

#include "dm/table.hpp"
#include "test_support.hpp"

namespace dmnbd {
namespace {

using test::run_sync;

TEST(ErrorTarget, FailsEveryIoWithEioButNotFlush) {
  test::TempDir dir;
  test::DirResolver resolver(dir.path());
  auto table = Table::build("0 64 error\n", resolver, false);
  Target& t = *table->entries()[0].target;
  std::vector<std::byte> buf(512);
  EXPECT_EQ(run_sync(t.map({.op = BioOp::read, .sector = 0, .sectors = 1, .data = buf})),
            errno_status(EIO));
  EXPECT_EQ(run_sync(t.map({.op = BioOp::write, .sector = 0, .sectors = 1, .data = buf})),
            errno_status(EIO));
  EXPECT_EQ(run_sync(t.map({.op = BioOp::discard, .sector = 0, .sectors = 8})), errno_status(EIO));
  EXPECT_EQ(run_sync(t.map({.op = BioOp::write_zeroes, .sector = 0, .sectors = 8})),
            errno_status(EIO));
  // The kernel sends no flush to the error target, so a device flush succeeds.
  EXPECT_FALSE(run_sync(t.flush()));
  EXPECT_EQ(table->table_text(), "0 64 error\n");
}

TEST(ErrorTarget, ValidatesTheOptionalDevice) {
  test::TempDir dir;
  test::make_patterned_file(dir / "a.img", 64 * 512);
  test::DirResolver resolver(dir.path());
  EXPECT_NO_THROW(Table::build("0 64 error a.img 0\n", resolver, false));
  EXPECT_THROW(Table::build("0 64 error a.img x\n", resolver, false), TableError);
  EXPECT_THROW(Table::build("0 64 error nothere.img 0\n", resolver, false), TableError);
}

}  // namespace
}  // namespace dmnbd
