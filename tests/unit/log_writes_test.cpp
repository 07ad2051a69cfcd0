#include <gtest/gtest.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <sstream>

#include "../../targets/log_writes/format.hpp"
#include "cli/replay_log.hpp"
#include "dm/table.hpp"
#include "test_support.hpp"

namespace dmnbd {
namespace {

namespace lw = logwrites;
using test::build_error;
using test::run_sync;

void make_file(const std::filesystem::path& p, size_t size, char fill) {
  std::vector<char> data(size, fill);
  std::ofstream(p, std::ios::binary).write(data.data(), static_cast<std::streamsize>(size));
}

struct LoggedEntry {
  lw::Entry entry;
  uint64_t at;  // log sector of the entry block
  std::string mark;
  std::vector<std::byte> data;
};

// Reads a whole log the way replay-log walks it.
struct ParsedLog {
  lw::Super super;
  std::vector<LoggedEntry> entries;
};
ParsedLog parse_log(const std::filesystem::path& p, uint64_t count) {
  auto bytes = test::read_file_bytes(p);
  ParsedLog log;
  log.super = lw::decode_super(bytes);
  uint64_t pos = 512;
  for (uint64_t i = 0; i < count; ++i) {
    std::span<const std::byte> block(bytes.data() + pos, 512);
    LoggedEntry e{lw::decode_entry(block), pos / 512, {}, {}};
    if (e.entry.flags & lw::kFlagMark) e.mark = lw::mark_text(e.entry, block);
    pos += 512;
    if (!(e.entry.flags & lw::kFlagDiscard)) {
      e.data.assign(bytes.begin() + pos, bytes.begin() + pos + e.entry.nr_sectors * 512);
      pos += e.entry.nr_sectors * 512;
    }
    log.entries.push_back(std::move(e));
  }
  return log;
}

bool all_bytes(const std::vector<std::byte>& v, uint8_t value) {
  return !v.empty() &&
         std::all_of(v.begin(), v.end(), [&](std::byte b) { return b == std::byte{value}; });
}

// A file device whose writes wait until release() (to order completions).
class GatedDevice final : public BlockDevice {
 public:
  GatedDevice(std::shared_ptr<BlockDevice> inner, asio::io_context& ctx)
      : inner_(std::move(inner)), gate_(ctx, asio::steady_timer::time_point::max()) {}
  std::string name() const override { return inner_->name(); }
  uint64_t sectors() const override { return inner_->sectors(); }
  Task<Status> submit(Bio bio) override {
    if (bio.op == BioOp::write && gated_)
      co_await gate_.async_wait(asio::as_tuple(asio::use_awaitable));
    co_return co_await inner_->submit(bio);
  }
  Task<Status> block_status(uint64_t s, uint64_t c, ExtentList& out) override {
    co_return co_await inner_->block_status(s, c, out);
  }
  void release() {
    gated_ = false;
    gate_.cancel();
  }

