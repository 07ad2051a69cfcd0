#include "pool_metadata.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace dmnbd::thin {
namespace {

using Ref = TransactionManager::Ref;

// Clean metadata blocks kept in memory (8 MiB): the mapping leaves of about
// half a million provisioned blocks. Dirty blocks stay until the commit.
constexpr size_t kCachedBlocks = 2048;

}  // namespace

PoolMetadata::PoolMetadata(std::shared_ptr<BlockDevice> dev, uint32_t data_block_sectors)
    : dev_(std::move(dev)),
      cache_(std::make_unique<BlockCache>(*dev_, kMetadataBlockBytes, kCachedBlocks)),
      data_block_sectors_(data_block_sectors) {
  tm_ = std::make_unique<TransactionManager>(*cache_, metadata_.counts());
  // A data block is held once by each distinct leaf that maps it.
  block_time_type_.size = 8;
  block_time_type_.inc = [this](const std::byte* v) {
    return data_.counts().inc(unpack_block(get_le64(v)));
  };
  block_time_type_.dec = [this](const std::byte* v) {
    return data_.counts().dec(unpack_block(get_le64(v)));
  };
  block_time_type_.equal = [](const std::byte* a, const std::byte* b) {
    return unpack_block(get_le64(a)) == unpack_block(get_le64(b));
  };
  // Walking the top level to change a subtree: a copied leaf holds each
  // subtree root once more; replacing a root by its shadow drops nothing
  // (the shadowing already moved the holder).
  top_level_type_.size = 8;
  top_level_type_.inc = [this](const std::byte* v) { return tm_->inc(get_le64(v)); };
  top_level_type_.equal = [](const std::byte*, const std::byte*) { return true; };
  device_type_.size = 8;
  device_type_.subtree = &block_time_type_;
  details_type_.size = DeviceDetails::kBytes;
}

PoolMetadata::~PoolMetadata() = default;

Task<Status> PoolMetadata::open(std::shared_ptr<BlockDevice> dev, uint32_t data_block_sectors,
                                bool read_only, std::unique_ptr<PoolMetadata>& out,
                                std::string& error) {
  std::unique_ptr<PoolMetadata> pmd(new PoolMetadata(std::move(dev), data_block_sectors));
  Ref super;
  Status st = co_await pmd->cache_->read(0, super);
  if (st) {
    error = "couldn't read superblock";
    co_return st;
  }
  const auto bytes = super.data();
  const bool zeroed =
      std::all_of(bytes.begin(), bytes.end(), [](std::byte b) { return b == std::byte{0}; });
  if (zeroed) {
    super.release();
    if (read_only) {
      error = "Error creating metadata object";
      co_return errno_status(EPERM);
    }
    const uint64_t nr_blocks =
        std::min(pmd->dev_->sectors() / kMetadataBlockSectors, space_map::kMaxMetadataBlocks);
    st = co_await pmd->format(nr_blocks);
    if (st) error = "Error creating metadata object";
  } else {
    std::vector<std::byte> copy(bytes.begin(), bytes.end());
    super.release();
    st = co_await pmd->load(copy, error);
  }
  if (!st) out = std::move(pmd);
  co_return st;
}

// __format_metadata(): an empty pool. Block 0 is the superblock; the rest
// come from the metadata space map as the trees and maps are written.
Task<Status> PoolMetadata::format(uint64_t nr_metadata_blocks) {
  metadata_.counts() = RefCounts(nr_metadata_blocks);
  Status st = metadata_.counts().set(0, 1);
  if (st) co_return st;
  Ref super;
  st = co_await cache_->new_block(0, super);
  if (st) co_return st;
  std::memset(super.data().data(), 0, super.data().size());
  super.mark_dirty();
  super.release();
  metadata_nr_blocks_field_ = nr_metadata_blocks;
  BTree details(*tm_, details_type_), mapping(*tm_, device_type_);
  st = co_await details.create(details_root_);
  if (st) co_return st;
  st = co_await mapping.create(mapping_root_);
  if (st) co_return st;
  changed_ = true;
  co_return co_await commit();
}

