// Zero-copy I/O: a file on tmpfs answers large reads through its mapping and
// gives writes a place in it, only through targets that only remap, never
// reads from holes, and the view keeps the device in flight (a suspend waits)
// until released.
#include <gtest/gtest.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/vfs.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "dm/table.hpp"
#include "test_support.hpp"

namespace dmnbd {
namespace {

constexpr uint64_t kFileBytes = 4 << 20;
constexpr size_t kBig = 1 << 20;

class MappedViewTest : public ::testing::Test {
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
  static std::vector<std::byte> received(const MappedView& view, std::span<const std::byte> buf) {
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

  // Writes `bytes` through the view's pieces, as the NBD layer's receive does.
  static void fill(const MappedView& view, std::span<const std::byte> bytes) {
    for (const auto& piece : view.pieces)
      std::memcpy(piece.data, bytes.data() + piece.offset, piece.length);
  }
  std::vector<std::byte> file_bytes(const std::string& name) const {
    return test::read_file_bytes(dir_ / name);
  }
  // A suspend of `dev` must not return while `view` is held, and must once it is dropped.
  static void expect_suspend_waits_for(Device& dev, std::optional<MappedView>& view,
                                       const char* while_what) {
    std::atomic<bool> suspended = false;
    std::thread suspender([&] {
      test::run_sync(dev.suspend(true));
      suspended = true;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    EXPECT_FALSE(suspended) << "suspend returned while " << while_what;
    view.reset();
    suspender.join();
    EXPECT_TRUE(suspended);
    test::run_sync(dev.resume());
  }
  // What make_patterned_file() wrote.
  static std::vector<std::byte> patterned() {
    std::vector<std::byte> out(kFileBytes);
    for (size_t i = 0; i < out.size(); ++i) out[i] = std::byte{test::pattern_byte(i)};
    return out;
  }
  static std::vector<std::byte> noise(size_t n) {
    std::vector<std::byte> out(n);
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<std::byte>((i * 131 + (i >> 9)) & 0xff);
    return out;
  }

  std::filesystem::path dir_;
  std::unique_ptr<test::DirResolver> resolver_;
};

TEST_F(MappedViewTest, LinearOnTmpfsAnswersLargeReadsWithAView) {
  auto dev = device("0 8192 linear a.img 0\n");
  std::vector<std::byte> buf(kBig, std::byte{0xee});
  MappedView view;
  ASSERT_FALSE(test::run_sync(dev->read(512 << 10, buf, nullptr, &view)));
  ASSERT_EQ(view.pieces.size(), 1u) << "a 1 MiB read of a mapped file should not be copied";
  EXPECT_EQ(view.pieces[0].offset, 0u);
  EXPECT_EQ(view.pieces[0].length, kBig);
  EXPECT_TRUE(holds_pattern(view.pieces[0].data, 512 << 10, kBig));
  EXPECT_EQ(buf[0], std::byte{0xee}) << "the buffer should be left alone";

  std::vector<std::byte> small(4096);
  MappedView small_view;
  ASSERT_FALSE(test::run_sync(dev->read(8192, small, nullptr, &small_view)));
  EXPECT_FALSE(small_view) << "small reads are copied: a page fault costs more";
  EXPECT_TRUE(holds_pattern(small.data(), 8192, small.size()));
}

TEST_F(MappedViewTest, ReadsOnlyThroughTargetsThatOnlyRemap) {
  std::vector<std::byte> buf(kBig);
  auto delayed = device("0 8192 delay a.img 0 0\n");  // delay does not declare pass-through
  MappedView none;
  ASSERT_FALSE(test::run_sync(delayed->read(0, buf, nullptr, &none)));
  EXPECT_FALSE(none);
  EXPECT_TRUE(holds_pattern(buf.data(), 0, kBig));
}

TEST_F(MappedViewTest, SplitRequestsGetOnePiecePerPart) {
  std::vector<std::byte> buf(kBig, std::byte{0xee});
  // Two linear segments, the second 64 KiB further into the file.
  auto split = device("0 1024 linear a.img 0\n1024 1024 linear a.img 1152\n");
  MappedView view;
  ASSERT_FALSE(test::run_sync(split->read(0, buf, nullptr, &view)));
  ASSERT_EQ(view.pieces.size(), 2u);
  EXPECT_EQ(view.pieces[1].offset, 1024u * 512);
  auto got = received(view, buf);
  EXPECT_TRUE(holds_pattern(got.data(), 0, 1024 * 512));
  EXPECT_TRUE(holds_pattern(got.data() + 1024 * 512, 1152 * 512, kBig - 1024 * 512));

  // Striped: 64 KiB chunks alternating between the two halves of the file.
  auto striped = device("0 8192 striped 2 128 a.img 0 a.img 4096\n");
  MappedView stripes;
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
  MappedView part;
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

TEST_F(MappedViewTest, HolesAreReadWithoutFillingThem) {
  const auto sparse = dir_ / "sparse.img";
  std::ofstream(sparse).close();
  std::filesystem::resize_file(sparse, kFileBytes);
  auto dev = device("0 8192 linear sparse.img 0\n");
  std::vector<std::byte> buf(kBig, std::byte{0xee});
  MappedView view;
  ASSERT_FALSE(test::run_sync(dev->read(kBig, buf, nullptr, &view)));
  EXPECT_FALSE(view);
  EXPECT_EQ(buf[0], std::byte{0});
  struct stat st {};
  ASSERT_EQ(stat(sparse.c_str(), &st), 0);
  EXPECT_EQ(st.st_blocks, 0) << "reading a hole allocated memory for it";
}

TEST_F(MappedViewTest, SuspendWaitsUntilTheViewIsReleased) {
  auto dev = device("0 8192 linear a.img 0\n");
  std::vector<std::byte> buf(kBig);
  std::optional<MappedView> view(std::in_place);
  ASSERT_FALSE(test::run_sync(dev->read(0, buf, nullptr, &*view)));
  ASSERT_TRUE(*view);
  EXPECT_EQ(view->holds.size(), 1u);
  expect_suspend_waits_for(*dev, view, "a zero-copy read was not yet copied");
}

TEST_F(MappedViewTest, WritesMapToTheSameBytesAsACopiedWrite) {
  // Striped, so one request becomes 16 pieces in two places; the bytes put
  // through them must end up where Device::write would have put them.
  const auto data = noise(kBig);
  auto mapped = device("0 8192 striped 2 128 a.img 0 a.img 4096\n");
  MappedView view;
  ASSERT_FALSE(test::run_sync(mapped->map_write(64 << 10, kBig, view)));
  ASSERT_EQ(view.pieces.size(), 16u);
  EXPECT_EQ(view.bytes(), kBig);
  fill(view, data);
  view.release();

  test::make_patterned_file(dir_ / "b.img", kFileBytes);
  auto copied = device("0 8192 striped 2 128 b.img 0 b.img 4096\n");
  std::vector<std::byte> buf(data);
  ASSERT_FALSE(test::run_sync(copied->write(64 << 10, buf, 0)));
  EXPECT_TRUE(file_bytes("a.img") == file_bytes("b.img"));
  EXPECT_FALSE(file_bytes("a.img") == patterned()) << "the write did not land";
}

TEST_F(MappedViewTest, WritesAreMappedOnlyWhereEveryByteHasAPlace) {
  MappedView view;
  size_t holds = 0;  // devices the last mapping held in flight
  auto status_of = [&](std::shared_ptr<Device> dev, uint64_t offset, uint64_t length) {
    Status st = test::run_sync(dev->map_write(offset, length, view));
    EXPECT_EQ(view.pieces.size(), st ? 0u : 1u) << "a refusal must leave the view empty";
    holds = view.holds.size();
    view.release();
    return st.value();
  };
  auto linear = device("0 8192 linear a.img 0\n");
  EXPECT_EQ(status_of(linear, 0, kBig), 0);
  EXPECT_EQ(holds, 1u);
  EXPECT_EQ(status_of(linear, 100, kBig), EAGAIN) << "unaligned";
  EXPECT_EQ(status_of(linear, kFileBytes - 512, kBig), ENOSPC) << "past the end";
  // A target that does more than remap, anywhere in the range.
  EXPECT_EQ(status_of(device("0 8192 delay a.img 0 0\n"), 0, kBig), EAGAIN);
  EXPECT_EQ(status_of(device("0 1024 linear a.img 0\n1024 7168 zero\n"), 0, kBig), EAGAIN);
  EXPECT_EQ(status_of(test::make_device("0 8192 linear a.img 0\n", *resolver_, true), 0, kBig),
            EPERM);
  // Not memory-backed: a file in the temp directory, unless that is a tmpfs too.
  const auto on_disk =
      std::filesystem::temp_directory_path() / ("dmnbd-view-" + dir_.filename().string());
  test::make_patterned_file(on_disk, kFileBytes);
  auto disk_dev = device("0 8192 linear " + on_disk.string() + " 0\n");
  struct statfs fs {};
  statfs(on_disk.c_str(), &fs);
  if (fs.f_type != TMPFS_MAGIC) {
    EXPECT_EQ(status_of(disk_dev, 0, kBig), EAGAIN);
  }
  std::filesystem::remove(on_disk);
  EXPECT_TRUE(file_bytes("a.img") == patterned()) << "a refused map_write must write nothing";

  // A suspended device refuses at once rather than waiting, also below another.
  resolver_->add("lower", linear);
  auto upper = device("0 8192 linear lower 0\n");
  EXPECT_EQ(status_of(upper, 0, kBig), 0);
  EXPECT_EQ(holds, 2u) << "both devices stay in flight";
  test::run_sync(linear->suspend(true));
  EXPECT_EQ(status_of(linear, 0, kBig), EAGAIN);
  EXPECT_EQ(status_of(upper, 0, kBig), EAGAIN);
  test::run_sync(linear->resume());
}

TEST_F(MappedViewTest, SuspendWaitsUntilAWriteViewIsReleased) {
  auto dev = device("0 8192 linear a.img 0\n");
  std::optional<MappedView> view(std::in_place);
  ASSERT_FALSE(test::run_sync(dev->map_write(0, kBig, *view)));
  expect_suspend_waits_for(*dev, view, "a write could still land through a view");
}

}  // namespace
}  // namespace dmnbd
