// Sector I/O helpers for targets and their metadata (the kernel's dm-io, for
// coroutines): read or write whole sectors or a byte buffer at a sector of a
// BlockDevice, and flushes. Errors come back as the device's Status.
#pragma once
#include <cstdint>
#include <memory>
#include <span>

#include "dmnbd/block_device.hpp"

namespace dmnbd {

// Whole sectors, straight from or into `buf`: its size must be a multiple of
// 512 (EINVAL otherwise, and nothing is sent). `flags` may hold kBioFua.
Task<Status> read_sectors(BlockDevice& dev, uint64_t sector, std::span<std::byte> buf);
Task<Status> write_sectors(BlockDevice& dev, uint64_t sector, std::span<std::byte> buf,
                           uint32_t flags = 0);

// Any number of bytes from the start of `sector`. A read of a partial last
// sector reads it whole into a bounce buffer; a write copies `bytes` and pads
// the last sector with zeroes, as on-disk headers are written.
Task<Status> read_bytes(BlockDevice& dev, uint64_t sector, std::span<std::byte> buf);
Task<Status> write_bytes(BlockDevice& dev, uint64_t sector, std::span<const std::byte> bytes,
                         uint32_t flags = 0);

// Makes every completed write to `dev` durable.
Task<Status> flush_device(BlockDevice& dev);
// Flushes every device at once and waits for all; the first error in the
// order given, though every device is flushed even when one fails.
Task<Status> flush_all(std::span<const std::shared_ptr<BlockDevice>> devices);

}  // namespace dmnbd
