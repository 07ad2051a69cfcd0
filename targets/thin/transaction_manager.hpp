// Copy-on-write transactions over the metadata device (persistent-data's
// dm-transaction-manager.c and dm-block-manager.c).
//
// Every block the committed superblock reaches stays as it is on disk until
// the next commit: a change to one first shadows it into a block that was
// free at the last commit, and the shadow is changed in place from then on
// within the transaction. Blocks are read through a BlockCache and checked
// (checksum and own location); blocks made this transaction are sealed (location and checksum
// written) at commit, before the cache writes them out. A block's checksum is checked once, when it
// is first read.
#pragma once
#include <cstdint>
#include <functional>
#include <unordered_map>
#include <vector>

#include "dmnbd/block_cache.hpp"
#include "metadata_format.hpp"
#include "ref_counts.hpp"

namespace dmnbd::thin {

class TransactionManager {
 public:
  using Ref = BlockCache::Ref;

  // `meta` holds the metadata space map's counts; both outlive this.
  TransactionManager(BlockCache& cache, RefCounts& meta) : cache_(cache), meta_(meta) {}

  RefCounts& meta() { return meta_; }
  BlockCache& cache() { return cache_; }

  // A block to read: EILSEQ if its checksum or location is wrong.
  Task<Status> read(uint64_t block, BlockKind kind, Ref& out);
  // A fresh zeroed block with count 1 (ENOSPC when the metadata is full).
  Task<Status> new_block(BlockKind kind, Ref& out);
  // A writable copy of `block`: the block itself if this transaction made it
  // and nothing else refers to it, else a new block with its bytes (the old
  // one loses a reference). `shared` says the old one had more than one
  // reference, so that the copy's children or values each gained one.
  Task<Status> shadow(uint64_t block, BlockKind kind, Ref& out, bool& shared);

  Status inc(uint64_t block) { return meta_.inc(block); }
  // A block this transaction made that drops to 0 is no longer written.
  Status dec(uint64_t block);
  bool made_this_transaction(uint64_t block) const { return fresh_.count(block) != 0; }

  // Seals every block made this transaction; then the superblock (block 0,
  // changed in place by `fill`) goes out after everything else is durable.
  Task<Status> commit(const std::function<void(std::span<std::byte>)>& fill);
  // Forgets the transaction's blocks (an abort: the caller reopens).
  void abort() { fresh_.clear(); }

 private:
  BlockCache& cache_;
  RefCounts& meta_;
  std::unordered_map<uint64_t, BlockKind> fresh_;  // made this transaction
  std::vector<bool> checked_;  // blocks whose on-disk checksum was verified once
};

}  // namespace dmnbd::thin
