// Copy-on-write B+trees of u64 keys and fixed-size values in metadata
// blocks (persistent-data's dm-btree.c, in the node format of
// metadata_format.hpp), with reference counting of shared nodes.
//
// A tree is named by its root block. Every change shadows the path it
// walks (TransactionManager::shadow), so the caller gets a new root back;
// nodes that another tree shares are copied, and the copy becomes one more
// holder of each child or value it points at. Nodes other than a root keep
// between a third of max_entries and max_entries entries, as thin_check
// requires; the split and merge policy is this file's own (the format
// leaves it open), not the kernel's.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "transaction_manager.hpp"

namespace dmnbd::thin {

// What a tree's values are, for reference counting.
struct ValueType {
  uint32_t size = 8;
  // A value gains a holder (a shared leaf was copied) or loses one (it was
  // removed, overwritten with different bytes, or its leaf was freed).
  // Empty: the values hold nothing.
  std::function<Status(const std::byte*)> inc;
  std::function<Status(const std::byte*)> dec;
  // Whether an overwrite keeps the old value's holder (empty: same bytes).
  std::function<bool(const std::byte*, const std::byte*)> equal;
  // Set when each value is the root of another tree of this type (the
  // mapping tree's top level): holding one holds that tree's root block,
  // and dropping the last holder deletes that tree.
  const ValueType* subtree = nullptr;
};

class BTree {
 public:
  BTree(TransactionManager& tm, const ValueType& type);

  uint32_t max_leaf_entries() const;

  // A new empty tree (one empty leaf).
  Task<Status> create(uint64_t& root);
  // found = false when the key is not there.
  Task<Status> lookup(uint64_t root, uint64_t key, std::byte* value, bool& found);
  // The smallest key >= `key` (dm_btree_lookup_next).
  Task<Status> lookup_next(uint64_t root, uint64_t key, uint64_t& found_key, std::byte* value,
                           bool& found);
  // The largest key (dm_btree_find_highest_key); found = false if empty.
  Task<Status> highest_key(uint64_t root, uint64_t& key, bool& found);
  // Inserts or overwrites; `value` comes with its holder already counted.
  Task<Status> insert(uint64_t& root, uint64_t key, const std::byte* value,
                      bool* inserted = nullptr);
  // Removes the key if it is there (the value loses its holder).
  Task<Status> remove(uint64_t& root, uint64_t key, bool* removed = nullptr);
  // Every key in [begin, end); `removed` counts them.
  Task<Status> remove_range(uint64_t& root, uint64_t begin, uint64_t end, uint64_t& removed);
  // dm_btree_del(): drops this holder of the tree; nodes nobody else holds
  // are freed and their values lose a holder.
  Task<Status> del(uint64_t root);

  // A new tree holding `entries` (ascending keys; values of type().size
  // bytes, concatenated), built bottom-up; values are taken as counted.
  Task<Status> build(std::span<const uint64_t> keys, std::span<const std::byte> values,
                     uint64_t& root);

  // Leaf entries in key order, from `from` on; the visitor returns false to stop.
  using Visitor = std::function<bool(uint64_t key, const std::byte* value)>;
  Task<Status> walk(uint64_t root, const Visitor& visit, uint64_t from = 0);
  // Every node block of the tree (not of its subtrees), each once.
  Task<Status> nodes(uint64_t root, std::vector<uint64_t>& out);

  const ValueType& type() const { return type_; }

 private:
  Task<Status> read_node(uint64_t block, bool& leaf, TransactionManager::Ref& out);
  Task<Status> shadow_node(uint64_t block, TransactionManager::Ref& out);
  Status inc_children(std::span<const std::byte> node);
  Task<Status> drop_value(const std::byte* value);
  Task<Status> split_beneath(TransactionManager::Ref& root);
  Task<Status> split_child(TransactionManager::Ref& parent, uint32_t index,
                           TransactionManager::Ref& child, uint64_t key);
  Task<Status> remove_from(uint64_t block, uint64_t key, uint64_t& new_block, bool& removed);
  Task<Status> rebalance_child(TransactionManager::Ref& parent, uint32_t index);
  Task<Status> del_node(uint64_t block);

  TransactionManager& tm_;
  const ValueType& type_;
};

}  // namespace dmnbd::thin