 private:
  std::shared_ptr<BlockDevice> inner_;
  asio::steady_timer gate_;
  bool gated_ = true;
};

class LogWritesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    test::make_patterned_file(dir_ / "a.img", 1 << 20);
    test::make_patterned_file(dir_ / "orig.img", 1 << 20);
    make_file(dir_ / "log.img", 1 << 20, 0);
  }
  Status write(Target& t, uint64_t sector, uint64_t sectors, uint8_t value, uint32_t flags = 0) {
    std::vector<std::byte> buf(sectors * 512, std::byte{value});
    return run_sync(t.map(
        {.op = BioOp::write, .sector = sector, .sectors = sectors, .data = buf, .flags = flags}));
  }
  std::string msg(Target& t, std::vector<std::string> words) {
    try {
      return run_sync(t.message(std::move(words)));
    } catch (const TargetError& e) {
      return std::string("error: ") + e.what();
    }
  }
  int replay(std::vector<std::string> args, std::string* out = nullptr) {
    cli::ReplayLogOptions o;
    o.log = (dir_ / "log.img").string();
    for (size_t i = 0; i < args.size(); ++i) {
      const std::string& a = args[i];
      if (a == "--replay")
        o.replay = (dir_ / args[++i]).string();
      else if (a == "--end-mark")
        o.end_mark = args[++i];
      else if (a == "--start-mark")
        o.start_mark = args[++i];
      else if (a == "--limit")
        o.limit = args[++i];
      else if (a == "--start-entry")
        o.start_entry = args[++i];
      else if (a == "--find")
        o.find = true;
      else if (a == "--num-entries")
        o.num_entries = true;
      else if (a == "--next-flush")
        o.next_flush = true;
      else if (a == "--next-fua")
        o.next_fua = true;
      else if (a == "--list")
        o.list = true;
      else if (a == "--no-discard")
        o.no_discard = true;
      else if (a == "--fsck")
        o.fsck = args[++i];
      else if (a == "--check")
        o.check = args[++i];
      else if (a == "--start-sector")
        o.start_sector = args[++i];
      else if (a == "--end-sector")
        o.end_sector = args[++i];
      else if (a == "-v")
        o.verbose++;
      else
        ADD_FAILURE() << "unknown option " << a;
    }
    std::ostringstream o_out, o_err;
    int rc = cli::replay_log(o, o_out, o_err);
    if (out) *out = o_out.str();
    if (rc) std::cerr << "replay-log: " << o_err.str();
    return rc;
  }
  // The kernel's example sequence; returns the table (tear it down to end the log).
  std::shared_ptr<Table> run_sequence() {
    auto table = Table::build("0 2048 log-writes a.img log.img\n", resolver_, false);
    Target& t = *table->entries()[0].target;
    EXPECT_FALSE(write(t, 0, 8, 0xa1));
    EXPECT_FALSE(write(t, 100, 1, 0xb1));
    EXPECT_FALSE(run_sync(t.flush()));
    EXPECT_FALSE(write(t, 200, 2, 0xc1, kBioFua));
    EXPECT_FALSE(run_sync(t.map({.op = BioOp::discard, .sector = 300, .sectors = 16})));
    EXPECT_EQ(msg(t, {"mark", "m1"}), "");
    EXPECT_FALSE(write(t, 400, 1, 0xd1));
    return table;
  }
  test::TempDir dir_;
  test::DirResolver resolver_{dir_.path()};
};

TEST_F(LogWritesTest, LogsInTheKernelsOrderAndFormat) {
  auto table = run_sequence();
  // Logged so far: A, B, FLUSH, C (FUA), MARK; next free log sector 17.
  EXPECT_EQ(table->status_text(), "0 2048 log-writes 5 16\n");
  EXPECT_EQ(table->table_text(), "0 2048 log-writes a.img log.img\n");
  EXPECT_EQ(parse_log(dir_ / "log.img", 0).super.nr_entries, 5u);  // rewritten after the mark
  run_sync(table->teardown());  // the discard and D (no flush yet), then the end mark
  table.reset();

  const ParsedLog log = parse_log(dir_ / "log.img", 8);
  EXPECT_EQ(log.super.magic, lw::kMagic);
  EXPECT_EQ(log.super.version, 1u);
  EXPECT_EQ(log.super.nr_entries, 8u);
  EXPECT_EQ(log.super.sectorsize, 512u);
  struct Want {
    uint64_t sector, nr, flags, at;
    const char* mark;
    int fill;
  } want[] = {{0, 8, 0, 1, "", 0xa1},
              {100, 1, 0, 10, "", 0xb1},
              {0, 0, lw::kFlagFlush, 12, "", -1},
              {200, 2, lw::kFlagFua, 13, "", 0xc1},
              {0, 0, lw::kFlagMark, 16, "m1", -1},
              {300, 16, lw::kFlagDiscard, 17, "", -1},
              {400, 1, 0, 18, "", 0xd1},
              {0, 0, lw::kFlagMark, 20, "dm-log-writes-end", -1}};
  for (size_t i = 0; i < 8; ++i) {
    const LoggedEntry& e = log.entries[i];
    EXPECT_EQ(e.entry.sector, want[i].sector) << i;
    EXPECT_EQ(e.entry.nr_sectors, want[i].nr) << i;
    EXPECT_EQ(e.entry.flags, want[i].flags) << i;
    EXPECT_EQ(e.at, want[i].at) << i;
    EXPECT_EQ(e.mark, want[i].mark) << i;
    EXPECT_EQ(e.entry.data_len, std::string(want[i].mark).size()) << i;
    if (want[i].fill >= 0) {
      EXPECT_TRUE(all_bytes(e.data, want[i].fill)) << i;
    }
  }
}