Task<Status> PoolMetadata::load(std::span<const std::byte> super, std::string& error) {
  namespace sb = superblock;
  const std::byte* b = super.data();
  if (!checksum_matches(super, BlockKind::superblock) || get_le64(b + sb::blocknr) != 0) {
    error = "superblock check failed";  // the kernel's validator: "sb_check failed"
    co_return errno_status(EILSEQ);
  }
  if (get_le64(b + sb::magic) != sb::kMagic) {
    error = "superblock check failed";
    co_return errno_status(EILSEQ);
  }
  if (get_le32(b + sb::incompat_flags) != 0) {
    error = fmt::format("could not access metadata due to unsupported optional features ({:x}).",
                        get_le32(b + sb::incompat_flags));
    co_return errno_status(EINVAL);
  }
  const uint32_t stored_block_size = get_le32(b + sb::data_block_size);
  if (stored_block_size != data_block_sectors_) {
    error = fmt::format("changing the data block size (from {} to {}) is not supported",
                        stored_block_size, data_block_sectors_);
    co_return errno_status(EINVAL);
  }
  flags_ = get_le32(b + sb::flags);
  time_ = get_le32(b + sb::time);
  trans_id_ = get_le64(b + sb::trans_id);
  held_root_ = get_le64(b + sb::held_root);
  mapping_root_ = get_le64(b + sb::data_mapping_root);
  details_root_ = get_le64(b + sb::device_details_root);
  metadata_nr_blocks_field_ = get_le64(b + sb::metadata_nr_blocks);
  Status st = co_await metadata_.open(*tm_, SpaceMapRoot::load(b + sb::metadata_space_map_root));
  if (!st) st = co_await data_.open(*tm_, SpaceMapRoot::load(b + sb::data_space_map_root));
  if (st) {
    error = "couldn't read the space maps";
    co_return st;
  }
  // Ours are cached in memory whole, as changed devices are in the kernel.
  BTree details(*tm_, details_type_);
  const BTree::Visitor add = [this](uint64_t id, const std::byte* v) {
    details_[static_cast<uint32_t>(id)].details = DeviceDetails::load(v);
    return true;
  };
  st = co_await details.walk(details_root_, add);
  if (st) error = "couldn't read the device details";
  co_return st;
}

uint64_t PoolMetadata::mapped_blocks(uint32_t id) const {
  auto it = details_.find(id);
  return it == details_.end() ? 0 : it->second.details.mapped_blocks;
}

Task<Status> PoolMetadata::subtree_root(uint32_t id, uint64_t& root, bool& found) {
  BTree top(*tm_, top_level_type_);
  std::byte value[8];
  Status st = co_await top.lookup(mapping_root_, id, value, found);
  if (!st && found) root = get_le64(value);
  co_return st;
}

Task<Status> PoolMetadata::change_subtree(uint32_t id,
                                          const std::function<Task<Status>(uint64_t&)>& change) {
  uint64_t root = 0;
  bool found = false;
  Status st = co_await subtree_root(id, root, found);
  if (st) co_return st;
  if (!found) co_return errno_status(ENODATA);
  // Top down, as the kernel's spine: a shared top-level leaf is copied
  // (its subtree roots gaining a holder) before the subtree is shadowed.
  BTree top(*tm_, top_level_type_);
  std::byte value[8];
  put_le64(value, root);
  st = co_await top.insert(mapping_root_, id, value);
  if (st) co_return st;
  st = co_await change(root);
  if (st) co_return st;
  put_le64(value, root);
  changed_ = true;
  co_return co_await top.insert(mapping_root_, id, value);
}

