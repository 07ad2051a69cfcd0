#include "dmnbd/arg_set.hpp"

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <vector>

namespace dmnbd {
namespace {

// The reason read()/read_group() refuse with, or "ok <value>".
template <typename Read>
std::string outcome(Read read) {
  try {
    return "ok " + std::to_string(read());
  } catch (const TargetError& e) {
    return e.what();
  }
}

TEST(ArgSetTest, ShiftTakesArgumentsInOrderThenNull) {
  const std::vector<std::string> args{"a", "b"};
  ArgSet as(args);
  EXPECT_EQ(as.left(), 2u);
  ASSERT_NE(as.shift(), nullptr);
  EXPECT_EQ(as.rest().size(), 1u);
  EXPECT_EQ(*as.shift(), "b");
  EXPECT_EQ(as.left(), 0u);
  EXPECT_EQ(as.shift(), nullptr);
  EXPECT_EQ(as.left(), 0u);
}

TEST(ArgSetTest, ReadChecksTheRangeAndTheNumberLikeSscanf) {
  const std::vector<std::string> args{"7",   "0",  "4294967295", "9",         "+1",
                                      "1\n", "-1", "x",          "4294967296"};
  ArgSet as(args);
  EXPECT_EQ(outcome([&] { return as.read(1, 10, "bad"); }), "ok 7");
  EXPECT_EQ(outcome([&] { return as.read(1, 10, "too small"); }), "too small");
  EXPECT_EQ(outcome([&] { return as.read(0, UINT32_MAX, "bad"); }), "ok 4294967295");
  EXPECT_EQ(outcome([&] { return as.read(0, 8, "too big"); }), "too big");
  // sscanf("%u%c") takes digits only: no sign, nothing after them.
  EXPECT_EQ(outcome([&] { return as.read(0, 9, "plus"); }), "plus");
  EXPECT_EQ(outcome([&] { return as.read(0, 9, "newline"); }), "newline");
  EXPECT_EQ(outcome([&] { return as.read(0, 9, "minus"); }), "minus");
  EXPECT_EQ(outcome([&] { return as.read(0, 9, "word"); }), "word");
  EXPECT_EQ(outcome([&] { return as.read(0, UINT32_MAX, "overflow"); }), "overflow");
  EXPECT_EQ(outcome([&] { return as.read(0, 9, "none left"); }), "none left");
}

TEST(ArgSetTest, ReadGroupRefusesACountLargerThanWhatIsLeft) {
  const std::vector<std::string> two{"2", "a", "b"};
  ArgSet fits(two);
  EXPECT_EQ(outcome([&] { return fits.read_group(0, 5, "count"); }), "ok 2");
  EXPECT_EQ(fits.left(), 2u);

  const std::vector<std::string> short_group{"3", "a", "b"};
  ArgSet runs_past(short_group);
  EXPECT_EQ(outcome([&] { return runs_past.read_group(0, 5, "count"); }), "count");
  // Plain read() does not look at what follows.
  ArgSet plain(short_group);
  EXPECT_EQ(outcome([&] { return plain.read(0, 5, "count"); }), "ok 3");

  const std::vector<std::string> over_max{"6", "a", "b", "c", "d", "e", "f"};
  ArgSet too_many(over_max);
  EXPECT_EQ(outcome([&] { return too_many.read_group(0, 5, "max"); }), "max");
}

TEST(ArgSetTest, ConsumeSkipsAndRefusesToRunPastTheEnd) {
  const std::vector<std::string> args{"a", "b", "c"};
  ArgSet as(args);
  as.consume(2);
  EXPECT_EQ(*as.shift(), "c");
  as.consume(0);
  EXPECT_THROW(as.consume(1), std::out_of_range);
  EXPECT_EQ(as.left(), 0u);
}

TEST(TargetArgsTest, KstrtoAndSscanfNumbersDiffer) {
  uint64_t v64 = 0;
  uint32_t v32 = 0;
  // kstrtoull: '+' and one trailing newline are fine.
  EXPECT_TRUE(parse_u64("+18446744073709551615\n", v64));
  EXPECT_EQ(v64, UINT64_MAX);
  EXPECT_FALSE(parse_u64("18446744073709551616", v64));
  EXPECT_FALSE(parse_u64("1\n\n", v64));
  EXPECT_FALSE(parse_u64("-1", v64));
  EXPECT_FALSE(parse_u64("", v64));
  EXPECT_FALSE(parse_u64("+", v64));
  EXPECT_FALSE(parse_u64("0x10", v64));
  EXPECT_TRUE(parse_u32("+4294967295", v32));
  EXPECT_EQ(v32, UINT32_MAX);
  EXPECT_FALSE(parse_u32("4294967296", v32));
  // sscanf("%llu%c"): digits only.
  EXPECT_TRUE(scan_u64("0042", v64));
  EXPECT_EQ(v64, 42u);
  EXPECT_FALSE(scan_u64("+1", v64));
  EXPECT_FALSE(scan_u64("1\n", v64));
  EXPECT_FALSE(scan_u64(" 1", v64));
  EXPECT_FALSE(scan_u64("", v64));
  EXPECT_TRUE(scan_u32("4294967295", v32));
  EXPECT_FALSE(scan_u32("4294967296", v32));
  EXPECT_EQ(parse_sector("12", "bad"), 12u);
  EXPECT_THROW(parse_sector("+12", "bad"), TargetError);
}

TEST(TargetArgsTest, SameWordIgnoresCaseOnly) {
  EXPECT_TRUE(same_word("Error_Reads", "error_reads"));
  EXPECT_TRUE(same_word("", ""));
  EXPECT_FALSE(same_word("error_read", "error_reads"));
  EXPECT_FALSE(same_word("error_readsx", "error_reads"));
  EXPECT_FALSE(same_word("w", "r"));
}

}  // namespace
}  // namespace dmnbd