TEST_F(LogWritesTest, ReplayGivesBackTheDeviceAtEachMark) {
  auto table = run_sequence();
  run_sync(table->teardown());
  table.reset();
  std::filesystem::copy_file(dir_ / "orig.img", dir_ / "full.img");
  std::filesystem::copy_file(dir_ / "orig.img", dir_ / "m1.img");
  ASSERT_EQ(replay({"--replay", "full.img"}), 0);
  EXPECT_EQ(test::read_file_bytes(dir_ / "full.img"), test::read_file_bytes(dir_ / "a.img"));

  ASSERT_EQ(replay({"--replay", "m1.img", "--end-mark", "m1"}), 0);
  auto img = test::read_file_bytes(dir_ / "m1.img");
  EXPECT_EQ(img[0], std::byte{0xa1});
  EXPECT_EQ(img[100 * 512], std::byte{0xb1});
  EXPECT_EQ(img[201 * 512 + 511], std::byte{0xc1});
  EXPECT_EQ(static_cast<uint8_t>(img[300 * 512]), test::pattern_byte(300 * 512));  // not yet
  EXPECT_EQ(static_cast<uint8_t>(img[400 * 512]), test::pattern_byte(400 * 512));
  // The rest of the way from the mark on gives the final device.
  ASSERT_EQ(replay({"--replay", "m1.img", "--start-mark", "m1"}), 0);
  EXPECT_EQ(test::read_file_bytes(dir_ / "m1.img"), test::read_file_bytes(dir_ / "a.img"));
}

TEST_F(LogWritesTest, ReplayLogQueries) {
  auto table = run_sequence();
  run_sync(table->teardown());
  table.reset();
  std::string out;
  ASSERT_EQ(replay({}, &out), 0);
  EXPECT_EQ(out, "Log version=1, sectorsize=512, entries=8\n");
  ASSERT_EQ(replay({"--num-entries"}, &out), 0);
  EXPECT_EQ(out, "8\n");
  ASSERT_EQ(replay({"--find", "--end-mark", "m1"}, &out), 0);
  EXPECT_EQ(out, "4@17\n");  // entry 4, the log position after it
  ASSERT_EQ(replay({"--find", "--next-fua"}, &out), 0);
  EXPECT_EQ(out, "3@16\n");
  ASSERT_EQ(replay({"--find", "--next-flush", "--start-entry", "3"}, &out), 1);
  ASSERT_EQ(replay({"--find", "--limit", "2"}, &out), 0);
  EXPECT_EQ(out, "1@12\n");
  ASSERT_EQ(replay({"--find", "--end-mark", "nope"}, &out), 1);
  ASSERT_EQ(replay({"--list"}, &out), 0);
  EXPECT_EQ(out,
            "0@1: sector 0, sectors 8, flags 0x0(NONE)\n"
            "1@10: sector 100, sectors 1, flags 0x0(NONE)\n"
            "2@12: sector 0, sectors 0, flags 0x1(FLUSH)\n"
            "3@13: sector 200, sectors 2, flags 0x2(FUA)\n"
            "4@16: sector 0, sectors 0, flags 0x8(MARK), mark m1\n"
            "5@17: sector 300, sectors 16, flags 0x4(DISCARD)\n"
            "6@18: sector 400, sectors 1, flags 0x0(NONE)\n"
            "7@20: sector 0, sectors 0, flags 0x8(MARK), mark dm-log-writes-end\n");
  std::filesystem::copy_file(dir_ / "orig.img", dir_ / "r.img");
  ASSERT_EQ(replay({"--replay", "r.img", "--limit", "2", "-v"}, &out), 0);
  EXPECT_EQ(out,
            "replaying 0@2: sector 0, size 4096, flags 0x0(NONE)\n"
            "replaying 1@11: sector 100, size 512, flags 0x0(NONE)\n");
  ASSERT_EQ(replay({"--replay", "r.img", "--start-entry", "8"}, &out), 1);
  // --check/--fsck: the command runs at each FUA entry; a failing one stops the replay.
  ASSERT_EQ(replay({"--replay", "r.img", "--check", "fua", "--fsck", "true"}, &out), 0);
  ASSERT_EQ(replay({"--replay", "r.img", "--check", "fua", "--fsck", "false"}, &out), 1);
  ASSERT_EQ(replay({"--replay", "r.img", "--check", "fua"}, &out), 1);  // --check needs --fsck
  // --no-discard and a sector range leave parts alone.
  std::filesystem::remove(dir_ / "r.img");
  std::filesystem::copy_file(dir_ / "orig.img", dir_ / "r.img");
  ASSERT_EQ(
      replay({"--replay", "r.img", "--no-discard", "--start-sector", "150", "--end-sector", "450"},
             &out),
      0);
  auto img = test::read_file_bytes(dir_ / "r.img");
  EXPECT_EQ(static_cast<uint8_t>(img[0]), test::pattern_byte(0));  // A: outside the range
  EXPECT_EQ(img[200 * 512], std::byte{0xc1});                      // C: inside
  EXPECT_EQ(static_cast<uint8_t>(img[300 * 512]), test::pattern_byte(300 * 512));  // no discard
  EXPECT_EQ(img[400 * 512], std::byte{0xd1});
}

