#include "dmnbd/block_cache.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <optional>
#include <stdexcept>

#include <boost/asio/experimental/awaitable_operators.hpp>

#include "devices/crash_device.hpp"
#include "devices/memory_device.hpp"
#include "devices/recording_device.hpp"
#include "test_support.hpp"

namespace dmnbd {
namespace {

using namespace boost::asio::experimental::awaitable_operators;
using test::all_are;
using test::BioRecord;
using test::CrashDevice;
using test::MemoryDevice;
using test::RecordingDevice;
using test::run_sync;

constexpr uint32_t kBlock = 4096;  // 8 sectors
constexpr uint64_t kSectors = kBlock / 512;

// Reads `block` and keeps the hold in `ref`.
Status read(BlockCache& cache, uint64_t block, BlockCache::Ref& ref) {
  return run_sync(cache.read(block, ref));
}

// Takes `block` without reading it, fills it with `value` and marks it dirty.
void put(BlockCache& cache, uint64_t block, uint8_t value) {
  BlockCache::Ref ref;
  ASSERT_FALSE(run_sync(cache.new_block(block, ref)));
  std::memset(ref.data().data(), value, ref.data().size());
  ref.mark_dirty();
}

class BlockCacheTest : public ::testing::Test {
 protected:
  BlockCacheTest() { dev_.memory()->fill_pattern(); }  // sector i holds byte i
  RecordingDevice dev_{"meta", 16 * kSectors};
};

TEST_F(BlockCacheTest, ConcurrentReadersOfABlockShareOneRead) {
  BlockCache cache(dev_, kBlock);
  dev_.set_hops(3);
  run_sync([&]() -> Task<void> {
    BlockCache::Ref a, b;
    auto [sa, sb] = co_await (cache.read(2, a) && cache.read(2, b));
    EXPECT_FALSE(sa);
    EXPECT_FALSE(sb);
    EXPECT_EQ(a.data().data(), b.data().data());  // the same cached bytes
  }());
  EXPECT_EQ(dev_.bios(), (std::vector<BioRecord>{{BioOp::read, 16, 8}}));
  BlockCache::Ref again;
  ASSERT_FALSE(read(cache, 2, again));
  EXPECT_EQ(again.block(), 2u);
  EXPECT_TRUE(all_are(again.data().first(512), 16));
  EXPECT_TRUE(all_are(again.data().last(512), 23));
  EXPECT_EQ(dev_.bios().size(), 1u);  // cached
}

TEST_F(BlockCacheTest, BadBlocksAndBlockSizesAreRefused) {
  EXPECT_THROW(BlockCache(dev_, 1000), std::invalid_argument);
  EXPECT_THROW(BlockCache(dev_, 256), std::invalid_argument);
  BlockCache cache(dev_, kBlock);
  EXPECT_EQ(cache.blocks(), 16u);
  BlockCache::Ref ref;
  EXPECT_EQ(read(cache, 16, ref), errno_status(EINVAL));
  EXPECT_FALSE(ref);
  EXPECT_TRUE(dev_.bios().empty());
}

TEST_F(BlockCacheTest, AFailedReadIsNotCached) {
  BlockCache cache(dev_, kBlock);
  dev_.fail_all(errno_status(EIO));
  BlockCache::Ref ref;
  EXPECT_EQ(read(cache, 1, ref), errno_status(EIO));
  EXPECT_EQ(cache.cached_blocks(), 0u);
  dev_.set_fault({});
  ASSERT_FALSE(read(cache, 1, ref));
  EXPECT_TRUE(all_are(ref.data().first(512), 8));
  EXPECT_EQ(dev_.bios(BioOp::read).size(), 2u);
}

TEST_F(BlockCacheTest, WriteDirtyGoesInAscendingOrderWithAdjacentBlocksInOneBio) {
  BlockCache cache(dev_, kBlock);
  put(cache, 5, 0x55);
  put(cache, 2, 0x22);
  put(cache, 1, 0x11);
  EXPECT_TRUE(dev_.bios().empty());  // new_block() reads nothing
  EXPECT_EQ(cache.dirty_blocks(), 3u);
  ASSERT_FALSE(run_sync(cache.write_dirty()));
  EXPECT_EQ(dev_.bios(), (std::vector<BioRecord>{{BioOp::write, 8, 16}, {BioOp::write, 40, 8}}));
  EXPECT_EQ(cache.dirty_blocks(), 0u);
  EXPECT_TRUE(all_are(dev_.memory()->bytes(8, 8), 0x11));
  EXPECT_TRUE(all_are(dev_.memory()->bytes(16, 8), 0x22));
  EXPECT_TRUE(all_are(dev_.memory()->bytes(40, 8), 0x55));
  // Nothing dirty: nothing written.
  dev_.clear();
  ASSERT_FALSE(run_sync(cache.write_dirty()));
  EXPECT_TRUE(dev_.bios().empty());
  // commit() adds the flush.
  put(cache, 7, 0x77);
  ASSERT_FALSE(run_sync(cache.commit()));
  EXPECT_EQ(dev_.bios(), (std::vector<BioRecord>{{BioOp::write, 56, 8}, {BioOp::flush}}));
}

TEST_F(BlockCacheTest, CommitWritesTheSuperblockLastWithFuaAfterAFlush) {
  BlockCache cache(dev_, kBlock);
  put(cache, 4, 0x44);
  put(cache, 3, 0x33);
  BlockCache::Ref super;
  ASSERT_FALSE(run_sync(cache.new_block(0, super)));
  std::memset(super.data().data(), 0x5b, kBlock);
  super.mark_dirty();
  ASSERT_FALSE(run_sync(cache.commit(super)));
  EXPECT_EQ(dev_.bios(),
            (std::vector<BioRecord>{
                {BioOp::write, 24, 16}, {BioOp::flush}, {BioOp::write, 0, 8, kBioFua}}));
  EXPECT_TRUE(all_are(dev_.memory()->bytes(0, 8), 0x5b));
  EXPECT_EQ(cache.dirty_blocks(), 0u);
}

TEST_F(BlockCacheTest, AFailedWriteLeavesTheBlockDirty) {
  BlockCache cache(dev_, kBlock);
  put(cache, 6, 0x66);
  dev_.fail_all(errno_status(EIO));
  EXPECT_EQ(run_sync(cache.write_dirty()), errno_status(EIO));
  EXPECT_EQ(cache.dirty_blocks(), 1u);
  dev_.set_fault({});
  ASSERT_FALSE(run_sync(cache.write_dirty()));
  EXPECT_EQ(cache.dirty_blocks(), 0u);
  EXPECT_TRUE(all_are(dev_.memory()->bytes(48, 8), 0x66));
}

TEST_F(BlockCacheTest, CleanBlocksNobodyHoldsAreDroppedOldestFirst) {
  BlockCache cache(dev_, kBlock, 2);
  BlockCache::Ref ref;
  for (uint64_t b : {0, 1, 2}) ASSERT_FALSE(read(cache, b, ref));
  ref.release();
  EXPECT_EQ(cache.cached_blocks(), 2u);
  dev_.clear();
  ASSERT_FALSE(read(cache, 1, ref));
  ASSERT_FALSE(read(cache, 2, ref));
  EXPECT_TRUE(dev_.bios().empty());  // 1 and 2 stayed
  ASSERT_FALSE(read(cache, 0, ref));
  EXPECT_EQ(dev_.bios(), (std::vector<BioRecord>{{BioOp::read, 0, 8}}));
  ref.release();
  // Held and dirty blocks stay whatever the bound.
  std::vector<BlockCache::Ref> held(4);
  for (uint64_t b = 0; b < 4; ++b) ASSERT_FALSE(read(cache, 8 + b, held[b]));
  put(cache, 12, 0xcc);
  put(cache, 13, 0xdd);
  EXPECT_EQ(cache.cached_blocks(), 6u + 2);  // 4 held, 2 dirty, 2 clean
  EXPECT_FALSE(cache.forget(8));             // held
  EXPECT_FALSE(cache.forget(12));            // dirty
  EXPECT_FALSE(cache.forget(15));            // not cached
  held.clear();
  EXPECT_EQ(cache.cached_blocks(), 2u + 2);
  ASSERT_FALSE(run_sync(cache.write_dirty()));
  EXPECT_EQ(cache.cached_blocks(), 2u);
  EXPECT_TRUE(cache.forget(13));
  EXPECT_EQ(cache.cached_blocks(), 1u);
}

// A tiny store: a header in block 0 names the data block (1 or 2, in turn)
// holding generation g, every byte g.
struct Header {
  uint64_t magic;
  uint64_t generation;
  uint64_t data_block;
};
constexpr uint64_t kMagic = 0x64'6d'6e'62'64'6b'69'74;

Task<Status> store_commit(BlockCache& cache, uint64_t generation) {
  BlockCache::Ref data, header;
  if (Status st = co_await cache.new_block(1 + generation % 2, data)) co_return st;
  std::memset(data.data().data(), static_cast<int>(generation), kBlock);
  data.mark_dirty();
  if (Status st = co_await cache.new_block(0, header)) co_return st;
  const Header h{kMagic, generation, 1 + generation % 2};
  std::memcpy(header.data().data(), &h, sizeof h);
  header.mark_dirty();
  co_return co_await cache.commit(header);
}

// After recovery: the generation the header names, whose data must be whole.
uint64_t recovered_generation(BlockDevice& dev) {
  BlockCache cache(dev, kBlock);
  BlockCache::Ref header, data;
  EXPECT_FALSE(read(cache, 0, header));
  Header h;
  std::memcpy(&h, header.data().data(), sizeof h);
  EXPECT_EQ(h.magic, kMagic);
  EXPECT_FALSE(read(cache, h.data_block, data));
  EXPECT_TRUE(all_are(data.data(), static_cast<uint8_t>(h.generation)))
      << "header of generation " << h.generation << " names data that never reached the disk";
  return h.generation;
}

TEST(BlockCacheCrashTest, TheHeaderNeverNamesDataLostInACrash) {
  // Every point where the power may go during two commits, with the worst
  // disk and with disks that keep some volatile writes.
  for (uint64_t cut = 0; cut <= 7; ++cut) {
    for (std::optional<uint64_t> seed : {std::optional<uint64_t>(), std::optional<uint64_t>(1),
                                         std::optional<uint64_t>(2), std::optional<uint64_t>(3)}) {
      SCOPED_TRACE("power cut after " + std::to_string(cut) + " bios, seed " +
                   (seed ? std::to_string(*seed) : "none"));
      auto disk = std::make_shared<MemoryDevice>(3 * kSectors);
      CrashDevice crash(disk);
      {
        BlockCache cache(crash, kBlock);
        ASSERT_FALSE(run_sync(store_commit(cache, 1)));
      }
      crash.power_off_after(cut);
      {
        BlockCache cache(crash, kBlock);
        const Status second = run_sync(store_commit(cache, 2));
        const Status third = second ? second : run_sync(store_commit(cache, 3));
        EXPECT_EQ(!third, cut >= 6);  // each commit is a write, a flush and a FUA write
      }
      ASSERT_FALSE(run_sync(crash.crash(seed)));
      const uint64_t generation = recovered_generation(crash);
      EXPECT_GE(generation, cut >= 3 ? 2u : 1u);  // a completed commit is durable
    }
  }
}

}  // namespace
}  // namespace dmnbd
