// Zero-copy reads: a file on tmpfs answers large reads through its mapping,
// only through targets that pass reads through unchanged, never from holes,
// and the view keeps the device in flight (a suspend waits) until released.
#include <gtest/gtest.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/vfs.h>

#include <atomic>
#include <thread>

#include "dmnbd/table.hpp"
#include "test_support.hpp"

namespace dmnbd {
namespace {

constexpr uint64_t kFileBytes = 4 << 20;
constexpr size_t kBig = 1 << 20;

class ReadViewTest : public ::testing::Test {
 protected:
  void SetUp() override {
    struct statfs fs {};
    if (statfs("/dev/shm", &fs) != 0 || fs.f_type != TMPFS_MAGIC)
      GTEST_SKIP() << "/dev/shm is not a tmpfs";
    char tmpl[] = "/dev/shm/dmnbd-view-XXXXXX";
    ASSERT_TRUE(mkdtemp(tmpl));
    dir_ = tmpl;
    test::make_patterned_file(dir_ / "a.img", kFileBytes);
    resolver_ = std::make_unique<test::DirResolver>(dir_);
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  std::shared_ptr<Device> device(const std::string& table) {
    return test::make_device(table, *resolver_);
  }
  static bool holds_pattern(const std::byte* p, uint64_t offset, size_t n) {
    for (size_t i = 0; i < n; i += 512)
      if (static_cast<uint8_t>(p[i]) != test::pattern_byte(offset + i)) return false;
    return true;
  }

  std::filesystem::path dir_;
  std::unique_ptr<test::DirResolver> resolver_;
};

TEST_F(ReadViewTest, LinearOnTmpfsAnswersLargeReadsWithAView) {
  auto dev = device("0 8192 linear a.img 0\n");
  std::vector<std::byte> buf(kBig, std::byte{0xee});
  ReadView view;
  ASSERT_FALSE(test::run_sync(dev->read(512 << 10, buf, nullptr, &view)));
  ASSERT_TRUE(view) << "a 1 MiB read of a mapped file should not be copied";
  EXPECT_TRUE(holds_pattern(view.data, 512 << 10, kBig));
  EXPECT_EQ(buf[0], std::byte{0xee}) << "the buffer should be left alone";

  std::vector<std::byte> small(4096);
  ReadView small_view;
  ASSERT_FALSE(test::run_sync(dev->read(8192, small, nullptr, &small_view)));
  EXPECT_FALSE(small_view) << "small reads are copied: a page fault costs more";
  EXPECT_TRUE(holds_pattern(small.data(), 8192, small.size()));
}

TEST_F(ReadViewTest, OnlyWholeRequestsThroughPassThroughTargets) {
  std::vector<std::byte> buf(kBig);
  for (const char* table : {"0 8192 delay a.img 0 0\n",  // delay does not declare pass-through
                            "0 1024 linear a.img 0\n1024 7168 linear a.img 1024\n"}) {  // split
    auto dev = device(table);
    ReadView view;
    ASSERT_FALSE(test::run_sync(dev->read(0, buf, nullptr, &view))) << table;
    EXPECT_FALSE(view) << table;
    EXPECT_TRUE(holds_pattern(buf.data(), 0, kBig)) << table;
  }
  auto striped = device("0 8192 striped 2 4096 a.img 0 a.img 0\n");
  ReadView view;
  ASSERT_FALSE(test::run_sync(striped->read(0, buf, nullptr, &view)));
  EXPECT_TRUE(view) << "a read within one stripe chunk passes through striped";
}

TEST_F(ReadViewTest, HolesAreReadWithoutFillingThem) {
  const auto sparse = dir_ / "sparse.img";
  std::ofstream(sparse).close();
  std::filesystem::resize_file(sparse, kFileBytes);
  auto dev = device("0 8192 linear sparse.img 0\n");
  std::vector<std::byte> buf(kBig, std::byte{0xee});
  ReadView view;
  ASSERT_FALSE(test::run_sync(dev->read(kBig, buf, nullptr, &view)));
  EXPECT_FALSE(view);
  EXPECT_EQ(buf[0], std::byte{0});
  struct stat st {};
  ASSERT_EQ(stat(sparse.c_str(), &st), 0);
  EXPECT_EQ(st.st_blocks, 0) << "reading a hole allocated memory for it";
}

TEST_F(ReadViewTest, SuspendWaitsUntilTheViewIsReleased) {
  auto dev = device("0 8192 linear a.img 0\n");
  std::vector<std::byte> buf(kBig);
  std::optional<ReadView> view(std::in_place);
  ASSERT_FALSE(test::run_sync(dev->read(0, buf, nullptr, &*view)));
  ASSERT_TRUE(*view);
  std::atomic<bool> suspended = false;
  std::thread suspender([&] {
    test::run_sync(dev->suspend(true));
    suspended = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_FALSE(suspended) << "suspend returned while a zero-copy read was not yet copied";
  view.reset();
  suspender.join();
  EXPECT_TRUE(suspended);
  test::run_sync(dev->resume());
}

}  // namespace
}  // namespace dmnbd
