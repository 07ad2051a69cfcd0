#include "dmnbd/dm_io.hpp"

#include <cstring>
#include <vector>

#include "dmnbd/when_all.hpp"

namespace dmnbd {
namespace {

bool whole_sectors(size_t bytes) {
  return bytes % kSectorSize == 0;
}

}  // namespace

Task<Status> read_sectors(BlockDevice& dev, uint64_t sector, std::span<std::byte> buf) {
  if (!whole_sectors(buf.size())) co_return errno_status(EINVAL);
  if (buf.empty()) co_return ok();
  co_return co_await dev.submit(
      {.op = BioOp::read, .sector = sector, .sectors = buf.size() >> kSectorShift, .data = buf});
}

Task<Status> write_sectors(BlockDevice& dev, uint64_t sector, std::span<std::byte> buf,
                           uint32_t flags) {
  if (!whole_sectors(buf.size())) co_return errno_status(EINVAL);
  if (buf.empty()) co_return ok();
  co_return co_await dev.submit({.op = BioOp::write,
                                 .sector = sector,
                                 .sectors = buf.size() >> kSectorShift,
                                 .data = buf,
                                 .flags = flags});
}

Task<Status> read_bytes(BlockDevice& dev, uint64_t sector, std::span<std::byte> buf) {
  // The whole sectors go straight into `buf`; only the tail is bounced.
  const size_t head = buf.size() & ~(kSectorSize - 1);
  if (Status st = co_await read_sectors(dev, sector, buf.first(head))) co_return st;
  if (head == buf.size()) co_return ok();
  std::vector<std::byte> tail(kSectorSize);
  if (Status st = co_await read_sectors(dev, sector + (head >> kSectorShift), tail)) co_return st;
  std::memcpy(buf.data() + head, tail.data(), buf.size() - head);
  co_return ok();
}

Task<Status> write_bytes(BlockDevice& dev, uint64_t sector, std::span<const std::byte> bytes,
                         uint32_t flags) {
  std::vector<std::byte> padded((bytes.size() + kSectorSize - 1) & ~(kSectorSize - 1));
  if (!bytes.empty()) std::memcpy(padded.data(), bytes.data(), bytes.size());
  co_return co_await write_sectors(dev, sector, padded, flags);
}

Task<Status> flush_device(BlockDevice& dev) {
  co_return co_await dev.submit(flush_bio());
}

Task<Status> flush_all(std::span<const std::shared_ptr<BlockDevice>> devices) {
  std::vector<Task<Status>> flushes;
  for (const auto& dev : devices) flushes.push_back(flush_device(*dev));
  const std::vector<Status> results = co_await when_all(flushes);
  co_return first_error(results);
}

}  // namespace dmnbd
