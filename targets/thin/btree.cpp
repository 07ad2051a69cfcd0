#include "btree.hpp"

#include <algorithm>
#include <cstring>
#include <unordered_set>

#include "btree_node.hpp"

namespace dmnbd::thin {
namespace {

using Ref = TransactionManager::Ref;

// u64 keys with at least 84 entries a node never need this many levels; a
// walk that goes deeper is looping through corrupt metadata.
constexpr int kMaxDepth = 16;

Status corrupt() {
  return errno_status(EILSEQ);
}

}  // namespace

BTree::BTree(TransactionManager& tm, const ValueType& type) : tm_(tm), type_(type) {}

uint32_t BTree::max_leaf_entries() const {
  return node::max_entries_for(type_.size);
}

Task<Status> BTree::read_node(uint64_t block, bool& leaf, Ref& out) {
  Status st = co_await tm_.read(block, BlockKind::btree_node, out);
  if (st) co_return st;
  const NodeView n(out.data());
  if (!n.sane(type_.size)) {
    out.release();
    co_return corrupt();
  }
  leaf = n.leaf();
  co_return ok();
}

Status BTree::inc_children(std::span<const std::byte> bytes) {
  const NodeView n(std::span<std::byte>(const_cast<std::byte*>(bytes.data()), bytes.size()));
  for (uint32_t i = 0; i < n.nr(); ++i) {
    Status st;
    if (!n.leaf() || type_.subtree)
      st = tm_.inc(get_le64(n.value(i)));
    else if (type_.inc)
      st = type_.inc(n.value(i));
    if (st) return st;
  }
  return ok();
}

Task<Status> BTree::shadow_node(uint64_t block, Ref& out) {
  bool shared = false;
  Status st = co_await tm_.shadow(block, BlockKind::btree_node, out, shared);
  if (st) co_return st;
  if (!NodeView(out.data()).sane(type_.size)) co_return corrupt();
  if (shared) st = inc_children(out.data());
  co_return st;
}

Task<Status> BTree::drop_value(const std::byte* value) {
  if (type_.subtree) {
    BTree subtree(tm_, *type_.subtree);
    co_return co_await subtree.del(get_le64(value));
  }
  if (type_.dec) co_return type_.dec(value);
  co_return ok();
}

Task<Status> BTree::create(uint64_t& root) {
  Ref ref;
  Status st = co_await tm_.new_block(BlockKind::btree_node, ref);
  if (st) co_return st;
  NodeView(ref.data()).init(true, type_.size);
  root = ref.block();
  co_return ok();
}

Task<Status> BTree::lookup(uint64_t root, uint64_t key, std::byte* value, bool& found) {
  found = false;
  uint64_t block = root;
  for (int depth = 0; depth < kMaxDepth; ++depth) {
    Ref ref;
    bool leaf = false;
    Status st = co_await read_node(block, leaf, ref);
    if (st) co_return st;
    const NodeView n(ref.data());
    const int i = n.lower_bound(key);
    if (i < 0) co_return ok();
    if (leaf) {
      if (n.key(i) == key) {
        std::memcpy(value, n.value(i), type_.size);
        found = true;
      }
      co_return ok();
    }
    block = n.child(i);
  }
  co_return corrupt();
}

// The first entry a walk from `key` meets.
Task<Status> BTree::lookup_next(uint64_t root, uint64_t key, uint64_t& found_key, std::byte* value,
                                bool& found) {
  found = false;
  const Visitor first = [&](uint64_t k, const std::byte* v) {
    found_key = k;
    std::memcpy(value, v, type_.size);
    found = true;
    return false;
  };
  co_return co_await walk(root, first, key);
}

Task<Status> BTree::highest_key(uint64_t root, uint64_t& key, bool& found) {
  found = false;
  uint64_t block = root;
  for (int depth = 0; depth < kMaxDepth; ++depth) {
    Ref ref;
    bool leaf = false;
    Status st = co_await read_node(block, leaf, ref);
    if (st) co_return st;
    const NodeView n(ref.data());
    if (n.nr() == 0) co_return ok();
    if (leaf) {
      key = n.key(n.nr() - 1);
      found = true;
      co_return ok();
    }
    block = n.child(n.nr() - 1);
  }
  co_return corrupt();
}

// btree_split_beneath(): a full root keeps its block and becomes the parent
// of two new nodes holding half its entries each.
Task<Status> BTree::split_beneath(Ref& root) {
  NodeView r(root.data());
  Ref left, right;
  Status st = co_await tm_.new_block(BlockKind::btree_node, left);
  if (st) co_return st;
  st = co_await tm_.new_block(BlockKind::btree_node, right);
  if (st) co_return st;
  NodeView l(left.data()), rt(right.data());
  l.init(r.leaf(), r.value_size(), r.max());
  rt.init(r.leaf(), r.value_size(), r.max());
  const uint32_t nr = r.nr(), half = nr / 2;
  l.append_from(r, 0, half);
  rt.append_from(r, half, nr - half);
  r.init(false, 8);
  std::byte child[8];
  put_le64(child, left.block());
  r.insert_at(0, l.key(0), child);
  put_le64(child, right.block());
  r.insert_at(1, rt.key(0), child);
  co_return ok();
}

// A full child gets a new right sibling with its upper half; `child` ends
// as whichever of the two `key` belongs in. The parent has room (full nodes
// are split on the way down).
Task<Status> BTree::split_child(Ref& parent, uint32_t index, Ref& child, uint64_t key) {
  NodeView c(child.data());
  Ref sibling;
  Status st = co_await tm_.new_block(BlockKind::btree_node, sibling);
  if (st) co_return st;
  NodeView s(sibling.data());
  s.init(c.leaf(), c.value_size(), c.max());
  const uint32_t nr = c.nr(), half = nr / 2;
  s.append_from(c, half, nr - half);
  c.set_nr(half);
  std::byte ptr[8];
  put_le64(ptr, sibling.block());
  NodeView(parent.data()).insert_at(index + 1, s.key(0), ptr);
  if (key >= s.key(0)) child = std::move(sibling);
  co_return ok();
}

Task<Status> BTree::insert(uint64_t& root, uint64_t key, const std::byte* value, bool* inserted) {
  Ref node;
  Status st = co_await shadow_node(root, node);
  if (st) co_return st;
  root = node.block();
  if (NodeView(node.data()).full()) {
    st = co_await split_beneath(node);
    if (st) co_return st;
  }
  for (int depth = 0; depth < kMaxDepth; ++depth) {
    NodeView n(node.data());
    int i = n.lower_bound(key);
    if (n.leaf()) {
      if (i >= 0 && n.key(static_cast<uint32_t>(i)) == key) {
        if (inserted) *inserted = false;
        std::byte* slot = n.value(static_cast<uint32_t>(i));
        const bool same =
            type_.equal ? type_.equal(slot, value) : std::memcmp(slot, value, type_.size) == 0;
        std::vector<std::byte> old(slot, slot + type_.size);
        std::memcpy(slot, value, type_.size);
        if (same) co_return ok();
        co_return co_await drop_value(old.data());
      }
      n.insert_at(static_cast<uint32_t>(i + 1), key, value);
      if (inserted) *inserted = true;
      co_return ok();
    }
    if (i < 0) {  // a new smallest key: the first child's bound comes down to it
      i = 0;
      n.set_key(0, key);
    }
    Ref child;
    st = co_await shadow_node(n.child(static_cast<uint32_t>(i)), child);
    if (st) co_return st;
    n.set_child(static_cast<uint32_t>(i), child.block());
    if (NodeView(child.data()).full()) {
      st = co_await split_child(node, static_cast<uint32_t>(i), child, key);
      if (st) co_return st;
    }
    node = std::move(child);
  }
  co_return corrupt();
}

Task<Status> BTree::remove(uint64_t& root, uint64_t key, bool* removed) {
  std::vector<std::byte> scratch(type_.size);
  bool found = false;
  Status st = co_await lookup(root, key, scratch.data(), found);
  if (removed) *removed = found;
  if (st || !found) co_return st;
  bool done = false;
  uint64_t new_root = root;
  st = co_await remove_from(root, key, new_root, done);
  if (st) co_return st;
  root = new_root;
  // An internal root left with one child gives way to it.
  for (int depth = 0; depth < kMaxDepth; ++depth) {
    Ref ref;
    bool leaf = false;
    st = co_await read_node(root, leaf, ref);
    if (st) co_return st;
    const NodeView n(ref.data());
    if (leaf || n.nr() != 1) co_return ok();
    const uint64_t only_child = n.child(0);
    ref.release();
    st = tm_.dec(root);  // the child's holder moves from this node to the caller
    if (st) co_return st;
    root = only_child;
  }
  co_return corrupt();
}

Task<Status> BTree::remove_from(uint64_t block, uint64_t key, uint64_t& new_block, bool& removed) {
  removed = false;
  Ref node;
  Status st = co_await shadow_node(block, node);
  if (st) co_return st;
  new_block = node.block();
  NodeView n(node.data());
  const int i = n.lower_bound(key);
  if (i < 0) co_return ok();
  const auto at = static_cast<uint32_t>(i);
  if (n.leaf()) {
    if (n.key(at) != key) co_return ok();
    std::vector<std::byte> old(n.value(at), n.value(at) + type_.size);
    n.erase_at(at);
    removed = true;
    co_return co_await drop_value(old.data());
  }
  uint64_t child = n.child(at);
  st = co_await remove_from(child, key, child, removed);
  if (st) co_return st;
  n.set_child(at, child);
  if (!removed) co_return ok();
  co_return co_await rebalance_child(node, at);
}

// A child left with fewer than a third of its entries takes a neighbour's
// entries: all of them if they fit in one node (the neighbour's block is
// freed), else half of the two nodes' entries each.
Task<Status> BTree::rebalance_child(Ref& parent, uint32_t index) {
  NodeView p(parent.data());
  if (p.nr() < 2) co_return ok();
  Ref child;
  Status st = co_await shadow_node(p.child(index), child);
  if (st) co_return st;
  p.set_child(index, child.block());
  if (NodeView(child.data()).nr() >= NodeView(child.data()).max() / 3) co_return ok();
  const uint32_t li = index > 0 ? index - 1 : index, ri = li + 1;
  Ref other;
  const uint32_t other_index = li == index ? ri : li;
  st = co_await shadow_node(p.child(other_index), other);
  if (st) co_return st;
  p.set_child(other_index, other.block());
  Ref& left_ref = li == index ? child : other;
  Ref& right_ref = li == index ? other : child;
  NodeView l(left_ref.data()), r(right_ref.data());
  const uint32_t total = l.nr() + r.nr();
  if (total <= std::min(l.max(), r.max())) {
    l.append_from(r, 0, r.nr());
    p.erase_at(ri);
    const uint64_t freed = right_ref.block();
    right_ref.release();
    co_return tm_.dec(freed);  // its entries now belong to the left node
  }
  const uint32_t want_left = total / 2;
  if (l.nr() > want_left) {
    r.prepend_from(l, l.nr() - want_left);
  } else {
    const uint32_t moving = want_left - l.nr();
    l.append_from(r, 0, moving);
    r.drop_front(moving);
  }
  p.set_key(ri, r.key(0));
  co_return ok();
}

Task<Status> BTree::remove_range(uint64_t& root, uint64_t begin, uint64_t end, uint64_t& removed) {
  removed = 0;
  std::vector<std::byte> scratch(type_.size);
  while (begin < end) {
    uint64_t key = 0;
    bool found = false;
    Status st = co_await lookup_next(root, begin, key, scratch.data(), found);
    if (st) co_return st;
    if (!found || key >= end) break;
    bool gone = false;
    st = co_await remove(root, key, &gone);
    if (st) co_return st;
    removed += gone;
    begin = key + 1;
  }
  co_return ok();
}

Task<Status> BTree::del(uint64_t root) {
  co_return co_await del_node(root);
}

Task<Status> BTree::del_node(uint64_t block) {
  uint32_t count = 0;
  Status st = tm_.meta().count(block, count);
  if (st) co_return st;
  if (count > 1) co_return tm_.dec(block);
  Ref ref;
  bool leaf = false;
  st = co_await read_node(block, leaf, ref);
  if (st) co_return st;
  const NodeView n(ref.data());
  const uint32_t nr = n.nr();
  std::vector<std::byte> values(n.value(0), n.value(0) + size_t{nr} * n.value_size());
  ref.release();
  for (uint32_t i = 0; i < nr; ++i) {
    const std::byte* v = values.data() + size_t{i} * (leaf ? type_.size : 8);
    if (!leaf) {
      st = co_await del_node(get_le64(v));
    } else {
      st = co_await drop_value(v);
    }
    if (st) co_return st;
  }
  co_return tm_.dec(block);
}

Task<Status> BTree::build(std::span<const uint64_t> keys, std::span<const std::byte> values,
                          uint64_t& root) {
  if (keys.empty()) co_return co_await create(root);
  std::vector<uint64_t> level_keys(keys.begin(), keys.end());
  std::vector<std::byte> level_values(values.begin(), values.end());
  bool leaves = true;
  for (;;) {
    const uint32_t value_size = leaves ? type_.size : 8;
    const uint64_t n = level_keys.size();
    const uint64_t max = node::max_entries_for(value_size);
    const uint64_t nodes = (n + max - 1) / max;
    std::vector<uint64_t> up_keys;
    std::vector<std::byte> up_values;
    uint64_t next = 0;
    for (uint64_t k = 0; k < nodes; ++k) {
      // Even shares: with several nodes each gets over half of max.
      const auto take = static_cast<uint32_t>(n / nodes + (k < n % nodes));
      Ref ref;
      Status st = co_await tm_.new_block(BlockKind::btree_node, ref);
      if (st) co_return st;
      NodeView node(ref.data());
      node.init(leaves, value_size);
      std::memcpy(node.value(0), level_values.data() + next * value_size,
                  size_t{take} * value_size);
      for (uint32_t j = 0; j < take; ++j) node.set_key(j, level_keys[next + j]);
      node.set_nr(take);
      up_keys.push_back(level_keys[next]);
      std::byte ptr[8];
      put_le64(ptr, ref.block());
      up_values.insert(up_values.end(), ptr, ptr + 8);
      next += take;
    }
    if (nodes == 1) {
      root = get_le64(up_values.data());
      co_return ok();
    }
    level_keys = std::move(up_keys);
    level_values = std::move(up_values);
    leaves = false;
  }
}

Task<Status> BTree::walk(uint64_t root, const Visitor& visit, uint64_t from) {
  struct Level {
    uint64_t block;
    int depth;
  };
  std::vector<Level> todo;
  todo.push_back({root, 0});
  while (!todo.empty()) {
    const Level at = todo.back();
    todo.pop_back();
    if (at.depth >= kMaxDepth) co_return corrupt();
    Ref ref;
    bool leaf = false;
    Status st = co_await read_node(at.block, leaf, ref);
    if (st) co_return st;
    const NodeView n(ref.data());
    const auto first = static_cast<uint32_t>(std::max(0, n.lower_bound(from)));
    if (leaf) {
      for (uint32_t j = first; j < n.nr(); ++j)
        if (n.key(j) >= from && !visit(n.key(j), n.value(j))) co_return ok();
      continue;
    }
    for (uint32_t j = n.nr(); j-- > first;) todo.push_back({n.child(j), at.depth + 1});
  }
  co_return ok();
}

Task<Status> BTree::nodes(uint64_t root, std::vector<uint64_t>& out) {
  std::vector<std::pair<uint64_t, int>> todo;
  todo.emplace_back(root, 0);
  std::unordered_set<uint64_t> seen;
  while (!todo.empty()) {
    const auto [block, depth] = todo.back();
    todo.pop_back();
    if (depth >= kMaxDepth) co_return corrupt();
    if (!seen.insert(block).second) continue;
    out.push_back(block);
    Ref ref;
    bool leaf = false;
    Status st = co_await read_node(block, leaf, ref);
    if (st) co_return st;
    if (leaf) continue;
    const NodeView n(ref.data());
    for (uint32_t j = 0; j < n.nr(); ++j) todo.emplace_back(n.child(j), depth + 1);
  }
  co_return ok();
}

}  // namespace dmnbd::thin
