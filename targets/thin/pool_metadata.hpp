// A thin pool's metadata (the kernel's dm-thin-metadata.c): the superblock,
// the device details tree, the two-level mapping tree (device id -> virtual
// block -> data block and time) and the two space maps, on one metadata
// device, changed in transactions that commit in the kernel's order.
//
// Not thread-safe: the pool serialises every call (the kernel's root_lock).
// After an error that may have left the in-memory state half changed, the
// owner must drop this object and open the device again (abort).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "btree.hpp"
#include "dmnbd/block_cache.hpp"
#include "space_map.hpp"
#include "transaction_manager.hpp"

namespace dmnbd::thin {

class PoolMetadata {
 public:
  struct Mapping {
    uint64_t data_block = 0;
    bool shared = false;  // the device was snapshotted since the block was mapped
  };

  // The numbers the pool's status line and low-water checks use: free
  // metadata blocks as allocatable now, free data blocks as counted now.
  struct Usage {
    uint64_t metadata_total = 0, metadata_free = 0;
    uint64_t data_total = 0, data_free = 0;
  };

  // Formats `dev` if its block 0 is all zeroes (not when read-only: EPERM),
  // else opens it. `error` gets the kernel's words when that fails.
  static Task<Status> open(std::shared_ptr<BlockDevice> dev, uint32_t data_block_sectors,
                           bool read_only, std::unique_ptr<PoolMetadata>& out, std::string& error);
  ~PoolMetadata();

  // Called before the metadata of a commit goes out (the data device flush).
  void set_pre_commit(std::function<Task<Status>()> hook) { pre_commit_ = std::move(hook); }

  // ---- devices ----
  bool device_exists(uint32_t id) const { return details_.count(id) != 0; }
  Task<Status> create_thin(uint32_t id);                   // EEXIST
  Task<Status> create_snap(uint32_t id, uint32_t origin);  // EEXIST, ENODATA
  Task<Status> delete_device(uint32_t id);                 // ENODATA
  uint64_t mapped_blocks(uint32_t id) const;
  uint64_t transaction_id() const { return trans_id_; }
  Status set_transaction_id(uint64_t current, uint64_t next);  // EINVAL on a mismatch
  Task<Status> reserve_metadata_snap();                        // EBUSY if one is held
  Task<Status> release_metadata_snap();                        // EINVAL if none is
  uint64_t held_root() const { return held_root_; }

  // ---- mappings ----
  Task<Status> find_block(uint32_t id, uint64_t vblock, std::optional<Mapping>& out);
  // The first mapped block >= vblock; none if there is none.
  Task<Status> next_mapped(uint32_t id, uint64_t vblock, uint64_t& found,
                           std::optional<Mapping>& out);
  Task<Status> highest_mapped(uint32_t id, std::optional<uint64_t>& out);
  // Maps `vblock` to `data_block` (whose holder the caller already counted:
  // alloc_data_block), at the current time.
  Task<Status> insert_block(uint32_t id, uint64_t vblock, uint64_t data_block);
  // Unmaps [begin, end); the unmapped data blocks lose this holder.
  Task<Status> remove_range(uint32_t id, uint64_t begin, uint64_t end, uint64_t& removed);

  // ---- data space ----
  // A data block free now and at the last commit, with count 1. ENOSPC if
  // none is (a commit may free some: the caller commits and tries again).
  Status alloc_data_block(uint64_t& out);
  uint32_t data_block_count(uint64_t block) const { return data_.counts().count(block); }
  Status inc_data_block(uint64_t block) { return data_.counts().inc(block); }
  Status dec_data_block(uint64_t block) { return data_.counts().dec(block); }
  uint64_t data_blocks() const { return data_.counts().nr_blocks(); }
  Status resize_data(uint64_t nr_blocks);      // EINVAL to shrink
  Status resize_metadata(uint64_t nr_blocks);  // EINVAL to shrink
  uint64_t metadata_blocks() const { return metadata_.counts().nr_blocks(); }
  Usage usage() const;

  // ---- transactions ----
  bool changed() const { return changed_; }
  // Metadata blocks the next commit may take (both space maps' and the
  // details tree's), which must stay free for it.
  uint64_t commit_blocks() const;
  // Data flushed (pre-commit), then every new metadata block written and
  // flushed, then the superblock. Nothing to do if nothing changed.
  Task<Status> commit();
  bool needs_check() const { return flags_ & superblock::kNeedsCheckFlag; }
  // Sets the flag in the superblock on disk (in place, as the kernel does).
  Task<Status> set_needs_check();
  uint32_t time() const { return time_; }

 private:
  struct Device {
    DeviceDetails details;
    bool changed = false;
  };

  PoolMetadata(std::shared_ptr<BlockDevice> dev, uint32_t data_block_sectors);
  Task<Status> format(uint64_t nr_metadata_blocks);
  Task<Status> load(std::span<const std::byte> super, std::string& error);
  Task<Status> subtree_root(uint32_t id, uint64_t& root, bool& found);
  Task<Status> lookup_mapping(uint32_t id, uint64_t vblock, bool next, uint64_t& found_block,
                              std::optional<Mapping>& out);
  // Shadows the top level's path to `id` (so the subtree root below it has
  // its right count), then `change` gets the subtree root to update.
  Task<Status> change_subtree(uint32_t id, const std::function<Task<Status>(uint64_t&)>& change);
  Task<Status> write_details();
  void fill_superblock(std::span<std::byte> block) const;

  std::shared_ptr<BlockDevice> dev_;
  std::unique_ptr<BlockCache> cache_;
  SpaceMap metadata_{SpaceMap::Kind::metadata};
  SpaceMap data_{SpaceMap::Kind::data};
  std::unique_ptr<TransactionManager> tm_;
  ValueType block_time_type_;  // mapping level 1: data block and time
  ValueType top_level_type_;   // mapping level 0 as a path: subtree roots
  ValueType device_type_;      // mapping level 0 as owner: deleting deletes the subtree
  ValueType details_type_;
  std::function<Task<Status>()> pre_commit_;

  const uint32_t data_block_sectors_;
  uint32_t flags_ = 0;
  uint32_t time_ = 0;
  uint64_t trans_id_ = 0;
  uint64_t held_root_ = 0;
  uint64_t mapping_root_ = 0;
  uint64_t details_root_ = 0;
  uint64_t metadata_nr_blocks_field_ = 0;  // as found; written back unchanged
  std::map<uint32_t, Device> details_;
  bool changed_ = false;
};

}  // namespace dmnbd::thin
