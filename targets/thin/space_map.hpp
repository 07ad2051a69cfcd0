// A space map on the metadata device (dm-space-map-disk.c for the data
// device's blocks, dm-space-map-metadata.c for the metadata device's own):
// the counts live in memory (RefCounts) and go to disk at commit as the
// kernel lays them out: bitmap blocks, an index of them (one index block for
// the metadata space map, a btree for the data one), and a btree of the
// counts of 3 and more.
//
// A commit writes each changed bitmap to a new block and builds a new index
// and, if it changed, a new overflow tree; the old blocks are freed. For the
// metadata space map those new blocks are counted in the map being
// written, which can change more bitmaps, so it repeats until every changed
// bitmap has its new block (the kernel gets the same result with a ring of
// deferred operations; only the result is on disk).
#pragma once
#include <cstdint>
#include <vector>

#include "metadata_format.hpp"
#include "ref_counts.hpp"
#include "transaction_manager.hpp"

namespace dmnbd::thin {

class SpaceMap {
 public:
  enum class Kind { metadata, data };

  explicit SpaceMap(Kind kind) : kind_(kind) {}

  RefCounts& counts() { return counts_; }
  const RefCounts& counts() const { return counts_; }

  // Reads the map a superblock's root names. EILSEQ if it is inconsistent.
  Task<Status> open(TransactionManager& tm, const SpaceMapRoot& root);
  // Writes what changed since the last commit (or everything, for a map
  // never written); the counts then become the committed ones.
  Task<Status> commit(TransactionManager& tm);
  // At most the metadata blocks the next commit() takes: a block for each
  // changed bitmap (twice, for the metadata map: moving one can change
  // another), the index anew, the overflow tree anew if it changed.
  uint64_t commit_blocks() const;
  // The root for the superblock, after commit().
  SpaceMapRoot root() const;

 private:
  Task<Status> read_bitmap(TransactionManager& tm, uint64_t index, uint64_t block);
  Task<Status> write_overflow(TransactionManager& tm);
  Task<Status> write_data_index(TransactionManager& tm);
  Task<Status> write_metadata_index(TransactionManager& tm);
  Task<Status> relocate_bitmap(TransactionManager& tm, uint64_t index);
  Task<Status> fill_bitmaps(TransactionManager& tm);
  Status drop(TransactionManager& tm, std::vector<uint64_t>& blocks);

  const Kind kind_;
  RefCounts counts_;
  std::vector<uint64_t> bitmap_blocks_;  // per bitmap; 0 until written
  std::vector<bool> relocated_;          // given a new block this commit
  uint64_t index_root_ = 0;
  std::vector<uint64_t> index_nodes_;
  uint64_t overflow_root_ = 0;
  std::vector<uint64_t> overflow_nodes_;
};

}  // namespace dmnbd::thin