Task<Status> PoolMetadata::create_thin(uint32_t id) {
  if (details_.count(id)) co_return errno_status(EEXIST);
  BTree bottom(*tm_, block_time_type_), top(*tm_, top_level_type_);
  uint64_t root = 0;
  Status st = co_await bottom.create(root);
  if (st) co_return st;
  std::byte value[8];
  put_le64(value, root);
  st = co_await top.insert(mapping_root_, id, value);
  if (st) co_return st;
  details_[id] = {{0, trans_id_, time_, time_}, true};
  changed_ = true;
  co_return ok();
}

// __create_snap(): the snapshot's subtree is the origin's, held once more.
Task<Status> PoolMetadata::create_snap(uint32_t id, uint32_t origin) {
  if (details_.count(id)) co_return errno_status(EEXIST);
  uint64_t origin_root = 0;
  bool found = false;
  Status st = co_await subtree_root(origin, origin_root, found);
  if (st) co_return st;
  if (!found || !details_.count(origin)) co_return errno_status(ENODATA);
  st = tm_->inc(origin_root);
  if (st) co_return st;
  BTree top(*tm_, top_level_type_);
  std::byte value[8];
  put_le64(value, origin_root);
  st = co_await top.insert(mapping_root_, id, value);
  if (st) co_return st;
  ++time_;
  Device& o = details_[origin];
  o.details.snapshotted_time = time_;
  o.changed = true;
  details_[id] = {{o.details.mapped_blocks, trans_id_, time_, time_}, true};
  changed_ = true;
  co_return ok();
}

Task<Status> PoolMetadata::delete_device(uint32_t id) {
  if (!details_.count(id)) co_return errno_status(ENODATA);
  BTree details(*tm_, details_type_), devices(*tm_, device_type_);
  bool removed = false;
  Status st = co_await details.remove(details_root_, id, &removed);
  if (st) co_return st;
  st = co_await devices.remove(mapping_root_, id, &removed);
  if (st) co_return st;
  details_.erase(id);
  changed_ = true;
  co_return ok();
}

Status PoolMetadata::set_transaction_id(uint64_t current, uint64_t next) {
  if (current != trans_id_) return errno_status(EINVAL);
  trans_id_ = next;
  changed_ = true;
  return ok();
}

// __reserve_metadata_snap(): a copy of the superblock in a block of its
// own, holding the mapping and details trees once more, space maps zeroed.
Task<Status> PoolMetadata::reserve_metadata_snap() {
  if (held_root_) co_return errno_status(EBUSY);
  changed_ = true;
  Status st = co_await commit();
  if (st) co_return st;
  st = tm_->inc(0);
  if (st) co_return st;
  Ref copy;
  bool shared = false;
  st = co_await tm_->shadow(0, BlockKind::superblock, copy, shared);
  if (st) co_return st;
  std::byte* b = copy.data().data();
  std::memset(b + superblock::data_space_map_root, 0, superblock::kSpaceMapRootBytes);
  std::memset(b + superblock::metadata_space_map_root, 0, superblock::kSpaceMapRootBytes);
  put_le64(b + superblock::held_root, 0);
  const uint64_t held_mapping = get_le64(b + superblock::data_mapping_root);
  const uint64_t held_details = get_le64(b + superblock::device_details_root);
  st = tm_->inc(held_mapping);
  if (!st) st = tm_->inc(held_details);
  if (st) co_return st;
  held_root_ = copy.block();
  co_return ok();
}

Task<Status> PoolMetadata::release_metadata_snap() {
  if (!held_root_) co_return errno_status(EINVAL);
  Ref copy;
  Status st = co_await tm_->read(held_root_, BlockKind::superblock, copy);
  if (st) co_return st;
  const uint64_t held_mapping = get_le64(copy.data().data() + superblock::data_mapping_root);
  const uint64_t held_details = get_le64(copy.data().data() + superblock::device_details_root);
  copy.release();
  BTree devices(*tm_, device_type_), details(*tm_, details_type_);
  st = co_await devices.del(held_mapping);
  if (!st) st = co_await details.del(held_details);
  if (!st) st = tm_->dec(held_root_);
  if (st) co_return st;
  held_root_ = 0;
  changed_ = true;
  co_return ok();
}

