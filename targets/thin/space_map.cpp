#include "space_map.hpp"

#include <cstring>

#include "btree.hpp"

namespace dmnbd::thin {
namespace {

const ValueType kIndexEntryType{space_map::kIndexEntryBytes};  // the data map's index
const ValueType kOverflowType{4};                              // u32 counts

}  // namespace

Task<Status> SpaceMap::read_bitmap(TransactionManager& tm, uint64_t index, uint64_t block) {
  TransactionManager::Ref ref;
  Status st = co_await tm.read(block, BlockKind::bitmap, ref);
  if (st) co_return st;
  std::memcpy(counts_.bits_for_load(index).data(),
              ref.data().data() + space_map::kBitmapHeaderBytes, RefCounts::kBitmapBytes);
  bitmap_blocks_[index] = block;
  co_return ok();
}

Task<Status> SpaceMap::open(TransactionManager& tm, const SpaceMapRoot& root) {
  counts_ = RefCounts(root.nr_blocks);
  const uint64_t nr_bitmaps = counts_.nr_bitmaps();
  bitmap_blocks_.assign(nr_bitmaps, 0);
  index_nodes_.clear();
  overflow_nodes_.clear();
  std::vector<IndexEntry> entries;
  Status st;
  if (kind_ == Kind::metadata) {
    if (nr_bitmaps > space_map::kMaxMetadataBitmaps) co_return errno_status(EILSEQ);
    TransactionManager::Ref ref;
    st = co_await tm.read(root.bitmap_root, BlockKind::index, ref);
    if (st) co_return st;
    for (uint64_t i = 0; i < nr_bitmaps; ++i)
      entries.push_back(IndexEntry::load(ref.data().data() + space_map::kIndexHeaderBytes +
                                         i * space_map::kIndexEntryBytes));
    index_nodes_.push_back(root.bitmap_root);
  } else {
    BTree index(tm, kIndexEntryType);
    bool in_order = true;
    const BTree::Visitor collect = [&](uint64_t key, const std::byte* value) {
      in_order = in_order && key == entries.size();
      entries.push_back(IndexEntry::load(value));
      return true;
    };
    st = co_await index.walk(root.bitmap_root, collect);
    if (st) co_return st;
    if (!in_order || entries.size() != nr_bitmaps) co_return errno_status(EILSEQ);
    st = co_await index.nodes(root.bitmap_root, index_nodes_);
    if (st) co_return st;
  }
  index_root_ = root.bitmap_root;
  for (uint64_t i = 0; i < nr_bitmaps; ++i) {
    st = co_await read_bitmap(tm, i, entries[i].blocknr);
    if (st) co_return st;
  }
  std::vector<std::pair<uint64_t, uint32_t>> overflow;
  BTree overflow_tree(tm, kOverflowType);
  const BTree::Visitor collect_overflow = [&](uint64_t key, const std::byte* value) {
    overflow.emplace_back(key, get_le32(value));
    return true;
  };
  st = co_await overflow_tree.walk(root.ref_count_root, collect_overflow);
  if (st) co_return st;
  st = co_await overflow_tree.nodes(root.ref_count_root, overflow_nodes_);
  if (st) co_return st;
  overflow_root_ = root.ref_count_root;
  for (const auto& [block, count] : overflow) {
    st = counts_.load_overflow(block, count);
    if (st) co_return st;
  }
  counts_.loaded();
  co_return ok();
}

Status SpaceMap::drop(TransactionManager& tm, std::vector<uint64_t>& blocks) {
  for (uint64_t b : blocks) {
    Status st = tm.dec(b);
    if (st) return st;
  }
  blocks.clear();
  return ok();
}

Task<Status> SpaceMap::write_overflow(TransactionManager& tm) {
  Status st = drop(tm, overflow_nodes_);
  if (st) co_return st;
  std::vector<uint64_t> keys;
  std::vector<std::byte> values;
  for (const auto& [block, count] : counts_.overflow()) {
    keys.push_back(block);
    std::byte v[4];
    put_le32(v, count);
    values.insert(values.end(), v, v + 4);
  }
  BTree tree(tm, kOverflowType);
  st = co_await tree.build(keys, values, overflow_root_);
  if (st) co_return st;
  co_return co_await tree.nodes(overflow_root_, overflow_nodes_);
}

Task<Status> SpaceMap::relocate_bitmap(TransactionManager& tm, uint64_t index) {
  TransactionManager::Ref ref;
  Status st = co_await tm.new_block(BlockKind::bitmap, ref);
  if (st) co_return st;
  const uint64_t old = bitmap_blocks_[index];
  bitmap_blocks_[index] = ref.block();
  relocated_[index] = true;
  co_return old ? tm.dec(old) : ok();
}

Task<Status> SpaceMap::fill_bitmaps(TransactionManager& tm) {
  for (uint64_t i = 0; i < bitmap_blocks_.size(); ++i) {
    if (!relocated_[i]) continue;
    TransactionManager::Ref ref;
    Status st = co_await tm.read(bitmap_blocks_[i], BlockKind::bitmap, ref);
    if (st) co_return st;
    std::memcpy(ref.data().data() + space_map::kBitmapHeaderBytes, counts_.bits(i).data(),
                RefCounts::kBitmapBytes);
    ref.mark_dirty();
  }
  co_return ok();
}

Task<Status> SpaceMap::write_data_index(TransactionManager& tm) {
  Status st = drop(tm, index_nodes_);
  if (st) co_return st;
  std::vector<uint64_t> keys;
  std::vector<std::byte> values(bitmap_blocks_.size() * space_map::kIndexEntryBytes);
  for (uint64_t i = 0; i < bitmap_blocks_.size(); ++i) {
    keys.push_back(i);
    const IndexEntry e{bitmap_blocks_[i], counts_.free_in_bitmap(i), counts_.first_free(i)};
    e.store(values.data() + i * space_map::kIndexEntryBytes);
  }
  BTree tree(tm, kIndexEntryType);
  st = co_await tree.build(keys, values, index_root_);
  if (st) co_return st;
  co_return co_await tree.nodes(index_root_, index_nodes_);
}

Task<Status> SpaceMap::write_metadata_index(TransactionManager& tm) {
  TransactionManager::Ref ref;
  Status st = co_await tm.read(index_root_, BlockKind::index, ref);
  if (st) co_return st;
  std::byte* entries = ref.data().data() + space_map::kIndexHeaderBytes;
  std::memset(entries, 0, space_map::kMaxMetadataBitmaps * space_map::kIndexEntryBytes);
  for (uint64_t i = 0; i < bitmap_blocks_.size(); ++i) {
    const IndexEntry e{bitmap_blocks_[i], counts_.free_in_bitmap(i), counts_.first_free(i)};
    e.store(entries + i * space_map::kIndexEntryBytes);
  }
  ref.mark_dirty();
  co_return ok();
}

Task<Status> SpaceMap::commit(TransactionManager& tm) {
  const uint64_t nr_bitmaps = counts_.nr_bitmaps();
  bitmap_blocks_.resize(nr_bitmaps, 0);
  relocated_.assign(nr_bitmaps, false);
  bool changed = index_root_ == 0 || counts_.overflow_dirty() || overflow_root_ == 0;
  for (uint64_t i = 0; i < nr_bitmaps; ++i)
    changed = changed || counts_.dirty(i) || bitmap_blocks_[i] == 0;
  if (!changed) co_return ok();

  Status st;
  if (counts_.overflow_dirty() || overflow_root_ == 0) {
    st = co_await write_overflow(tm);
    if (st) co_return st;
  }
  if (kind_ == Kind::metadata) {
    // The index block moves every commit; it is counted before the bitmaps
    // settle so that its own count is in them.
    TransactionManager::Ref index;
    st = co_await tm.new_block(BlockKind::index, index);
    if (st) co_return st;
    const uint64_t old = index_root_;
    index_root_ = index.block();
    index_nodes_.assign(1, index_root_);
    if (old) {
      st = tm.dec(old);
      if (st) co_return st;
    }
  }
  // Relocating a bitmap changes counts, maybe in bitmaps not yet moved.
  for (bool moved = true; moved;) {
    moved = false;
    for (uint64_t i = 0; i < nr_bitmaps; ++i) {
      if (relocated_[i] || !(counts_.dirty(i) || bitmap_blocks_[i] == 0)) continue;
      st = co_await relocate_bitmap(tm, i);
      if (st) co_return st;
      moved = true;
    }
    if (kind_ == Kind::data) break;  // its bitmaps' blocks are counted in the metadata map
  }
  st = co_await fill_bitmaps(tm);
  if (st) co_return st;
  if (kind_ == Kind::metadata)
    st = co_await write_metadata_index(tm);
  else
    st = co_await write_data_index(tm);
  if (st) co_return st;
  counts_.committed();
  co_return ok();
}

uint64_t SpaceMap::commit_blocks() const {
  uint64_t dirty = 0;
  for (uint64_t i = 0; i < counts_.nr_bitmaps(); ++i)
    dirty += counts_.dirty(i) || i >= bitmap_blocks_.size() || bitmap_blocks_[i] == 0;
  const uint64_t overflow = counts_.overflow_dirty() ? overflow_nodes_.size() + 2 : 0;
  return dirty * (kind_ == Kind::metadata ? 2 : 1) + index_nodes_.size() + 2 + overflow;
}

SpaceMapRoot SpaceMap::root() const {
  return {counts_.nr_blocks(), counts_.nr_allocated(), index_root_, overflow_root_};
}

}  // namespace dmnbd::thin
