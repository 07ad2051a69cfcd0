#include "transaction_manager.hpp"

#include <algorithm>
#include <cstring>

#include <isa-l/crc.h>

namespace dmnbd::thin {

uint32_t block_checksum(std::span<const std::byte> block, BlockKind kind) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(block.data());
  return crc32_iscsi(const_cast<unsigned char*>(bytes + 4), static_cast<int>(block.size() - 4),
                     0xffffffffu) ^
         static_cast<uint32_t>(kind);
}

void seal_block(std::span<std::byte> block, BlockKind kind) {
  put_le32(block.data(), block_checksum(block, kind));
}

bool checksum_matches(std::span<const std::byte> block, BlockKind kind) {
  return get_le32(block.data()) == block_checksum(block, kind);
}

Task<Status> TransactionManager::read(uint64_t block, BlockKind kind, Ref& out) {
  Status st = co_await cache_.read(block, out);
  if (st) co_return st;
  if (fresh_.count(block)) co_return ok();
  if (block < checked_.size() && checked_[block]) co_return ok();
  const auto bytes = out.data();
  if (!checksum_matches(bytes, kind) || get_le64(bytes.data() + 8) != block) {
    out.release();
    co_return errno_status(EILSEQ);
  }
  if (checked_.size() <= block) checked_.resize(std::max<uint64_t>(block + 1, meta_.nr_blocks()));
  checked_[block] = true;
  co_return ok();
}

Task<Status> TransactionManager::new_block(BlockKind kind, Ref& out) {
  const auto block = meta_.allocate();
  if (!block) co_return errno_status(ENOSPC);
  Status st = co_await cache_.new_block(*block, out);
  if (st) {
    (void)meta_.dec(*block);
    co_return st;
  }
  std::memset(out.data().data(), 0, out.data().size());
  put_le64(out.data().data() + 8, *block);
  out.mark_dirty();
  fresh_[*block] = kind;
  co_return ok();
}

Task<Status> TransactionManager::shadow(uint64_t block, BlockKind kind, Ref& out, bool& shared) {
  uint32_t count = 0;
  Status st = meta_.count(block, count);
  if (st) co_return st;
  shared = count > 1;
  if (!shared && fresh_.count(block)) {
    st = co_await cache_.read(block, out);
    if (!st) out.mark_dirty();
    co_return st;
  }
  Ref old;
  st = co_await read(block, kind, old);
  if (st) co_return st;
  st = co_await new_block(kind, out);
  if (st) co_return st;
  const uint64_t location = out.block();
  std::memcpy(out.data().data(), old.data().data(), out.data().size());
  put_le64(out.data().data() + 8, location);
  old.release();
  co_return dec(block);
}

Status TransactionManager::dec(uint64_t block) {
  Status st = meta_.dec(block);
  if (!st && meta_.count(block) == 0) fresh_.erase(block);
  return st;
}

Task<Status> TransactionManager::commit(const std::function<void(std::span<std::byte>)>& fill) {
  for (const auto& [block, kind] : fresh_) {
    Ref ref;
    Status st = co_await cache_.read(block, ref);
    if (st) co_return st;
    put_le64(ref.data().data() + 8, block);
    seal_block(ref.data(), kind);
    ref.mark_dirty();
  }
  Ref super;
  Status st = co_await cache_.read(0, super);
  if (st) co_return st;
  fill(super.data());
  put_le64(super.data().data() + superblock::blocknr, 0);
  seal_block(super.data(), BlockKind::superblock);
  super.mark_dirty();
  st = co_await cache_.commit(super);
  if (st) co_return st;
  if (checked_.size() < meta_.nr_blocks()) checked_.resize(meta_.nr_blocks());
  for (const auto& [block, kind] : fresh_) checked_[block] = true;
  fresh_.clear();
  co_return ok();
}

}  // namespace dmnbd::thin
