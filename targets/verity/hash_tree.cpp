#include "hash_tree.hpp"

#include <algorithm>
#include <cstring>

namespace dmnbd::verity {
namespace {

// Hash blocks read but not (or no longer) verified that the BlockCache keeps.
constexpr size_t kCleanBlocks = 16;

}  // namespace

HashTree::HashTree(BlockDevice& hash_dev, const VerityGeometry& geometry, const VerityHash& hash,
                   std::vector<uint8_t> root_digest, size_t verified_bytes)
    : geo_(geometry),
      hash_(hash),
      root_(std::move(root_digest)),
      cache_(std::make_unique<BlockCache>(hash_dev, uint32_t{1} << geometry.hash_block_bits,
                                          kCleanBlocks)),
      hash_dev_(hash_dev),
      max_verified_(std::max<size_t>(verified_bytes >> geometry.hash_block_bits,
                                     std::max(geometry.levels, 1u))) {}

bool HashTree::copy_verified(uint64_t hash_block, unsigned level, uint64_t block, uint64_t count,
                             uint8_t* out) {
  std::lock_guard lk(mutex_);
  auto it = verified_.find(hash_block);
  if (it == verified_.end()) return false;
  lru_.splice(lru_.end(), lru_, it->second.lru);
  const std::byte* bytes = it->second.ref.data().data();
  for (uint64_t i = 0; i < count; ++i) {
    uint64_t where = 0;
    unsigned offset = 0;
    geo_.locate(block + i, level, where, offset);
    std::memcpy(out + i * geo_.digest_size, bytes + offset, geo_.digest_size);
  }
  return true;
}

void HashTree::add_verified(uint64_t hash_block, BlockCache::Ref ref) {
  std::vector<BlockCache::Ref> dropped;  // released after the lock: they lock the cache
  std::lock_guard lk(mutex_);
  if (verified_.count(hash_block)) {
    dropped.push_back(std::move(ref));  // verified meanwhile by another read
    return;
  }
  lru_.push_back(hash_block);
  verified_.emplace(hash_block, Verified{std::move(ref), std::prev(lru_.end())});
  while (verified_.size() > max_verified_) {
    auto oldest = verified_.find(lru_.front());
    dropped.push_back(std::move(oldest->second.ref));
    verified_.erase(oldest);
    lru_.pop_front();
  }
}

void HashTree::reset() {
  {
    std::unordered_map<uint64_t, Verified> dropped;
    std::lock_guard lk(mutex_);
    dropped.swap(verified_);
    lru_.clear();
  }
  cache_ = std::make_unique<BlockCache>(hash_dev_, cache_->block_bytes(), kCleanBlocks);
}

size_t HashTree::verified_blocks() const {
  std::lock_guard lk(mutex_);
  return verified_.size();
}

Task<void> HashTree::walk(uint64_t block, uint8_t* out, bool use_unverified, Lookup* result) {
  const unsigned ds = geo_.digest_size;
  uint8_t want[kMaxDigestSize];
  uint8_t real[kMaxDigestSize];
  std::memcpy(want, root_.data(), ds);
  for (int level = static_cast<int>(geo_.levels) - 1; level >= 0; --level) {
    uint64_t hash_block = 0;
    unsigned offset = 0;
    geo_.locate(block, level, hash_block, offset);
    if (copy_verified(hash_block, level, block, 1, want)) continue;

    BlockCache::Ref ref;
    const Status st = co_await cache_->read(hash_block, ref);
    if (st) {
      result->error = st;
      co_return;
    }
    const std::span<std::byte> bytes = ref.data();
    const bool hashed = hash_.digest(bytes, real);
    const bool good = hashed && std::memcmp(real, want, ds) == 0;
    std::memcpy(want, bytes.data() + offset, ds);
    if (good) {
      add_verified(hash_block, std::move(ref));
    } else if (!hashed) {
      result->error = errno_status(ENOMEM);
      co_return;
    } else if (use_unverified) {
      result->ignored.push_back(hash_block);
    } else {
      result->corrupt = true;
      result->corrupt_block = hash_block;
      co_return;
    }
  }
  std::memcpy(out, want, ds);
}

Task<void> HashTree::digests(uint64_t first, uint64_t count, uint8_t* out, bool use_unverified,
                             Lookup* result) {
  const unsigned ds = geo_.digest_size;
  const unsigned bits = geo_.hash_per_block_bits;
  uint64_t done = 0;
  while (done < count) {
    const uint64_t block = first + done;
    uint8_t* at = out + done * ds;
    if (geo_.levels == 0) {  // one data block: its digest is the root
      std::memcpy(at, root_.data(), ds);
      ++done;
      continue;
    }
    // The blocks from here that share this block's level-0 hash block.
    const uint64_t group_end = ((block >> bits) + 1) << bits;
    const uint64_t n = std::min(count - done, group_end - block);
    uint64_t hash_block = 0;
    unsigned offset = 0;
    geo_.locate(block, 0, hash_block, offset);
    // The fast path: the level-0 block is verified already.
    if (copy_verified(hash_block, 0, block, n, at)) {
      done += n;
      continue;
    }
    co_await walk(block, at, use_unverified, result);
    if (result->error || result->corrupt) break;
    ++done;
    // The walk verified the level-0 block for the rest of the group, unless
    // it was taken unverified (then each block checks it again, as the
    // kernel's does).
    if (n > 1 && copy_verified(hash_block, 0, block + 1, n - 1, at + ds)) done += n - 1;
  }
  result->resolved = done;
}

}  // namespace dmnbd::verity
