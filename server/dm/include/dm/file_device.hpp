// A backing file or host block device, with I/O through the thread's IoEngine.
#pragma once
#include <atomic>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>

#include "dmnbd/block_device.hpp"

namespace dmnbd {

class FileDevice final : public BlockDevice {
 public:
  // Opens an existing file or block device; throws TargetError with the reason.
  static std::shared_ptr<FileDevice> open(const std::filesystem::path& path, bool read_only);
  ~FileDevice() override;

  std::string name() const override { return name_; }
  uint64_t sectors() const override { return size_bytes_ >> kSectorShift; }
  uint64_t size_bytes() const { return size_bytes_; }
  bool is_block_device() const { return is_block_device_; }

  Task<Status> submit(Bio bio) override;
  Task<Status> direct_access(uint64_t sector, uint64_t count, const DirectAccess& how) override;
  Task<Status> block_status(uint64_t sector, uint64_t count, ExtentList& out) override;

  // What the file is, whatever the path and mode it was opened by.
  using FileId = std::pair<uint64_t, uint64_t>;  // st_dev, st_ino (block devices: 0, st_rdev)
  FileId file_id() const { return file_id_; }
  // `first` is the same file, opened before by another path or in the other
  // mode: this one answers identity() with it, so tables that name the file
  // differently still meet, as they would on the kernel's one dev_t (a
  // snapshot and its snapshot-origin above all).
  void same_file_as(std::shared_ptr<const FileDevice> first) { first_ = std::move(first); }
  const BlockDevice* identity() const override { return first_ ? first_->identity() : this; }

 private:
  FileDevice(std::string name, int fd, uint64_t size_bytes, bool is_block_device);
  Task<Status> transfer(const Bio& bio);
  bool can_read_in_place(uint64_t sector, uint64_t count) const;
  Task<Status> punch_or_zero(const Bio& bio);
  Task<Status> write_zero_buffers(const Bio& bio);
  Task<Status> block_device_ioctl(const Bio& bio);
  Task<Status> sync();

  // Bytes done without blocking (page cache hits), or -1 to use the engine.
  int64_t try_without_blocking(const Bio& bio, uint64_t done);

  std::string name_;
  int fd_;
  // tmpfs and ramfs never wait for a disk: their I/O is a memory copy.
  bool memory_backed_ = false;
  // Such a file is also mapped, to answer direct_access for reads and, when
  // it is open for writing, for writes. Nothing in user space
  // touches the mapping: the kernel does, when it copies to or from a socket,
  // so a file truncated under us gives EFAULT, not SIGBUS.
  std::shared_ptr<std::byte> mapping_;
  bool mapping_writable_ = false;
  // Cleared when the file system refuses RWF_NOWAIT, so we stop asking.
  std::atomic<bool> nowait_reads_ = true;
  std::atomic<bool> nowait_writes_ = true;
  uint64_t size_bytes_;
  bool is_block_device_;
  FileId file_id_{};
  std::shared_ptr<const FileDevice> first_;
};

}  // namespace dmnbd
