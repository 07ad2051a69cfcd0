// Where a snapshot keeps its exceptions (origin chunk -> COW chunk), the
// kernel's dm_exception_store_type: persistent ("P", "PO": the kernel's
// on-disk COW format, dm-snap-persistent.c) or transient ("N": in memory,
// dm-snap-transient.c). The snapshot target keeps the lookup table
// (exception_table.hpp); a store only allocates COW chunks, makes exceptions
// durable in the kernel's order, and walks them back for a merge.
//
// Thread-safety: every member may be called from any thread; a store
// serialises its own metadata I/O.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "dmnbd/block_device.hpp"
#include "dmnbd/status.hpp"

namespace dmnbd::snapshot {

using Chunk = uint64_t;

struct ChunkPair {
  Chunk old_chunk = 0;  // chunk of the origin
  Chunk new_chunk = 0;  // chunk of the COW device holding its old contents
};

// The numbers of `dmsetup status`: "<allocated>/<total> <metadata>", sectors.
struct StoreUsage {
  uint64_t total_sectors = 0;
  uint64_t sectors_allocated = 0;
  uint64_t metadata_sectors = 0;
};

class ExceptionStore {
 public:
  virtual ~ExceptionStore() = default;

  // The effective chunk size in sectors: a persistent store's header wins
  // over the table (valid once read_metadata() has returned).
  virtual uint32_t chunk_sectors() const = 0;
  // The store word of the table line: "P", "PO" or "N".
  virtual std::string table_word() const = 0;
  virtual bool persistent() const = 0;
  // "PO": the table said userspace handles overflow (the kernel's
  // userspace_supports_overflow), so a full COW overflows instead of
  // invalidating on a snapshot write.
  virtual bool overflow_aware() const { return false; }

  // Reads the metadata and reports every exception, in on-disk order, to
  // `add`. A zeroed COW is a new snapshot: its header and first area are
  // written (durably) here, as the kernel's ctr does. `valid` is false when
  // the header says the snapshot was invalidated. Throws TargetError with
  // the kernel's ctr words ("Invalid or corrupt snapshot", ...) when the
  // COW cannot be used (a StoreError: its ctr_error() is dm-snap.c's "Failed
  // to read snapshot metadata"); a read or write error is returned (the
  // kernel's ctr then fails with that same ti->error).
  virtual Task<Status> read_metadata(std::function<void(ChunkPair)> add, bool& valid) = 0;

  // Allocates the next COW chunk for origin chunk `old_chunk` (not durable
  // yet): ENOSPC when the COW is full. Allocation order is commit order.
  virtual Status prepare_exception(Chunk old_chunk, Chunk& new_chunk) = 0;

  // The copy for a prepared exception finished (`copied` false: it failed,
  // which invalidates the store). Returns once the exception is durable on
  // the COW, after every exception prepared before it; an error means the
  // snapshot must be invalidated.
  virtual Task<Status> commit_exception(ChunkPair e, bool copied) = 0;

  // The snapshot is invalid: a persistent store rewrites its header with
  // valid = 0 (FUA); the areas are left as they are.
  virtual Task<void> drop_snapshot() = 0;

  virtual StoreUsage usage() const = 0;

  // Merge, newest exception first: the last committed exception and how many
  // exceptions before it continue it backwards (old and new chunks each one
  // less), within one area; 0 when nothing is left to merge.
  virtual Task<Status> prepare_merge(Chunk& last_old, Chunk& last_new, unsigned& count) = 0;
  // Forgets the last `count` exceptions (count <= what prepare_merge gave),
  // durably (area written with FUA).
  virtual Task<Status> commit_merge(unsigned count) = 0;
};

// What a store throws when the kernel's exception-store code refuses: what()
// is the store's own words (dm_exception_store_create's ti->error, or the
// persistent store's DMWARN such as "Invalid or corrupt snapshot"), while
// ctr_error() is what dm-snap.c's ctr leaves in ti->error, the one message
// `dmsetup` users see: it overwrites the store's words with "Couldn't create
// exception store", and a failed read_metadata reads "Failed to read snapshot
// metadata". status() is the kernel's return code (EINVAL, ENXIO).
class StoreError : public TargetError {
 public:
  StoreError(const std::string& words, const char* ctr_error, Status status)
      : TargetError(words), ctr_error_(ctr_error), status_(status) {}
  const char* ctr_error() const { return ctr_error_; }
  Status status() const { return status_; }

 private:
  const char* ctr_error_;
  Status status_;
};

inline constexpr const char* kStoreCreateFailed = "Couldn't create exception store";
inline constexpr const char* kReadMetadataFailed = "Failed to read snapshot metadata";

// `word` is the table's store argument (P, PO, N, any case); throws
// TargetError("Exception store type is not P or N") or the kernel's other
// words (a StoreError, see above). `chunk_sectors` is the table's (0: the
// header's, or 32 for a new persistent store; refused for transient: "Chunk
// size not set", a plain TargetError: that one is dm-snap.c's own). The
// chunk size is checked as dm_exception_store_set_chunk_size does.
std::unique_ptr<ExceptionStore> make_exception_store(const std::string& word,
                                                     uint32_t chunk_sectors,
                                                     std::shared_ptr<BlockDevice> cow);
// The same from the table's chunk word, parsed as the kernel's kstrtouint
// (base 10): anything else is StoreError("Invalid chunk size").
std::unique_ptr<ExceptionStore> make_exception_store(const std::string& word,
                                                     const std::string& chunk_arg,
                                                     std::shared_ptr<BlockDevice> cow);

// Why dm_exception_store_set_chunk_size refuses `chunk_sectors` (the
// kernel's words), or nullptr when it is fine. The logical block size of the
// COW and the origin is 512 bytes here, so every power of two is a multiple.
const char* chunk_size_error(uint32_t chunk_sectors);

// The stores themselves, for make_exception_store: `chunk_sectors` already
// checked (0 allowed for persistent only).
std::unique_ptr<ExceptionStore> make_persistent_store(uint32_t chunk_sectors, bool overflow_aware,
                                                      std::shared_ptr<BlockDevice> cow);
std::unique_ptr<ExceptionStore> make_transient_store(uint32_t chunk_sectors,
                                                     std::shared_ptr<BlockDevice> cow);

}  // namespace dmnbd::snapshot
