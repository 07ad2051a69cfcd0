#include "dm/file_device.hpp"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "dm/io_engine.hpp"
#include "dm/mapped_view.hpp"

namespace dmnbd {
namespace {

// io_uring and pread take 32-bit lengths; larger bios go in pieces.
constexpr uint64_t kMaxTransfer = 1ull << 30;
constexpr uint64_t kZeroBufferBytes = 1ull << 20;
constexpr uint64_t kMinViewBytes = 64u << 10;

Status from_result(int64_t r) {
  return r < 0 ? errno_status(static_cast<int>(-r)) : ok();
}

bool unsupported(int64_t r) {
  return r == -EOPNOTSUPP || r == -ENOTSUP || r == -EINVAL;
}

// The whole file, shared with the page cache, writable when the file is open
// for writing; null if it fails (reads and writes then copy as usual).
std::shared_ptr<std::byte> map_file(int fd, uint64_t size, bool writable) {
  void* base =
      mmap(nullptr, size, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) return nullptr;
  return std::shared_ptr<std::byte>(static_cast<std::byte*>(base),
                                    [size](std::byte* p) { munmap(p, size); });
}

}  // namespace

std::shared_ptr<FileDevice> FileDevice::open(const std::filesystem::path& path, bool read_only) {
  int fd = ::open(path.c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
  if (fd < 0) throw TargetError(path.string() + ": " + std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) < 0) {
    int e = errno;
    ::close(fd);
    throw TargetError(path.string() + ": " + std::strerror(e));
  }
  uint64_t size = 0;
  bool is_block = S_ISBLK(st.st_mode);
  if (is_block) {
    if (ioctl(fd, BLKGETSIZE64, &size) < 0) {
      int e = errno;
      ::close(fd);
      throw TargetError(path.string() + ": " + std::strerror(e));
    }
  } else if (S_ISREG(st.st_mode)) {
    size = static_cast<uint64_t>(st.st_size);
  } else {
    ::close(fd);
    throw TargetError(path.string() + ": not a regular file or block device");
  }
  auto device = std::shared_ptr<FileDevice>(new FileDevice(path.string(), fd, size, is_block));
  // A block device is known by the device it is, a file by its inode.
  device->file_id_ = is_block ? FileId{0, st.st_rdev} : FileId{st.st_dev, st.st_ino};
  struct statfs fs {};
  device->memory_backed_ =
      fstatfs(fd, &fs) == 0 && (fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC);
  if (device->memory_backed_ && !is_block && size > 0) {
    device->mapping_ = map_file(fd, size, !read_only);
    device->mapping_writable_ = device->mapping_ && !read_only;
  }
  return device;
}

FileDevice::FileDevice(std::string name, int fd, uint64_t size_bytes, bool is_block_device)
    : name_(std::move(name)), fd_(fd), size_bytes_(size_bytes), is_block_device_(is_block_device) {}

FileDevice::~FileDevice() {
  ::close(fd_);
}

Task<Status> FileDevice::submit(Bio bio) {
  if (bio.op != BioOp::flush && bio.end() > sectors()) co_return errno_status(EIO);
  switch (bio.op) {
    case BioOp::read:
    case BioOp::write:
      co_return co_await transfer(bio);
    case BioOp::flush:
      co_return co_await sync();
    case BioOp::discard:
    case BioOp::write_zeroes: {
      Status st = is_block_device_ ? co_await block_device_ioctl(bio) : co_await punch_or_zero(bio);
      if (!st && (bio.flags & kBioFua)) st = co_await sync();
      co_return st;
    }
  }
  co_return errno_status(EINVAL);
}

Task<Status> FileDevice::direct_access(uint64_t sector, uint64_t count, const DirectAccess& how) {
  if (sector + count > sectors() || sector + count < sector) co_return errno_status(EIO);
  if (how.write ? !mapping_writable_ : !can_read_in_place(sector, count))
    co_return errno_status(EOPNOTSUPP);
  how.view->add(how.view_offset, count << kSectorShift, mapping_.get() + (sector << kSectorShift),
                mapping_);
  co_return ok();
}

// A view pays for large reads, where it saves a copy of every byte; a small
// one costs a page fault the first time each page is touched through the
// mapping, more than the copy it saves. And only where the file has data: a
// fault on a tmpfs hole would allocate a page, so a read of a sparse file
// through the mapping would fill it in.
bool FileDevice::can_read_in_place(uint64_t sector, uint64_t count) const {
  if (!mapping_ || (count << kSectorShift) < kMinViewBytes) return false;
  static const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t start = (sector << kSectorShift) & ~(page - 1);
  const uint64_t end = (sector << kSectorShift) + (count << kSectorShift);
  thread_local std::vector<unsigned char> resident;
  resident.resize((end - start + page - 1) / page);
  void* addr = const_cast<std::byte*>(mapping_.get() + start);
  if (mincore(addr, end - start, resident.data()) != 0) return false;
  return std::all_of(resident.begin(), resident.end(), [](unsigned char r) { return r & 1; });
}

// Most reads hit the page cache and most buffered writes only dirty it: a
// non-blocking attempt on the event loop's own thread answers those without
// the round trip through the engine. Anything that would wait goes to it.
int64_t FileDevice::try_without_blocking(const Bio& bio, uint64_t done) {
  const bool is_write = bio.op == BioOp::write;
  iovec iov{bio.data.data() + done, std::min(bio.bytes() - done, kMaxTransfer)};
  const off_t offset = static_cast<off_t>((bio.sector << kSectorShift) + done);
  if (memory_backed_) {  // nothing to wait for, and RWF_NOWAIT is refused there anyway
    ssize_t r = is_write ? pwritev2(fd_, &iov, 1, offset, 0) : preadv2(fd_, &iov, 1, offset, 0);
    return r > 0 ? r : -1;
  }
  if (is_write && (bio.flags & kBioFua)) return -1;  // durable writes block by design
  std::atomic<bool>& allowed = is_write ? nowait_writes_ : nowait_reads_;
  if (!allowed.load(std::memory_order_relaxed)) return -1;
  ssize_t r = is_write ? pwritev2(fd_, &iov, 1, offset, RWF_NOWAIT)
                       : preadv2(fd_, &iov, 1, offset, RWF_NOWAIT);
  if (r > 0) return r;
  if (r < 0 && (errno == EOPNOTSUPP || errno == EINVAL)) allowed = false;
  return -1;  // EAGAIN (would block), EOF, or an error the engine will report
}

Task<Status> FileDevice::transfer(const Bio& bio) {
  IoEngine& engine = IoEngine::current();
  const bool is_write = bio.op == BioOp::write;
  uint64_t done = 0;
  const uint64_t total = bio.bytes();
  while (done < total) {
    if (int64_t quick = try_without_blocking(bio, done); quick > 0) {
      done += static_cast<uint64_t>(quick);
      continue;
    }
    FileOp op{.kind = is_write ? FileOp::Kind::write : FileOp::Kind::read,
              .fd = fd_,
              .buf = bio.data.data() + done,
              .offset = (bio.sector << kSectorShift) + done,
              .length = std::min(total - done, kMaxTransfer),
              .flags = is_write && (bio.flags & kBioFua) ? RWF_DSYNC : 0};
    int64_t r = co_await engine.run(op);
    if (r < 0) co_return errno_status(static_cast<int>(-r));
    if (r == 0) {
      if (is_write) co_return errno_status(EIO);
      // The file shrank under us: what is gone reads as zeroes, like a hole.
      std::memset(bio.data.data() + done, 0, total - done);
      break;
    }
    done += static_cast<uint64_t>(r);
  }
  co_return ok();
}

Task<Status> FileDevice::sync() {
  co_return from_result(
      co_await IoEngine::current().run({.kind = FileOp::Kind::fdatasync, .fd = fd_}));
}

// Regular files: discard punches a hole; write_zeroes punches too unless the
// caller needs the blocks kept allocated (NOUNMAP), then it zeroes in place.
Task<Status> FileDevice::punch_or_zero(const Bio& bio) {
  const bool keep_allocated = bio.op == BioOp::write_zeroes && (bio.flags & kBioNoUnmap);
  const int mode =
      FALLOC_FL_KEEP_SIZE | (keep_allocated ? FALLOC_FL_ZERO_RANGE : FALLOC_FL_PUNCH_HOLE);
  int64_t r = co_await IoEngine::current().run({.kind = FileOp::Kind::fallocate,
                                                .fd = fd_,
                                                .offset = bio.sector << kSectorShift,
                                                .length = bio.bytes(),
                                                .flags = mode});
  if (r >= 0) co_return ok();
  if (!unsupported(r)) co_return errno_status(static_cast<int>(-r));
  if (bio.op == BioOp::discard) co_return ok();  // discard is advisory
  if (bio.flags & kBioFastZero) co_return errno_status(ENOTSUP);
  co_return co_await write_zero_buffers(bio);
}

Task<Status> FileDevice::write_zero_buffers(const Bio& bio) {
  std::vector<std::byte> zeroes(std::min(bio.bytes(), kZeroBufferBytes));
  for (uint64_t done = 0; done < bio.sectors;) {
    uint64_t n = std::min<uint64_t>(bio.sectors - done, zeroes.size() >> kSectorShift);
    Bio w{.op = BioOp::write,
          .sector = bio.sector + done,
          .sectors = n,
          .data = std::span(zeroes).first(n << kSectorShift)};
    if (Status st = co_await transfer(w)) co_return st;
    done += n;
  }
  co_return ok();
}

// Host block devices: BLKDISCARD / BLKZEROOUT. They block, but only on the
// rare discard path of a real disk; regular files never come here.
Task<Status> FileDevice::block_device_ioctl(const Bio& bio) {
  uint64_t range[2] = {bio.sector << kSectorShift, bio.bytes()};
  if (bio.op == BioOp::write_zeroes && (bio.flags & kBioFastZero)) co_return errno_status(ENOTSUP);
  unsigned long request = bio.op == BioOp::discard ? BLKDISCARD : BLKZEROOUT;
  if (ioctl(fd_, request, range) == 0) co_return ok();
  if (bio.op == BioOp::discard) co_return ok();
  co_return co_await write_zero_buffers(bio);
}

// SEEK_DATA/SEEK_HOLE report a regular file's holes; anything that cannot
// answer is reported as allocated data, which is always safe.
Task<Status> FileDevice::block_status(uint64_t sector, uint64_t count, ExtentList& out) {
  const off_t start = static_cast<off_t>(sector << kSectorShift);
  const off_t end = static_cast<off_t>(std::min((sector + count) << kSectorShift, size_bytes_));
  if (is_block_device_) {
    out.append(count, 0);
    co_return ok();
  }
  off_t pos = start;
  while (pos < end) {
    off_t data = lseek(fd_, pos, SEEK_DATA);
    if (data < 0 && errno != ENXIO) {
      out.append(count - ((pos - start) >> kSectorShift), 0);
      co_return ok();
    }
    if (data < 0 || data >= end) data = end;  // the rest is a hole
    // Holes are reported in whole sectors; a partial sector counts as data.
    off_t hole_end = data & ~static_cast<off_t>(kSectorSize - 1);
    if (hole_end > pos) {
      out.append((hole_end - pos) >> kSectorShift, kExtentHole | kExtentZero);
      pos = hole_end;
    }
    if (pos >= end) break;
    off_t hole = lseek(fd_, pos, SEEK_HOLE);
    if (hole < 0 || hole > end) hole = end;
    off_t data_end =
        (hole + static_cast<off_t>(kSectorSize) - 1) & ~static_cast<off_t>(kSectorSize - 1);
    if (data_end <= pos) data_end = pos + static_cast<off_t>(kSectorSize);
    data_end = std::min(data_end, end);
    out.append((data_end - pos) >> kSectorShift, 0);
    pos = data_end;
  }
  co_return ok();
}

}  // namespace dmnbd
