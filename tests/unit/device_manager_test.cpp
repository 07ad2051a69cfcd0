#include "dm/device_manager.hpp"

#include <gtest/gtest.h>

#include <boost/asio/steady_timer.hpp>

#include "test_support.hpp"

namespace dmnbd {
namespace {

using test::run_sync;

class DeviceManagerTest : public ::testing::Test {
 protected:
  void SetUp() override { test::make_patterned_file(dir_ / "a.img", 1 << 20); }

  std::shared_ptr<Device> create(const std::string& name, const std::string& table) {
    return run_sync(manager_.create(name, table, {}));
  }
  int error_of(std::function<void()> f, std::string* what = nullptr) {
    try {
      f();
    } catch (const ControlError& e) {
      if (what) *what = e.what();
      return e.error_number();
    } catch (const TableError& e) {
      if (what) *what = e.what();
      return EINVAL;
    }
    return 0;
  }

  test::TempDir dir_;
  DeviceManager manager_{dir_.path()};
};

TEST_F(DeviceManagerTest, CreateMakesAResumedDevice) {
  auto d = create("a", "0 2048 linear a.img 0\n");
  EXPECT_EQ(manager_.find("a"), d);
  EXPECT_EQ(manager_.find(""), d);  // the default export is the first device
  EXPECT_EQ(d->sectors(), 2048u);
  EXPECT_FALSE(d->suspended());
  EXPECT_EQ(error_of([&] { create("a", "0 8 zero"); }), EBUSY);
  EXPECT_EQ(error_of([&] { create("bad/name", "0 8 zero"); }), EINVAL);
  std::string what;
  EXPECT_EQ(error_of([&] { create("b", "0 8 zero\n16 8 zero\n"); }, &what), EINVAL);
  EXPECT_EQ(what, "line 2: zero: Gap in table");
  EXPECT_EQ(manager_.find("b"), nullptr);  // a failed create leaves nothing behind
}

TEST_F(DeviceManagerTest, LoadFillsTheInactiveSlotAndResumeSwapsIt) {
  auto d = create("a", "0 2048 linear a.img 0\n");
  auto live_before = d->live_table();
  EXPECT_EQ(error_of([&] { run_sync(manager_.load("a", "0 8 linear a.img x")); }), EINVAL);
  EXPECT_EQ(d->live_table(), live_before);  // a bad load changes nothing
  EXPECT_EQ(d->inactive_table(), nullptr);

  run_sync(manager_.load("a", "0 1024 zero\n"));
  EXPECT_EQ(d->sectors(), 2048u);  // not live yet
  ASSERT_NE(d->inactive_table(), nullptr);
  run_sync(manager_.resume("a"));
  EXPECT_EQ(d->sectors(), 1024u);
  EXPECT_EQ(d->inactive_table(), nullptr);
  EXPECT_EQ(d->live_table()->table_text(), "0 1024 zero\n");

  run_sync(manager_.load("a", "0 8 zero\n"));
  run_sync(manager_.clear("a"));
  EXPECT_EQ(d->inactive_table(), nullptr);
}

TEST_F(DeviceManagerTest, SuspendHoldsIoUntilResume) {
  auto d = create("a", "0 2048 linear a.img 0\n");
  std::vector<std::string> events;
  run_sync([&]() -> Task<bool> {
    co_await manager_.suspend("a", false);
    EXPECT_TRUE(d->suspended());
    auto ex = co_await asio::this_coro::executor;
    asio::co_spawn(
        ex,
        [&]() -> Task<void> {
          std::vector<std::byte> buf(512);
          Status st = co_await d->read(0, buf, nullptr);
          events.push_back(st ? "read failed" : "read done");
        },
        asio::detached);
    asio::steady_timer t(ex, std::chrono::milliseconds(20));
    co_await t.async_wait(asio::use_awaitable);
    events.push_back("resume");
    co_await manager_.resume("a");
    t.expires_after(std::chrono::milliseconds(20));
    co_await t.async_wait(asio::use_awaitable);
    co_return true;
  }());
  EXPECT_EQ(events, (std::vector<std::string>{"resume", "read done"}));
  EXPECT_EQ(d->suspended_waits(), 1u);
}

TEST_F(DeviceManagerTest, ResumeWithoutAnyTableFails) {
  run_sync(manager_.create("empty", "", {.no_table = true}));
  EXPECT_EQ(error_of([&] { run_sync(manager_.resume("empty")); }), EINVAL);
  EXPECT_EQ(error_of([&] { run_sync(manager_.resume("nosuch")); }), ENXIO);
}

TEST_F(DeviceManagerTest, StackingCountsOpensAndRefusesCycles) {
  auto lower = create("lower", "0 2048 linear a.img 0\n");
  auto upper = create("upper", "0 1024 linear lower 100\n");
  EXPECT_EQ(lower->open_count(), 1);
  EXPECT_TRUE(upper->depends_on(*lower));
  std::string what;
  EXPECT_EQ(error_of([&] { run_sync(manager_.load("lower", "0 8 linear upper 0")); }, &what),
            EINVAL);
  EXPECT_NE(what.find("cycle"), std::string::npos) << what;
  EXPECT_EQ(error_of([&] { run_sync(manager_.load("lower", "0 8 linear lower 0")); }), EINVAL);

  auto top = create("top", "0 512 linear upper 0\n");
  auto users = manager_.users_of(*lower);
  ASSERT_EQ(users.size(), 2u);
  EXPECT_EQ(users[0], top);  // uppermost first: the order reload suspends in
  EXPECT_EQ(users[1], upper);
}

TEST_F(DeviceManagerTest, RemoveIsRefusedWhileOpenUnlessForced) {
  auto lower = create("lower", "0 2048 linear a.img 0\n");
  auto upper = create("upper", "0 1024 linear lower 0\n");
  EXPECT_EQ(error_of([&] { run_sync(manager_.remove("lower", false)); }), EBUSY);
  run_sync(manager_.remove("lower", true));
  EXPECT_EQ(manager_.find("lower"), nullptr);
  std::vector<std::byte> buf(512);
  EXPECT_EQ(run_sync(upper->read(0, buf, nullptr)), errno_status(EIO));  // error table swapped in

  run_sync(manager_.remove("upper", false));
  EXPECT_EQ(manager_.list().size(), 0u);
  EXPECT_EQ(lower->open_count(), 0);  // upper's table let go of it
}

TEST_F(DeviceManagerTest, RenameKeepsTheDevice) {
  auto d = create("a", "0 8 zero\n");
  create("b", "0 8 zero\n");
  EXPECT_EQ(error_of([&] { manager_.rename("a", "b"); }), EBUSY);
  manager_.rename("a", "c");
  EXPECT_EQ(manager_.find("c"), d);
  EXPECT_EQ(manager_.find("a"), nullptr);
  EXPECT_EQ(d->name(), "c");
}

TEST_F(DeviceManagerTest, MessagesAreRoutedBySector) {
  create("a", "0 8 zero\n8 8 linear a.img 0\n");
  std::string what;
  EXPECT_EQ(error_of([&] { run_sync(manager_.message("a", 16, {"hello"})); }, &what), EINVAL);
  EXPECT_EQ(what, "a: Target message sector outside device.");
  EXPECT_EQ(error_of([&] { run_sync(manager_.message("a", 9, {"hello"})); }, &what), EINVAL);
  EXPECT_EQ(what, "a: linear: Target type does not support messages");
}

TEST_F(DeviceManagerTest, ReloadOfALowerDeviceKeepsTheStackWorking) {
  auto lower = create("lower", "0 2048 linear a.img 0\n");
  auto upper = create("upper", "0 2048 linear lower 0\n");
  run_sync(manager_.reload("lower", "0 1000 linear a.img 0\n1000 1048 linear a.img 1000\n"));
  EXPECT_FALSE(lower->suspended());
  EXPECT_FALSE(upper->suspended());
  EXPECT_EQ(lower->live_table()->entries().size(), 2u);
  std::vector<std::byte> buf(4096);
  ASSERT_FALSE(run_sync(upper->read(998 * 512, buf, nullptr)));
  EXPECT_EQ(static_cast<uint8_t>(buf[0]), test::pattern_byte(998 * 512));
  EXPECT_EQ(static_cast<uint8_t>(buf[2048]), test::pattern_byte(1002 * 512));
}

}  // namespace
}  // namespace dmnbd