Task<Status> PoolMetadata::find_block(uint32_t id, uint64_t vblock, std::optional<Mapping>& out) {
  uint64_t found_block = 0;
  co_return co_await lookup_mapping(id, vblock, false, found_block, out);
}

Task<Status> PoolMetadata::next_mapped(uint32_t id, uint64_t vblock, uint64_t& found_block,
                                       std::optional<Mapping>& out) {
  co_return co_await lookup_mapping(id, vblock, true, found_block, out);
}

// The mapping of `vblock` (or with `next`, of the first mapped block from
// it on), shared if the device was snapshotted after it was made.
Task<Status> PoolMetadata::lookup_mapping(uint32_t id, uint64_t vblock, bool next,
                                          uint64_t& found_block, std::optional<Mapping>& out) {
  out.reset();
  auto dev = details_.find(id);
  if (dev == details_.end()) co_return errno_status(ENODATA);
  uint64_t root = 0;
  bool found = false;
  Status st = co_await subtree_root(id, root, found);
  if (st || !found) co_return st ? st : errno_status(ENODATA);
  BTree bottom(*tm_, block_time_type_);
  std::byte value[8];
  if (next) {
    st = co_await bottom.lookup_next(root, vblock, found_block, value, found);
  } else {
    found_block = vblock;
    st = co_await bottom.lookup(root, vblock, value, found);
  }
  if (!st && found) {
    const uint64_t v = get_le64(value);
    out = Mapping{unpack_block(v), dev->second.details.snapshotted_time > unpack_time(v)};
  }
  co_return st;
}

Task<Status> PoolMetadata::highest_mapped(uint32_t id, std::optional<uint64_t>& out) {
  out.reset();
  uint64_t root = 0;
  bool found = false;
  Status st = co_await subtree_root(id, root, found);
  if (st || !found) co_return st ? st : errno_status(ENODATA);
  BTree bottom(*tm_, block_time_type_);
  uint64_t key = 0;
  st = co_await bottom.highest_key(root, key, found);
  if (!st && found) out = key;
  co_return st;
}

Task<Status> PoolMetadata::insert_block(uint32_t id, uint64_t vblock, uint64_t data_block) {
  auto dev = details_.find(id);
  if (dev == details_.end()) co_return errno_status(ENODATA);
  bool inserted = false;
  const std::function<Task<Status>(uint64_t&)> change = [&](uint64_t& root) -> Task<Status> {
    BTree bottom(*tm_, block_time_type_);
    std::byte value[8];
    put_le64(value, pack_block_time(data_block, time_));
    co_return co_await bottom.insert(root, vblock, value, &inserted);
  };
  Status st = co_await change_subtree(id, change);
  if (st) co_return st;
  if (inserted) {
    ++dev->second.details.mapped_blocks;
    dev->second.changed = true;
  }
  co_return ok();
}

Task<Status> PoolMetadata::remove_range(uint32_t id, uint64_t begin, uint64_t end,
                                        uint64_t& removed) {
  removed = 0;
  auto dev = details_.find(id);
  if (dev == details_.end()) co_return errno_status(ENODATA);
  const std::function<Task<Status>(uint64_t&)> change = [&](uint64_t& root) -> Task<Status> {
    BTree bottom(*tm_, block_time_type_);
    co_return co_await bottom.remove_range(root, begin, end, removed);
  };
  Status st = co_await change_subtree(id, change);
  if (st) co_return st;
  Device& d = dev->second;
  d.details.mapped_blocks -= std::min(d.details.mapped_blocks, removed);
  d.changed = true;
  co_return ok();
}

Status PoolMetadata::alloc_data_block(uint64_t& out) {
  const auto block = data_.counts().allocate();
  if (!block) return errno_status(ENOSPC);
  out = *block;
  changed_ = true;
  return ok();
}

