#include <gtest/gtest.h>

#include "devices/recording_device.hpp"
#include "dm/table.hpp"
#include "test_support.hpp"

namespace dmnbd {
namespace {

using test::BioRecord;
using test::build_error;
using test::RecordingDevice;
using test::run_sync;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// An event loop with an I/O engine, for bios that run side by side.
class DelayTest : public ::testing::Test {
 protected:
  void SetUp() override { test::make_patterned_file(dir_ / "a.img", 1 << 20); }

  // Starts `op` on the loop; `done` gets the time it completed, `status` its result.
  void start(Target& t, BioOp op, Clock::time_point& done, Status& status) {
    auto buf = std::make_shared<std::vector<std::byte>>(512);
    Bio bio{.op = op, .sector = 0, .sectors = op == BioOp::flush ? 0u : 1u};
    if (op == BioOp::read || op == BioOp::write) bio.data = *buf;
    asio::co_spawn(
        ctx_,
        [&t, bio, buf, &done, &status]() -> Task<void> {
          status = co_await t.map(bio);
          done = Clock::now();
        },
        asio::detached);
  }
  // Runs the loop until `done()` (the I/O engine keeps it from running out of work).
  void run_until(const std::function<bool()>& done) {
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (!done() && Clock::now() < deadline) {
      ctx_.restart();
      ctx_.run_for(milliseconds(2));
    }
  }
  static double ms_since(Clock::time_point from, Clock::time_point to) {
    return std::chrono::duration<double, std::milli>(to - from).count();
  }