namespace dmnbd {
namespace {

// The same file named by two paths, or opened in both modes, is one device,
// as one dev_t is to the kernel: a read-only snapshot of a file origin,
// through a symlink, still gets its copy-outs from the snapshot-origin line.
TEST_F(DeviceManagerTest, OneFileByTwoNamesAndModesIsOneDevice) {
  std::filesystem::create_symlink(dir_ / "a.img", dir_ / "link.img");
  std::vector<char> zeroes(1 << 20);
  std::ofstream(dir_ / "cow.img", std::ios::binary).write(zeroes.data(), zeroes.size());
  // A read-only table opens its COW read-only too: the header comes first.
  create("init", "0 2048 snapshot link.img cow.img P 8");
  run_sync(manager_.remove("init", false));
  auto snap = run_sync(
      manager_.create("snap", "0 2048 snapshot link.img cow.img P 8", {.read_only = true}));
  auto origin = create("origin", "0 2048 snapshot-origin a.img");
  std::vector<std::byte> buf(512, std::byte{0xee});
  ASSERT_FALSE(run_sync(origin->write(100 * 512, buf, 0)));
  ASSERT_FALSE(run_sync(snap->read(100 * 512, buf, nullptr)));
  EXPECT_EQ(std::to_integer<int>(buf[0]), test::pattern_byte(100 * 512));
  EXPECT_EQ(snap->live_table()->status_text(), "0 2048 snapshot 24/2048 16\n");
  run_sync(manager_.remove("origin", false));
  run_sync(manager_.remove("snap", false));
}

}  // namespace
}  // namespace dmnbd