// A write that completes after a flush was sent waits for the next flush.
TEST_F(LogWritesTest, FlushCoversOnlyWritesCompletedBeforeIt) {
  asio::io_context ctx;
  IoEngineScope engine(ctx);
  auto gated = std::make_shared<GatedDevice>(FileDevice::open(dir_ / "a.img", false), ctx);
  resolver_.add("gated", gated);
  auto table = Table::build("0 2048 log-writes gated log.img\n", resolver_, false);
  Target& t = *table->entries()[0].target;
  std::vector<std::byte> buf(512, std::byte{0x55});
  Status w = errno_status(EINPROGRESS), f1 = w, f2 = w;
  // The I/O engine keeps the loop from running out of work: run it until `done`.
  auto run_until = [&](auto done) {
    for (int i = 0; i < 2000 && !done(); ++i) {
      ctx.restart();
      ctx.run_for(std::chrono::milliseconds(5));
    }
  };
  auto finished = [](const Status& s) { return s != errno_status(EINPROGRESS); };
  asio::co_spawn(
      ctx,
      [&]() -> Task<void> {
        w = co_await t.map({.op = BioOp::write, .sector = 7, .sectors = 1, .data = buf});
      },
      asio::detached);
  ctx.run_for(std::chrono::milliseconds(20));
  asio::co_spawn(
      ctx, [&]() -> Task<void> { f1 = co_await t.flush(); }, asio::detached);
  run_until([&] { return finished(f1); });
  ASSERT_FALSE(f1);
  ASSERT_EQ(w, errno_status(EINPROGRESS));
  gated->release();
  run_until([&] { return finished(w); });
  ASSERT_FALSE(w);
  asio::co_spawn(
      ctx, [&]() -> Task<void> { f2 = co_await t.flush(); }, asio::detached);
  run_until([&] { return finished(f2); });
  ASSERT_FALSE(f2);
  EXPECT_EQ(table->status_text(), "0 2048 log-writes 3 4\n");
  const ParsedLog log = parse_log(dir_ / "log.img", 3);
  EXPECT_EQ(log.entries[0].entry.flags, lw::kFlagFlush);
  EXPECT_EQ(log.entries[1].entry.sector, 7u);
  EXPECT_EQ(log.entries[1].entry.flags, 0u);
  EXPECT_EQ(log.entries[2].entry.flags, lw::kFlagFlush);
  // The gated device's timer belongs to this loop: let go of it first.
  run_sync(table->teardown());
  table.reset();
  resolver_.add("gated", nullptr);
  gated.reset();
}

// dmnbd's suspend flushes through the targets, the kernel's does not: a
// reload must leave the same log as in the kernel (no flush entry).
TEST_F(LogWritesTest, SuspendFlushIsNotLogged) {
  auto dev = test::make_device("0 2048 log-writes a.img log.img\n", resolver_);
  std::vector<std::byte> data(512, std::byte{0x42});
  ASSERT_FALSE(run_sync(dev->write(0, data, 0)));
  run_sync(dev->load(Table::build("0 2048 linear a.img 0\n", resolver_, false)));
  ASSERT_FALSE(run_sync(dev->resume()));  // suspend (with its flush), swap: the old table goes
  const ParsedLog log = parse_log(dir_ / "log.img", 2);
  EXPECT_EQ(log.super.nr_entries, 2u);
  EXPECT_EQ(log.entries[0].entry.flags, 0u);
  EXPECT_EQ(log.entries[0].entry.nr_sectors, 1u);
  EXPECT_EQ(log.entries[1].mark, "dm-log-writes-end");
}

