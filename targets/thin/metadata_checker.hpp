// The project's own check of a thin pool's metadata (`dmnbd thin check`),
// for what thin_check 0.9.0 does not look at: it recounts every reference
// from the superblock down (metadata blocks, and data blocks per distinct
// leaf that maps them, held root included) and compares both space maps with
// it, entry by entry, with nr_allocated and the index hints (nr_free,
// none_free_before) the kernel's allocator relies on. It also checks what
// thin_check does: checksums, locations, node fill and key order, and the
// details and mapping trees naming the same devices.
//
// It reads the device through its own code paths, not PoolMetadata's, so a
// bug in the writer is not repeated in the check. The pool must be
// suspended or not in use: a live pool changes the device under it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "dmnbd/block_device.hpp"

namespace dmnbd::thin {

struct MetadataCheck {
  std::vector<std::string> errors;  // empty: consistent
  uint64_t transaction_id = 0;
  uint64_t devices = 0;
  uint64_t mappings = 0;  // over all devices, shared ones once per device
  uint64_t metadata_blocks = 0, metadata_used = 0;
  uint64_t data_blocks = 0, data_used = 0;
  uint64_t held_root = 0;
  bool needs_check = false;

  bool ok() const { return errors.empty(); }
};

// Reads the metadata on `dev`; an I/O error reading it is an error of the
// result (a device that cannot be read is not consistent either).
Task<MetadataCheck> check_metadata(BlockDevice& dev);

}  // namespace dmnbd::thin
