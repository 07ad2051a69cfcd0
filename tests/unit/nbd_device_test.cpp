// NbdDevice against a real nbdkit: I/O through libnbd's asynchronous API,
// a bio larger than one NBD request, the request timeout and the reconnect
// after it, and the errors of an export that cannot be used.
#include <gtest/gtest.h>
#include <signal.h>

#include <boost/asio/steady_timer.hpp>
#include <fstream>

#include "dm/nbd_device.hpp"
#include "test_support.hpp"

namespace dmnbd {
namespace {

using test::run_sync;

Task<void> sleep_ms(int ms) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  timer.expires_after(std::chrono::milliseconds(ms));
  co_await timer.async_wait(asio::use_awaitable);
}

// nbdkit on a unix socket in a temp dir, stopped by its PID.
class Nbdkit {
 public:
  explicit Nbdkit(const std::string& args) {
    sock_ = (dir_ / "nbdkit.sock").string();
    const std::string pidfile = (dir_ / "nbdkit.pid").string();
    const std::string cmd =
        "nbdkit -P " + pidfile + " -U " + sock_ + " " + args + " > /dev/null 2>&1";
    ok_ = std::system(cmd.c_str()) == 0;
    for (int i = 0; ok_ && i < 100 && !std::filesystem::exists(pidfile); ++i) usleep(20000);
    std::ifstream(pidfile) >> pid_;
  }
  ~Nbdkit() {
    if (pid_ > 0) kill(pid_, SIGTERM);
  }
  bool ok() const { return ok_ && pid_ > 0; }
  std::string uri() const { return "nbd+unix:///?socket=" + sock_; }

 private:
  test::TempDir dir_;
  std::string sock_;
  bool ok_ = false;
  pid_t pid_ = 0;
};

TEST(NbdDeviceTest, ABioLargerThanOneRequestGoesInPiecesAndReadsBack) {
  Nbdkit kit("memory 64M");
  ASSERT_TRUE(kit.ok()) << "nbdkit did not start";
  auto dev = NbdDevice::open(kit.uri(), false);
  EXPECT_EQ(dev->sectors(), (64u << 20) >> kSectorShift);
  auto body = [&]() -> Task<void> {
    std::vector<std::byte> out(40 << 20), in(40 << 20);
    for (size_t i = 0; i < out.size(); ++i) out[i] = std::byte(i * 7 + i / 4096);
    const uint64_t sectors = out.size() >> kSectorShift;
    EXPECT_FALSE(co_await dev->submit(
        Bio{.op = BioOp::write, .sector = 8, .sectors = sectors, .data = out, .flags = kBioFua}));
    EXPECT_FALSE(co_await dev->submit(flush_bio()));
    EXPECT_FALSE(
        co_await dev->submit(Bio{.op = BioOp::read, .sector = 8, .sectors = sectors, .data = in}));
    EXPECT_TRUE(in == out);
    EXPECT_FALSE(co_await dev->submit(Bio{.op = BioOp::write_zeroes, .sector = 8, .sectors = 8}));
    EXPECT_FALSE(co_await dev->submit(
        Bio{.op = BioOp::read, .sector = 8, .sectors = 8, .data = std::span(in).first(4096)}));
    EXPECT_EQ(in[0], std::byte{0});
    dev.reset();  // closes the connection on its loop
    co_await sleep_ms(50);
  };
  run_sync(body());
}

TEST(NbdDeviceTest, ARequestWithoutAnAnswerFailsInTimeAndTheDeviceReconnects) {
  Nbdkit kit("--filter=delay memory 1M rdelay=5");
  ASSERT_TRUE(kit.ok()) << "nbdkit did not start";
  NbdDevice::Options options;
  options.request_timeout = std::chrono::milliseconds(300);
  options.reconnect_interval = std::chrono::milliseconds(200);
  auto dev = NbdDevice::open(kit.uri(), false, options);
  auto body = [&]() -> Task<void> {
    std::vector<std::byte> buf(4096);
    const auto t0 = std::chrono::steady_clock::now();
    const Status st =
        co_await dev->submit(Bio{.op = BioOp::read, .sector = 0, .sectors = 8, .data = buf});
    const auto waited = std::chrono::steady_clock::now() - t0;
    EXPECT_EQ(st, std::errc::io_error);
    EXPECT_LT(waited, std::chrono::seconds(3));  // nbdkit would answer after 5
    EXPECT_FALSE(dev->connected());
    // Writes are not delayed: once reconnected, they go through.
    for (int i = 0; i < 100 && !dev->connected(); ++i) co_await sleep_ms(20);
    EXPECT_TRUE(dev->connected());
    EXPECT_EQ(dev->connections(), 2u);
    EXPECT_FALSE(co_await dev->submit(
        Bio{.op = BioOp::write, .sector = 0, .sectors = 8, .data = buf, .flags = kBioFua}));
    dev.reset();
    co_await sleep_ms(50);
  };
  run_sync(body());
}

TEST(NbdDeviceTest, AnExportThatCannotBeUsedIsRefusedWithTheReason) {
  test::TempDir dir;
  try {
    NbdDevice::open("nbd+unix:///?socket=" + (dir / "none.sock").string(), false);
    ADD_FAILURE() << "opened";
  } catch (const TargetError& e) {
    EXPECT_NE(std::string(e.what()).find("cannot connect to nbd+unix:///?socket="),
              std::string::npos)
        << e.what();
  }
  Nbdkit kit("-r memory 1M");
  ASSERT_TRUE(kit.ok()) << "nbdkit did not start";
  try {
    NbdDevice::open(kit.uri(), false);
    ADD_FAILURE() << "opened a read-only export for writing";
  } catch (const TargetError& e) {
    EXPECT_EQ(std::string(e.what()), kit.uri() + " is a read-only export");
  }
  EXPECT_NO_THROW(NbdDevice::open(kit.uri(), true));
  EXPECT_TRUE(NbdDevice::is_uri("nbd://127.0.0.1:10809/x"));
  EXPECT_TRUE(NbdDevice::is_uri("nbd+unix:///x?socket=/s"));
  EXPECT_FALSE(NbdDevice::is_uri("/srv/disk.img"));
}

}  // namespace
}  // namespace dmnbd
