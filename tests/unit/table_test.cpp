#include "dm/table.hpp"

#include <gtest/gtest.h>

#include "test_support.hpp"

namespace dmnbd {
namespace {

using test::DirResolver;
using test::TempDir;

class TableTest : public ::testing::Test {
 protected:
  void SetUp() override { test::make_patterned_file(dir_ / "a.img", 1 << 20); }

  std::shared_ptr<Table> build(const std::string& text, bool read_only = false) {
    return Table::build(text, resolver_, read_only);
  }
  // The error a table is rejected with, "" if it builds.
  std::string error_of(const std::string& text, unsigned* line = nullptr) {
    try {
      build(text);
    } catch (const TableError& e) {
      if (line) *line = e.line();
      return e.reason();
    }
    return "";
  }

  TempDir dir_;
  DirResolver resolver_{dir_.path()};
};

TEST(TableText, SkipsCommentsAndBlankLinesAndSplitsArguments) {
  auto lines = parse_table_text(
      "# a comment\n"
      "\n"
      "0 8 linear   a.img 0   # trailing comment\n"
      "  8\t8 zero\n"
      "16 8 linear with\\ space 0\n");
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0].line, 3u);
  EXPECT_EQ(lines[0].type, "linear");
  EXPECT_EQ(lines[0].args, (std::vector<std::string>{"a.img", "0"}));
  EXPECT_EQ(lines[1].start, 8u);
  EXPECT_EQ(lines[1].line, 4u);
  EXPECT_TRUE(lines[1].args.empty());
  EXPECT_EQ(lines[2].args[0], "with space");  // backslash escapes, like dm_split_args
}

TEST(TableText, RejectsMalformedLines) {
  for (const char* bad : {"0 8\n", "x 8 zero\n", "0 -8 zero\n", "0 8x zero\n"}) {
    try {
      parse_table_text(bad);
      ADD_FAILURE() << "accepted: " << bad;
    } catch (const TableError& e) {
      EXPECT_EQ(e.line(), 1u);
      EXPECT_NE(e.reason().find("Invalid format"), std::string::npos);
    }
  }
}

TEST_F(TableTest, BuildsContiguousTableAndFindsTargets) {
  auto t = build("0 100 linear a.img 0\n100 50 zero\n150 10 error\n");
  EXPECT_EQ(t->sectors(), 160u);
  EXPECT_EQ(t->find(0).type, "linear");
  EXPECT_EQ(t->find(99).type, "linear");
  EXPECT_EQ(t->find(100).type, "zero");
  EXPECT_EQ(t->find(149).type, "zero");
  EXPECT_EQ(t->find(159).type, "error");
  EXPECT_EQ(t->table_text(), "0 100 linear a.img 0\n100 50 zero\n150 10 error\n");
  EXPECT_EQ(t->status_text(), "0 100 linear\n100 50 zero\n150 10 error\n");
}

TEST_F(TableTest, KernelErrors) {
  unsigned line = 0;
  EXPECT_EQ(error_of("0 8 nosuch\n", &line), "nosuch: unknown target type");
  EXPECT_EQ(line, 1u);
  EXPECT_EQ(error_of("0 8 zero\n8 0 zero\n", &line), "zero: zero-length target");
  EXPECT_EQ(line, 2u);
  EXPECT_EQ(error_of("0 8 zero\n16 8 zero\n", &line), "zero: Gap in table");  // hole
  EXPECT_EQ(line, 2u);
  EXPECT_EQ(error_of("0 8 zero\n4 8 zero\n"), "zero: Gap in table");  // overlap
  EXPECT_EQ(error_of("8 8 zero\n", &line), "zero: Gap in table");     // not from 0
  EXPECT_EQ(error_of("# only a comment\n", &line), "table is empty");
  EXPECT_EQ(line, 0u);
}

TEST_F(TableTest, TargetConstructorErrorsNameTheLine) {
  unsigned line = 0;
  EXPECT_EQ(error_of("0 8 zero\n8 8 linear a.img\n", &line), "linear: Invalid argument count");
  EXPECT_EQ(line, 2u);
  EXPECT_EQ(error_of("0 8 linear a.img x\n"), "linear: Invalid device sector");
  EXPECT_EQ(error_of("0 8 linear a.img 1y\n"), "linear: Invalid device sector");
  EXPECT_EQ(error_of("0 8 zero 1\n"), "zero: No arguments required");
  EXPECT_EQ(error_of("0 8 linear missing.img 0\n").rfind("linear: Device lookup failed (", 0), 0u);
  // 1 MiB = 2048 sectors: 2040 + 16 runs past the end.
  EXPECT_EQ(error_of("0 16 linear a.img 2040\n"),
            "linear: a.img too small for target: start=2040, len=16, dev_size=2048");
  EXPECT_EQ(error_of("0 8 error a.img 4096\n").rfind("error: a.img too small", 0), 0u);
}

TEST_F(TableTest, ErrorTargetAcceptsDeviceArguments) {
  auto t = build("0 8 error a.img 0\n8 8 error\n");
  EXPECT_EQ(t->table_text(), "0 8 error a.img 0\n8 8 error\n");
  EXPECT_EQ(t->entries()[0].target->device_areas().size(), 1u);
}

}  // namespace
}  // namespace dmnbd
