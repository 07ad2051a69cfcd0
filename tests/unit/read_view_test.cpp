// Zero-copy reads: a file on tmpfs answers large reads through its mapping,
// only through targets that pass reads through unchanged, never from holes,
// and the view keeps the device in flight (a suspend waits) until released.
#include <gtest/gtest.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/vfs.h>

#include <atomic>
#include <cstring>
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
  // What a client receives: the buffer, with the view's pieces in place.
  static std::vector<std::byte> received(const ReadView& view, std::span<const std::byte> buf) {
    std::vector<std::byte> out(buf.begin(), buf.end());
    for (const auto& piece : view.pieces)
      std::memcpy(out.data() + piece.offset, piece.data, piece.length);
    return out;
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
  ASSERT_EQ(view.pieces.size(), 1u) << "a 1 MiB read of a mapped file should not be copied";
  EXPECT_EQ(view.pieces[0].offset, 0u);
  EXPECT_EQ(view.pieces[0].length, kBig);
  EXPECT_TRUE(holds_pattern(view.pieces[0].data, 512 << 10, kBig));
  EXPECT_EQ(buf[0], std::byte{0xee}) << "the buffer should be left alone";

  std::vector<std::byte> small(4096);
  ReadView small_view;
  ASSERT_FALSE(test::run_sync(dev->read(8192, small, nullptr, &small_view)));
  EXPECT_FALSE(small_view) << "small reads are copied: a page fault costs more";
  EXPECT_TRUE(holds_pattern(small.data(), 8192, small.size()));
}

TEST_F(ReadViewTest, OnlyThroughTargetsThatPassReadsThrough) {
  std::vector<std::byte> buf(kBig);
  auto delayed = device("0 8192 delay a.img 0 0\n");  // delay does not declare pass-through
  ReadView none;
  ASSERT_FALSE(test::run_sync(delayed->read(0, buf, nullptr, &none)));
  EXPECT_FALSE(none);
  EXPECT_TRUE(holds_pattern(buf.data(), 0, kBig));
}

TEST_F(ReadViewTest, SplitRequestsGetOnePiecePerPart) {
  std::vector<std::byte> buf(kBig, std::byte{0xee});
  // Two linear segments, the second 64 KiB further into the file.
  auto split = device("0 1024 linear a.img 0\n1024 1024 linear a.img 1152\n");
  ReadView view;
  ASSERT_FALSE(test::run_sync(split->read(0, buf, nullptr, &view)));
  ASSERT_EQ(view.pieces.size(), 2u);
  EXPECT_EQ(view.pieces[1].offset, 1024u * 512);
  auto got = received(view, buf);
  EXPECT_TRUE(holds_pattern(got.data(), 0, 1024 * 512));
  EXPECT_TRUE(holds_pattern(got.data() + 1024 * 512, 1152 * 512, kBig - 1024 * 512));

  // Striped: 64 KiB chunks alternating between the two halves of the file.
  auto striped = device("0 8192 striped 2 128 a.img 0 a.img 4096\n");
  ReadView stripes;
  ASSERT_FALSE(test::run_sync(striped->read(0, buf, nullptr, &stripes)));
  ASSERT_EQ(stripes.pieces.size(), 16u);
  got = received(stripes, buf);
  for (uint64_t chunk = 0; chunk < 16; ++chunk) {
    const uint64_t leg_start = chunk % 2 ? 4096 : 0;
    const uint64_t file_sector = leg_start + (chunk / 2) * 128;
    EXPECT_TRUE(holds_pattern(got.data() + chunk * 65536, file_sector * 512, 65536)) << chunk;
  }

  // A part the zero target answers stays in the buffer (and is reported as zero).
  auto mixed = device("0 1024 linear a.img 0\n1024 7168 zero\n");
  ReadView part;
  std::vector<ZeroRun> zero_runs;
  std::fill(buf.begin(), buf.end(), std::byte{0xee});
  ASSERT_FALSE(test::run_sync(mixed->read(0, buf, &zero_runs, &part)));
  ASSERT_EQ(part.pieces.size(), 1u);
  EXPECT_EQ(part.pieces[0].length, 1024u * 512);
  ASSERT_EQ(zero_runs.size(), 1u);
  EXPECT_EQ(zero_runs[0].sector, 1024u);
  got = received(part, buf);
  EXPECT_TRUE(holds_pattern(got.data(), 0, 1024 * 512));
  EXPECT_EQ(got[1024 * 512], std::byte{0});
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
  EXPECT_EQ(view->holds.size(), 1u);
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