  test::TempDir dir_;
  test::DirResolver resolver_{dir_.path()};
  asio::io_context ctx_;
  IoEngineScope engine_{ctx_};
};

TEST_F(DelayTest, ReadsWaitWhileWritesGoStraightThrough) {
  auto table = Table::build("0 1024 delay a.img 0 150 a.img 0 0\n", resolver_, false);
  Target& t = *table->entries()[0].target;
  Clock::time_point read_done, write_done;
  Status read_st = errno_status(EINPROGRESS), write_st = errno_status(EINPROGRESS);
  const auto t0 = Clock::now();
  start(t, BioOp::read, read_done, read_st);
  start(t, BioOp::write, write_done, write_st);
  ctx_.run_for(milliseconds(60));
  EXPECT_EQ(table->status_text(), "0 1024 delay 1 0 0\n");
  EXPECT_FALSE(write_st);
  EXPECT_LT(ms_since(t0, write_done), 60);
  EXPECT_EQ(read_st, errno_status(EINPROGRESS));
  run_until([&] { return read_st != errno_status(EINPROGRESS); });
  EXPECT_FALSE(read_st);
  EXPECT_GE(ms_since(t0, read_done), 150);
  EXPECT_LT(ms_since(t0, read_done), 1000);
  EXPECT_EQ(table->status_text(), "0 1024 delay 0 0 0\n");
}

TEST_F(DelayTest, DelayedBiosDoNotQueueBehindEachOther) {
  auto table = Table::build("0 1024 delay a.img 0 200\n", resolver_, false);
  Target& t = *table->entries()[0].target;
  std::vector<Clock::time_point> done(20);
  std::vector<Status> st(20, errno_status(EINPROGRESS));
  const auto t0 = Clock::now();
  for (int i = 0; i < 20; ++i) start(t, i % 2 ? BioOp::write : BioOp::read, done[i], st[i]);
  ctx_.run_for(milliseconds(100));
  EXPECT_EQ(table->status_text(), "0 1024 delay 10 10 0\n");
  run_until([&] {
    return std::none_of(st.begin(), st.end(),
                        [](Status s) { return s == errno_status(EINPROGRESS); });
  });
  for (int i = 0; i < 20; ++i) {
    EXPECT_FALSE(st[i]);
    EXPECT_GE(ms_since(t0, done[i]), 200);
    EXPECT_LT(ms_since(t0, done[i]), 1500);  // 20 x 200 ms if they queued
  }
}

TEST_F(DelayTest, SuspendReleasesTheQueueAndResumeDelaysAgain) {
  auto table = Table::build("0 1024 delay a.img 0 10000\n", resolver_, false);
  Target& t = *table->entries()[0].target;
  Clock::time_point done1, done2, done3;
  Status st1 = errno_status(EINPROGRESS), st2 = st1, st3 = st1;
  const auto t0 = Clock::now();
  start(t, BioOp::read, done1, st1);
  start(t, BioOp::flush, done2, st2);
  ctx_.run_for(milliseconds(50));
  EXPECT_EQ(table->status_text(), "0 1024 delay 1 0 1\n");
  asio::co_spawn(ctx_, t.presuspend(), asio::detached);
  run_until([&] { return st1 != errno_status(EINPROGRESS) && st2 != errno_status(EINPROGRESS); });
  EXPECT_FALSE(st1);
  EXPECT_FALSE(st2);
  EXPECT_LT(ms_since(t0, done1), 1000);
  EXPECT_LT(ms_since(t0, done2), 1000);
  EXPECT_EQ(table->status_text(), "0 1024 delay 0 0 0\n");
  // Until the resume nothing is delayed.
  ctx_.restart();
  const auto t1 = Clock::now();
  start(t, BioOp::write, done3, st3);
  run_until([&] { return st3 != errno_status(EINPROGRESS); });
  EXPECT_FALSE(st3);
  EXPECT_LT(ms_since(t1, done3), 100);
  run_sync(t.resume());
  ctx_.restart();
  Status st4 = errno_status(EINPROGRESS);
  Clock::time_point done4;
  start(t, BioOp::read, done4, st4);
  ctx_.run_for(milliseconds(50));
  EXPECT_EQ(st4, errno_status(EINPROGRESS));
  EXPECT_EQ(table->status_text(), "0 1024 delay 1 0 0\n");
  asio::co_spawn(ctx_, t.presuspend(), asio::detached);
  run_until([&] { return st4 != errno_status(EINPROGRESS); });
  EXPECT_FALSE(st4);
}

TEST_F(DelayTest, ClassesGoToTheirDevicesAndOffsets) {
  auto r = std::make_shared<RecordingDevice>("r", 10000);
  auto w = std::make_shared<RecordingDevice>("w", 10000);
  auto f = std::make_shared<RecordingDevice>("f", 10000);
  resolver_.add("r", r);
  resolver_.add("w", w);
  resolver_.add("f", f);
  auto table = Table::build("0 100 delay r 10 0 w 20 0 f 30 0\n", resolver_, false);
  Target& t = *table->entries()[0].target;
  std::vector<std::byte> buf(512);
  ASSERT_FALSE(run_sync(t.map({.op = BioOp::read, .sector = 5, .sectors = 1, .data = buf})));
  ASSERT_FALSE(run_sync(t.map({.op = BioOp::write, .sector = 6, .sectors = 1, .data = buf})));
  ASSERT_FALSE(run_sync(t.map({.op = BioOp::discard, .sector = 7, .sectors = 1})));
  ASSERT_FALSE(run_sync(t.flush()));
  EXPECT_EQ(r->bios(), (std::vector<BioRecord>{{BioOp::read, 15, 1}}));
  EXPECT_EQ(w->bios(), (std::vector<BioRecord>{{BioOp::write, 26, 1}, {BioOp::discard, 27, 1}}));
  EXPECT_EQ(f->bios(), (std::vector<BioRecord>{{BioOp::flush, 0}}));
  EXPECT_EQ(table->table_text(), "0 100 delay r 10 0 w 20 0 f 30 0\n");
  // Six arguments: flushes go with writes.
  auto six = Table::build("0 100 delay r 10 0 w 20 0\n", resolver_, false);
  ASSERT_FALSE(run_sync(six->entries()[0].target->flush()));
  EXPECT_EQ(w->bios().back(), (BioRecord{BioOp::flush, 0}));
  EXPECT_EQ(six->table_text(), "0 100 delay r 10 0 w 20 0\n");
  // Three: everything to one place.
  auto three = Table::build("0 100 delay f 1 0\n", resolver_, false);
  ASSERT_FALSE(run_sync(three->entries()[0].target->map(
      {.op = BioOp::write, .sector = 2, .sectors = 1, .data = buf})));
  EXPECT_EQ(f->bios().back(), (BioRecord{BioOp::write, 3, 1}));
  EXPECT_EQ(three->table_text(), "0 100 delay f 1 0\n");
  EXPECT_EQ(three->status_text(), "0 100 delay 0 0 0\n");
}

TEST_F(DelayTest, FlushDelayIsItsOwn) {
  auto table = Table::build("0 1024 delay a.img 0 0 a.img 0 0 a.img 0 120\n", resolver_, false);
  Target& t = *table->entries()[0].target;
  Clock::time_point done;
  Status st = errno_status(EINPROGRESS);
  const auto t0 = Clock::now();
  start(t, BioOp::flush, done, st);
  ctx_.run_for(milliseconds(40));
  EXPECT_EQ(table->status_text(), "0 1024 delay 0 0 1\n");
  run_until([&] { return st != errno_status(EINPROGRESS); });
  EXPECT_FALSE(st);
  EXPECT_GE(ms_since(t0, done), 120);
}

TEST_F(DelayTest, ConstructorErrors) {
  auto err = [&](const std::string& args) {
    return build_error("0 1024 delay " + args + "\n", resolver_);
  };
  EXPECT_EQ(err("a.img 0"), "delay: Requires exactly 3, 6 or 9 arguments");
  EXPECT_EQ(err("a.img 0 1 a.img"), "delay: Requires exactly 3, 6 or 9 arguments");
  EXPECT_EQ(err("a.img 0 1 a.img 0 1 a.img"), "delay: Requires exactly 3, 6 or 9 arguments");
  EXPECT_EQ(err("a.img x 1"), "delay: Invalid device sector");
  EXPECT_EQ(err("a.img 0 1 a.img 1s 1"), "delay: Invalid device sector");
  EXPECT_EQ(err("a.img 0 1ms"), "delay: Invalid delay");
  EXPECT_EQ(err("a.img 0 1 a.img 0 1 a.img 0 -1"), "delay: Invalid delay");
  EXPECT_EQ(err("a.img 0 +1"), "delay: Invalid delay");  // the kernel's sscanf("%u%c")
  EXPECT_EQ(err("nope.img 0 1").rfind("delay: Device lookup failed (", 0), 0u);
  EXPECT_EQ(err("a.img 0 1 nope.img 0 1").rfind("delay: Device lookup failed (", 0), 0u);
  EXPECT_EQ(err("a.img 0 1 a.img 1025 1"),
            "delay: a.img too small for target: start=1025, len=1024, dev_size=2048");
}

}  // namespace
}  // namespace dmnbd
