// The hash tree of one verity target: digests of data blocks, each taken
// from a hash block that was itself checked against its parent, up to the
// root digest. Hash blocks are read through a BlockCache (dm-bufio); a block
// whose digest matched is kept, with its bytes, in a bounded set of verified
// blocks (the kernel's buffer_aux.hash_verified), so that once the tree is
// warm a data block costs one lookup of its level-0 block and no hashing of
// metadata. A verified block leaves the set oldest first; its bytes are
// checked again the next time they are needed.
#pragma once
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "dmnbd/block_cache.hpp"
#include "verity_geometry.hpp"
#include "verity_hash.hpp"

namespace dmnbd::verity {

class HashTree {
 public:
  // Up to `verified_bytes` of verified hash blocks stay in memory (at least
  // one block per level, so that a whole path fits).
  HashTree(BlockDevice& hash_dev, const VerityGeometry& geometry, const VerityHash& hash,
           std::vector<uint8_t> root_digest, size_t verified_bytes);

  struct Lookup {
    uint64_t resolved = 0;  // digests written, from the first block on
    Status error;           // a hash block could not be read (resolved stops there)
    // A hash block whose digest did not match, where resolved stops (when
    // the caller does not take unverified digests).
    bool corrupt = false;
    uint64_t corrupt_block = 0;
    // With use_unverified: the hash blocks that did not match and were used
    // anyway, in the order met (ignore_corruption).
    std::vector<uint64_t> ignored;

    void clear() {
      resolved = 0;
      error = {};
      corrupt = false;
      corrupt_block = 0;
      ignored.clear();
    }
  };

  // verity_hash_for_block() for data blocks [first, first + count): their
  // digests into out[i * digest_size]. Stops at the first block whose path
  // fails unless `use_unverified` takes a mismatching hash block's digests.
  Task<void> digests(uint64_t first, uint64_t count, uint8_t* out, bool use_unverified,
                     Lookup* result);

  // Forgets every verification and every cached hash block, so that they
  // are read and checked again (postsuspend's dm_bufio_client_reset()).
  // Only while no lookup runs.
  void reset();

  size_t verified_blocks() const;

 private:
  // The digests of `count` data blocks from `block` at `level`, all in hash
  // block `hash_block`, if it is verified.
  bool copy_verified(uint64_t hash_block, unsigned level, uint64_t block, uint64_t count,
                     uint8_t* out);
  void add_verified(uint64_t hash_block, BlockCache::Ref ref);
  // The whole path of one data block, from the root down.
  Task<void> walk(uint64_t block, uint8_t* out, bool use_unverified, Lookup* result);

  struct Verified {
    BlockCache::Ref ref;
    std::list<uint64_t>::iterator lru;
  };

  const VerityGeometry& geo_;
  const VerityHash& hash_;
  const std::vector<uint8_t> root_;
  std::unique_ptr<BlockCache> cache_;
  BlockDevice& hash_dev_;
  const size_t max_verified_;
  mutable std::mutex mutex_;  // verified_ and lru_
  std::unordered_map<uint64_t, Verified> verified_;
  std::list<uint64_t> lru_;  // oldest first
};

}  // namespace dmnbd::verity
