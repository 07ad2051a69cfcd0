// One btree node's bytes (struct btree_node): a 32-byte header, then
// max_entries keys, then max_entries values (after the key array's full
// capacity, not after nr_entries).
#pragma once
#include <cstring>
#include <span>

#include "metadata_format.hpp"

namespace dmnbd::thin {

class NodeView {
 public:
  explicit NodeView(std::span<std::byte> bytes) : b_(bytes.data()) {}

  bool leaf() const { return flags() == node::kLeaf; }
  uint32_t flags() const { return get_le32(b_ + node::flags); }
  uint32_t nr() const { return get_le32(b_ + node::nr_entries); }
  uint32_t max() const { return get_le32(b_ + node::max_entries); }
  uint32_t value_size() const { return get_le32(b_ + node::value_size); }
  bool full() const { return nr() >= max(); }

  // An empty node; max_entries from the formula unless given (a node split
  // off another keeps that one's).
  void init(bool leaf, uint32_t value_size, uint32_t max_entries = 0) {
    put_le32(b_ + node::flags, leaf ? node::kLeaf : node::kInternal);
    put_le32(b_ + node::nr_entries, 0);
    put_le32(b_ + node::max_entries, max_entries ? max_entries : node::max_entries_for(value_size));
    put_le32(b_ + node::value_size, value_size);
    put_le32(b_ + 28, 0);
  }
  void set_nr(uint32_t n) { put_le32(b_ + node::nr_entries, n); }

  uint64_t key(uint32_t i) const { return get_le64(b_ + node::header_bytes + 8 * size_t{i}); }
  void set_key(uint32_t i, uint64_t k) { put_le64(b_ + node::header_bytes + 8 * size_t{i}, k); }
  std::byte* value(uint32_t i) const {
    return b_ + node::header_bytes + 8 * size_t{max()} + size_t{value_size()} * i;
  }
  uint64_t child(uint32_t i) const { return get_le64(value(i)); }
  void set_child(uint32_t i, uint64_t block) { put_le64(value(i), block); }

  // The index of the greatest key <= k, -1 if every key is greater.
  int lower_bound(uint64_t k) const {
    int lo = -1, hi = static_cast<int>(nr());  // key(lo) <= k < key(hi)
    while (hi - lo > 1) {
      const int mid = (lo + hi) / 2;
      if (key(static_cast<uint32_t>(mid)) <= k)
        lo = mid;
      else
        hi = mid;
    }
    return lo;
  }

  // Inserts at index i, shifting the rest up (the caller made room).
  void insert_at(uint32_t i, uint64_t k, const std::byte* v) {
    const uint32_t n = nr(), vs = value_size();
    std::memmove(key_ptr(i + 1), key_ptr(i), 8 * size_t{n - i});
    std::memmove(value(i + 1), value(i), size_t{vs} * (n - i));
    set_key(i, k);
    std::memcpy(value(i), v, vs);
    set_nr(n + 1);
  }
  void erase_at(uint32_t i) {
    const uint32_t n = nr(), vs = value_size();
    std::memmove(key_ptr(i), key_ptr(i + 1), 8 * size_t{n - i - 1});
    std::memmove(value(i), value(i + 1), size_t{vs} * (n - i - 1));
    set_nr(n - 1);
  }
  // Copies `count` entries of `from` starting at `first` to this node's end.
  void append_from(const NodeView& from, uint32_t first, uint32_t count) {
    const uint32_t n = nr(), vs = value_size();
    std::memcpy(key_ptr(n), from.key_ptr(first), 8 * size_t{count});
    std::memcpy(value(n), from.value(first), size_t{vs} * count);
    set_nr(n + count);
  }
  // Moves `count` entries of `from`'s end to this node's front.
  void prepend_from(NodeView& from, uint32_t count) {
    const uint32_t n = nr(), vs = value_size(), first = from.nr() - count;
    std::memmove(key_ptr(count), key_ptr(0), 8 * size_t{n});
    std::memmove(value(count), value(0), size_t{vs} * n);
    std::memcpy(key_ptr(0), from.key_ptr(first), 8 * size_t{count});
    std::memcpy(value(0), from.value(first), size_t{vs} * count);
    set_nr(n + count);
    from.set_nr(first);
  }
  // Drops the first `count` entries.
  void drop_front(uint32_t count) {
    const uint32_t n = nr(), vs = value_size();
    std::memmove(key_ptr(0), key_ptr(count), 8 * size_t{n - count});
    std::memmove(value(0), value(count), size_t{vs} * (n - count));
    set_nr(n - count);
  }

  // What btree_node_validator and thin_check demand of a node's header.
  bool sane(uint32_t expected_leaf_value_size) const {
    if (flags() != node::kLeaf && flags() != node::kInternal) return false;
    const uint32_t vs = value_size();
    if (vs != (leaf() ? expected_leaf_value_size : 8)) return false;
    if (size_t{max()} * (8 + vs) + node::header_bytes > kMetadataBlockBytes) return false;
    return nr() <= max();
  }

 private:
  std::byte* key_ptr(uint32_t i) const { return b_ + node::header_bytes + 8 * size_t{i}; }
  std::byte* b_;
};

}  // namespace dmnbd::thin