TEST_F(LogWritesTest, WriteZeroesAreLoggedAsZeroes) {
  make_file(dir_ / "log.img", 1 << 20, '\xff');  // stale bytes must not show through
  auto table = Table::build("0 2048 log-writes a.img log.img\n", resolver_, false);
  Target& t = *table->entries()[0].target;
  EXPECT_EQ(run_sync(t.map(
                {.op = BioOp::write_zeroes, .sector = 10, .sectors = 4, .flags = kBioFastZero})),
            errno_status(ENOTSUP));
  ASSERT_FALSE(run_sync(t.map({.op = BioOp::write_zeroes, .sector = 10, .sectors = 4})));
  ASSERT_FALSE(run_sync(t.flush()));
  run_sync(table->teardown());
  table.reset();
  const ParsedLog log = parse_log(dir_ / "log.img", 3);
  EXPECT_EQ(log.super.nr_entries, 3u);
  EXPECT_EQ(log.entries[0].entry.sector, 10u);
  EXPECT_EQ(log.entries[0].entry.nr_sectors, 4u);
  EXPECT_EQ(log.entries[0].entry.flags, 0u);
  EXPECT_TRUE(all_bytes(log.entries[0].data, 0));
  EXPECT_EQ(test::read_file_bytes(dir_ / "a.img")[10 * 512], std::byte{0});
}

TEST_F(LogWritesTest, StopsLoggingWhenTheLogIsFull) {
  make_file(dir_ / "small.img", 12 * 512, 0);
  auto table = Table::build("0 2048 log-writes a.img small.img\n", resolver_, false);
  Target& t = *table->entries()[0].target;
  ASSERT_FALSE(write(t, 0, 8, 0x11));
  ASSERT_FALSE(run_sync(t.flush()));
  EXPECT_EQ(table->status_text(), "0 2048 log-writes 2 10\n");
  ASSERT_FALSE(write(t, 20, 1, 0x22));
  ASSERT_FALSE(run_sync(t.flush()));
  EXPECT_EQ(table->status_text(), "0 2048 log-writes 2 12 logging_disabled\n");
  // The device itself carries on.
  ASSERT_FALSE(write(t, 21, 1, 0x33));
  EXPECT_EQ(test::read_file_bytes(dir_ / "a.img")[21 * 512], std::byte{0x33});
}

TEST_F(LogWritesTest, MarksAndMessageErrors) {
  auto table = Table::build("0 2048 log-writes a.img log.img\n", resolver_, false);
  Target& t = *table->entries()[0].target;
  EXPECT_EQ(msg(t, {"mark"}),
            "error: Invalid log-writes message arguments, expect 2 arguments, got 1");
  EXPECT_EQ(msg(t, {"mark", "a", "b"}),
            "error: Invalid log-writes message arguments, expect 2 arguments, got 3");
  EXPECT_EQ(msg(t, {"note", "a"}), "error: Unrecognised log writes target message received: note");
  EXPECT_EQ(msg(t, {"MARK", std::string(600, 'x')}), "");
  EXPECT_EQ(table->status_text(), "0 2048 log-writes 1 1\n");
  const ParsedLog log = parse_log(dir_ / "log.img", 1);
  EXPECT_EQ(log.super.nr_entries, 1u);
  EXPECT_EQ(log.entries[0].mark, std::string(479, 'x'));  // sectorsize - header - NUL
  EXPECT_EQ(log.entries[0].entry.data_len, 479u);
  // Reads are not logged.
  std::vector<std::byte> buf(512);
  ASSERT_FALSE(run_sync(t.map({.op = BioOp::read, .sector = 3, .sectors = 1, .data = buf})));
  EXPECT_EQ(static_cast<uint8_t>(buf[0]), test::pattern_byte(3 * 512));
  EXPECT_EQ(table->status_text(), "0 2048 log-writes 1 1\n");
  EXPECT_EQ(t.device_areas().size(), 2u);
}

TEST_F(LogWritesTest, ConstructorErrors) {
  EXPECT_EQ(build_error("0 2048 log-writes a.img\n", resolver_),
            "log-writes: Invalid argument count");
  EXPECT_EQ(build_error("0 2048 log-writes nope.img log.img\n", resolver_)
                .rfind("log-writes: Device lookup failed (", 0),
            0u);
  EXPECT_EQ(build_error("0 2048 log-writes a.img nope.img\n", resolver_)
                .rfind("log-writes: Log device lookup failed (", 0),
            0u);
  EXPECT_EQ(build_error("0 2049 log-writes a.img log.img\n", resolver_),
            "log-writes: a.img too small for target: start=0, len=2049, dev_size=2048");
  EXPECT_EQ(build_error("0 2048 log-writes a.img log.img extra\n", resolver_), "(built)");
}

}  // namespace
}  // namespace dmnbd