Status PoolMetadata::resize_data(uint64_t nr_blocks) {
  if (nr_blocks < data_.counts().nr_blocks()) return errno_status(EINVAL);
  if (nr_blocks == data_.counts().nr_blocks()) return ok();
  data_.counts().extend(nr_blocks);
  changed_ = true;
  return ok();
}

Status PoolMetadata::resize_metadata(uint64_t nr_blocks) {
  nr_blocks = std::min(nr_blocks, space_map::kMaxMetadataBlocks);
  if (nr_blocks < metadata_.counts().nr_blocks()) return errno_status(EINVAL);
  if (nr_blocks == metadata_.counts().nr_blocks()) return ok();
  metadata_.counts().extend(nr_blocks);
  changed_ = true;
  return ok();
}

PoolMetadata::Usage PoolMetadata::usage() const {
  return {metadata_.counts().nr_blocks(), metadata_.counts().nr_allocatable(),
          data_.counts().nr_blocks(), data_.counts().nr_free()};
}

uint64_t PoolMetadata::commit_blocks() const {
  // The details tree: a path shadowed, and a split on each level at worst.
  constexpr uint64_t kDetailsPath = 8;
  return data_.commit_blocks() + metadata_.commit_blocks() + kDetailsPath;
}

Task<Status> PoolMetadata::write_details() {
  BTree details(*tm_, details_type_);
  for (auto& [id, dev] : details_) {
    if (!dev.changed) continue;
    std::byte value[DeviceDetails::kBytes];
    dev.details.store(value);
    Status st = co_await details.insert(details_root_, id, value);
    if (st) co_return st;
    dev.changed = false;
  }
  co_return ok();
}

void PoolMetadata::fill_superblock(std::span<std::byte> block) const {
  namespace sb = superblock;
  std::byte* b = block.data();
  put_le32(b + sb::flags, flags_);
  put_le64(b + sb::magic, sb::kMagic);
  put_le32(b + sb::version, sb::kVersion);
  put_le32(b + sb::time, time_);
  put_le64(b + sb::trans_id, trans_id_);
  put_le64(b + sb::held_root, held_root_);
  std::memset(b + sb::data_space_map_root, 0, sb::kSpaceMapRootBytes);
  data_.root().store(b + sb::data_space_map_root);
  std::memset(b + sb::metadata_space_map_root, 0, sb::kSpaceMapRootBytes);
  metadata_.root().store(b + sb::metadata_space_map_root);
  put_le64(b + sb::data_mapping_root, mapping_root_);
  put_le64(b + sb::device_details_root, details_root_);
  put_le32(b + sb::data_block_size, data_block_sectors_);
  put_le32(b + sb::metadata_block_size, kMetadataBlockSectors);
  put_le64(b + sb::metadata_nr_blocks, metadata_nr_blocks_field_);
}

// __commit_transaction(), in its order.
Task<Status> PoolMetadata::commit() {
  if (!changed_) co_return ok();
  Status st;
  if (pre_commit_) {
    st = co_await pre_commit_();
    if (st) co_return st;
  }
  st = co_await write_details();
  if (!st) st = co_await data_.commit(*tm_);
  if (!st) st = co_await metadata_.commit(*tm_);
  if (st) co_return st;
  const std::function<void(std::span<std::byte>)> fill = [this](std::span<std::byte> b) {
    fill_superblock(b);
  };
  st = co_await tm_->commit(fill);
  if (!st) changed_ = false;
  co_return st;
}

Task<Status> PoolMetadata::set_needs_check() {
  flags_ |= superblock::kNeedsCheckFlag;
  Ref super;
  Status st = co_await cache_->read(0, super);
  if (st) co_return st;
  std::byte* b = super.data().data();
  put_le32(b + superblock::flags, get_le32(b + superblock::flags) | superblock::kNeedsCheckFlag);
  seal_block(super.data(), BlockKind::superblock);
  super.mark_dirty();
  co_return co_await cache_->commit(super);
}

}  // namespace dmnbd::thin
