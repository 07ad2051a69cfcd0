// The snapshot exception stores (targets/snapshot): the table words, the
// persistent store's exact on-disk bytes, commit order and batching, status
// numbers, loading, merging, and crashes at every write of a commit.
#include <gtest/gtest.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <unordered_map>

#include "../../targets/snapshot/exception_store.hpp"
#include "../../targets/snapshot/exception_table.hpp"
#include "../../targets/snapshot/persistent_format.hpp"
#include "devices/crash_device.hpp"
#include "devices/memory_device.hpp"
#include "devices/recording_device.hpp"
#include "dmnbd/dm_io.hpp"
#include "dmnbd/when_all.hpp"
#include "test_support.hpp"

namespace dmnbd::snapshot {
namespace {

using test::all_are;
using test::BioRecord;
using test::CrashDevice;
using test::MemoryDevice;
using test::RecordingDevice;
using test::run_sync;

// C = 8 sectors: E = 256 exceptions per area, areas at chunks 1, 258, 515...
constexpr uint32_t kC = 8;
constexpr uint32_t kE = 256;

std::vector<std::byte> bytes_of(std::initializer_list<int> v) {
  std::vector<std::byte> out;
  for (int b : v) out.push_back(static_cast<std::byte>(b));
  return out;
}

// A COW of `chunks` chunks of kC that reads as garbage except for a zeroed
// first sector: a new snapshot, whose store must write every byte it needs.
std::shared_ptr<RecordingDevice> new_cow(uint64_t sectors) {
  auto cow = std::make_shared<RecordingDevice>("cow", sectors);
  auto all = cow->memory()->bytes();
  std::fill(all.begin(), all.end(), std::byte{0xAA});
  auto first = cow->memory()->bytes(0, 1);
  std::fill(first.begin(), first.end(), std::byte{0});
  return cow;
}

struct Loaded {
  Status status;
  bool valid = false;
  std::vector<ChunkPair> exceptions;
};

Loaded load(ExceptionStore& store) {
  Loaded l;
  l.status =
      run_sync(store.read_metadata([&](ChunkPair e) { l.exceptions.push_back(e); }, l.valid));
  return l;
}

std::unique_ptr<ExceptionStore> open_loaded(std::shared_ptr<BlockDevice> cow, uint32_t chunk = kC,
                                            const std::string& word = "P") {
  auto store = make_exception_store(word, chunk, std::move(cow));
  Loaded l = load(*store);
  EXPECT_FALSE(l.status) << l.status.message();
  EXPECT_TRUE(l.valid);
  return store;
}

ChunkPair prepare(ExceptionStore& store, Chunk old_chunk) {
  ChunkPair e{old_chunk, 0};
  Status st = store.prepare_exception(old_chunk, e.new_chunk);
  EXPECT_FALSE(st) << st.message();
  return e;
}

Status commit(ExceptionStore& store, ChunkPair e, bool copied = true) {
  return run_sync(store.commit_exception(e, copied));
}

// Commits `es` side by side, started in the order given.
std::vector<Status> commit_all(ExceptionStore& store, const std::vector<ChunkPair>& es) {
  return run_sync([](ExceptionStore& s, std::vector<ChunkPair> es) -> Task<std::vector<Status>> {
    std::vector<Task<Status>> tasks;
    for (ChunkPair e : es) tasks.push_back(s.commit_exception(e, true));
    co_return co_await when_all(tasks);
  }(store, es));
}

std::string status_line(const ExceptionStore& store) {
  StoreUsage u = store.usage();
  return std::to_string(u.sectors_allocated) + "/" + std::to_string(u.total_sectors) + " " +
         std::to_string(u.metadata_sectors);
}

ChunkPair slot_on_disk(MemoryDevice& cow, uint64_t area_chunk, uint32_t index, uint32_t c = kC) {
  return pstore::decode_slot(cow.bytes(area_chunk * c, c), index);
}

std::vector<BioRecord> writes_and_flushes(const RecordingDevice& dev) {
  std::vector<BioRecord> out;
  for (const BioRecord& r : dev.bios())
    if (r.op != BioOp::read) out.push_back(r);
  return out;
}

BioRecord write_rec(uint64_t sector, uint64_t sectors, uint32_t flags = 0) {
  return {BioOp::write, sector, sectors, flags};
}
BioRecord flush_rec() {
  return {BioOp::flush, 0, 0, 0};
}

// Collects what spdlog says while it lives.
class LogCapture {
 public:
  LogCapture()
      : sink_(std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(64)),
        saved_(spdlog::default_logger()) {
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("capture", sink_));
  }
  ~LogCapture() { spdlog::set_default_logger(saved_); }
  std::vector<std::string> lines() { return sink_->last_formatted(); }
  bool said(const std::string& text) {
    for (const std::string& l : lines())
      if (l.find(text) != std::string::npos) return true;
    return false;
  }

 private:
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink_;
  std::shared_ptr<spdlog::logger> saved_;
};

// ---------------------------------------------------------------------------
// The table's words.

std::string create_error(const std::string& word, uint32_t chunk) {
  auto cow = std::make_shared<MemoryDevice>(1024);
  try {
    make_exception_store(word, chunk, cow);
  } catch (const StoreError& e) {
    EXPECT_STREQ(e.ctr_error(), kStoreCreateFailed);
    EXPECT_EQ(e.status(), errno_status(EINVAL));
    return e.what();
  } catch (const TargetError& e) {
    return std::string("plain: ") + e.what();
  }
  return "";
}

std::string create_error(const std::string& word, const std::string& chunk) {
  auto cow = std::make_shared<MemoryDevice>(1024);
  try {
    make_exception_store(word, chunk, cow);
  } catch (const StoreError& e) {
    EXPECT_STREQ(e.ctr_error(), kStoreCreateFailed);
    return e.what();
  }
  return "";
}

TEST(SnapshotStoreCtr, RefusesWhatTheKernelRefusesInItsWords) {
  EXPECT_EQ(create_error("X", 8), "Exception store type is not P or N");
  EXPECT_EQ(create_error("", 8), "Exception store type is not P or N");
  EXPECT_EQ(create_error("transient", 8), "Exception store type is not P or N");
  EXPECT_EQ(create_error("P", 3), "Chunk size is not a power of 2");
  EXPECT_EQ(create_error("N", 12), "Chunk size is not a power of 2");
  EXPECT_EQ(create_error("P", 1u << 22), "Chunk size is too high");  // > INT_MAX >> 9
  EXPECT_EQ(create_error("N", 1u << 31), "Chunk size is too high");
  // The persistent type's only option is O; "persistent" is P + "ersistent".
  EXPECT_EQ(create_error("PX", 8), "Exception store type constructor failed");
  EXPECT_EQ(create_error("persistent", 8), "Exception store type constructor failed");
  // The type is checked before the chunk size, the chunk size before options.
  EXPECT_EQ(create_error("X", 3), "Exception store type is not P or N");
  EXPECT_EQ(create_error("PX", 3), "Chunk size is not a power of 2");
  // dm-snap.c's own check after the (empty) transient read_metadata.
  EXPECT_EQ(create_error("N", 0), "plain: Chunk size not set");
  EXPECT_EQ(create_error("NX", 0), "plain: Chunk size not set");
}

TEST(SnapshotStoreCtr, ParsesTheChunkWordLikeKstrtouint) {
  EXPECT_EQ(create_error("P", "abc"), "Invalid chunk size");
  EXPECT_EQ(create_error("P", ""), "Invalid chunk size");
  EXPECT_EQ(create_error("P", "-8"), "Invalid chunk size");
  EXPECT_EQ(create_error("P", "0x10"), "Invalid chunk size");
  EXPECT_EQ(create_error("P", "8 "), "Invalid chunk size");
  EXPECT_EQ(create_error("P", "4294967296"), "Invalid chunk size");  // > UINT_MAX
  EXPECT_EQ(create_error("X", "abc"), "Exception store type is not P or N");
  EXPECT_EQ(create_error("P", "4294967295"), "Chunk size is not a power of 2");
  auto cow = std::make_shared<MemoryDevice>(1024);
  EXPECT_EQ(make_exception_store("N", "+8", cow)->chunk_sectors(), 8u);
  EXPECT_EQ(make_exception_store("N", "16\n", cow)->chunk_sectors(), 16u);
  EXPECT_EQ(make_exception_store("P", "0", cow)->chunk_sectors(), 0u);  // until read_metadata
}

TEST(SnapshotStoreCtr, AcceptsTheKernelsWords) {
  auto cow = std::make_shared<MemoryDevice>(1024);
  struct Case {
    const char* word;
    const char* table_word;
    bool persistent, overflow;
  };
  for (Case c :
       {Case{"P", "P", true, false}, Case{"p", "P", true, false}, Case{"PO", "PO", true, true},
        Case{"po", "PO", true, true}, Case{"POX", "PO", true, true}, Case{"N", "N", false, false},
        Case{"n", "N", false, false}, Case{"Nonsense", "N", false, false}}) {
    auto store = make_exception_store(c.word, 8, cow);
    EXPECT_EQ(store->table_word(), c.table_word) << c.word;
    EXPECT_EQ(store->persistent(), c.persistent) << c.word;
    EXPECT_EQ(store->overflow_aware(), c.overflow) << c.word;
    EXPECT_EQ(store->chunk_sectors(), 8u);
  }
  EXPECT_EQ(make_exception_store("P", 1u << 21, cow)->chunk_sectors(), 1u << 21);  // 1 GiB
  EXPECT_EQ(make_exception_store("N", 1, cow)->chunk_sectors(), 1u);
  EXPECT_EQ(chunk_size_error(0), std::string("Chunk size is not a power of 2"));
  EXPECT_EQ(chunk_size_error(64), nullptr);
}

// ---------------------------------------------------------------------------
// The format.

TEST(SnapshotStoreFormat, EncodesAndDecodesHeaderAndSlots) {
  std::vector<std::byte> chunk(kC * 512, std::byte{0x55});
  pstore::DiskHeader h{.valid = 1, .chunk_size = kC};
  pstore::encode_header(h, chunk);
  std::vector<std::byte> expect =
      bytes_of({0x53, 0x6E, 0x41, 0x70, 1, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0});
  EXPECT_TRUE(std::equal(expect.begin(), expect.end(), chunk.begin()));
  EXPECT_TRUE(all_are(std::span(chunk).subspan(16), 0));  // the whole chunk is cleared
  EXPECT_EQ(pstore::decode_header(chunk), h);
  pstore::DiskHeader odd{.magic = 0x01020304, .valid = 0, .version = 7, .chunk_size = 1u << 21};
  pstore::encode_header(odd, chunk);
  EXPECT_EQ(pstore::decode_header(chunk), odd);

  std::vector<std::byte> area(kC * 512);
  pstore::encode_slot(area, 3, {0x0102030405060708ULL, 0x1112131415161718ULL});
  std::vector<std::byte> slot =
      bytes_of({8, 7, 6, 5, 4, 3, 2, 1, 0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11});
  EXPECT_TRUE(std::equal(slot.begin(), slot.end(), area.begin() + 48));
  ChunkPair back = pstore::decode_slot(area, 3);
  EXPECT_EQ(back.old_chunk, 0x0102030405060708ULL);
  EXPECT_EQ(back.new_chunk, 0x1112131415161718ULL);
  EXPECT_TRUE(all_are(std::span(area).first(48), 0));
  EXPECT_TRUE(all_are(std::span(area).subspan(64), 0));

  EXPECT_EQ(pstore::exceptions_per_area(8), 256u);
  EXPECT_EQ(pstore::exceptions_per_area(1), 32u);
  EXPECT_EQ(pstore::area_location(256, 0), 1u);
  EXPECT_EQ(pstore::area_location(256, 1), 258u);
  EXPECT_EQ(pstore::area_location(256, 2), 515u);
  EXPECT_EQ(pstore::skip_metadata(256, 257), 257u);
  EXPECT_EQ(pstore::skip_metadata(256, 258), 259u);
  EXPECT_EQ(pstore::skip_metadata(256, 515), 516u);
}

// ---------------------------------------------------------------------------
// A new persistent store.

TEST(SnapshotStorePersistent, ZeroedCowGetsHeaderAndEmptyAreaDurably) {
  auto cow = new_cow(8 * 1000);
  auto store = make_exception_store("P", kC, cow);
  Loaded l = load(*store);
  ASSERT_FALSE(l.status) << l.status.message();
  EXPECT_TRUE(l.valid);
  EXPECT_TRUE(l.exceptions.empty());
  MemoryDevice& m = *cow->memory();
  std::vector<std::byte> header =
      bytes_of({0x53, 0x6E, 0x41, 0x70, 1, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0});
  EXPECT_TRUE(std::equal(header.begin(), header.end(), m.bytes(0, 1).begin()));
  EXPECT_TRUE(all_are(m.bytes(0, kC).subspan(16), 0));
  EXPECT_TRUE(all_are(m.bytes(kC, kC), 0));         // area 0
  EXPECT_TRUE(all_are(m.bytes(2 * kC, kC), 0xAA));  // data untouched
  // Area 0 first; the header after a flush, with FUA: a crash between them
  // leaves a COW that is still new.
  EXPECT_EQ(writes_and_flushes(*cow),
            (std::vector<BioRecord>{write_rec(kC, kC), flush_rec(), write_rec(0, kC, kBioFua)}));
  EXPECT_EQ(status_line(*store), "16/8000 16");
  EXPECT_EQ(store->chunk_sectors(), kC);
}

TEST(SnapshotStorePersistent, TableChunkZeroMeansThirtyTwo) {
  auto cow = new_cow(32 * 100);
  auto store = make_exception_store("P", 0, cow);
  ASSERT_FALSE(load(*store).status);
  EXPECT_EQ(store->chunk_sectors(), 32u);
  EXPECT_EQ(pstore::decode_header(cow->memory()->bytes(0, 1)).chunk_size, 32u);
  EXPECT_EQ(status_line(*store), "64/3200 64");
}

TEST(SnapshotStorePersistent, HeaderChunkSizeOverridesTheTable) {
  auto cow = new_cow(8 * 1000);
  {
    auto store = open_loaded(cow);
    commit(*store, prepare(*store, 7));
  }
  {
    LogCapture log;
    auto store = make_exception_store("P", 16, cow);
    Loaded l = load(*store);
    ASSERT_FALSE(l.status);
    EXPECT_EQ(store->chunk_sectors(), kC);
    ASSERT_EQ(l.exceptions.size(), 1u);
    EXPECT_EQ(l.exceptions[0].old_chunk, 7u);
    EXPECT_TRUE(log.said("chunk size 8 in device metadata overrides table chunk size of 16."));
  }
  {
    LogCapture log;  // no table chunk size: the header's, silently
    auto store = make_exception_store("P", 0, cow);
    ASSERT_FALSE(load(*store).status);
    EXPECT_EQ(store->chunk_sectors(), kC);
    EXPECT_FALSE(log.said("overrides"));
    EXPECT_EQ(status_line(*store), "24/8000 16");
  }
}

// What read_metadata throws for a header as given.
std::string header_error(pstore::DiskHeader h, Status expect_status) {
  auto cow = new_cow(8 * 100);
  pstore::encode_header(h, cow->memory()->bytes(0, kC));
  auto store = make_exception_store("P", kC, cow);
  try {
    load(*store);
  } catch (const StoreError& e) {
    EXPECT_STREQ(e.ctr_error(), kReadMetadataFailed);
    EXPECT_EQ(e.status(), expect_status);
    return e.what();
  }
  return "";
}

TEST(SnapshotStorePersistent, RefusesForeignHeadersInTheKernelsWords) {
  LogCapture log;
  EXPECT_EQ(header_error({.magic = 0x12345678, .chunk_size = kC}, errno_status(ENXIO)),
            "Invalid or corrupt snapshot");
  EXPECT_TRUE(log.said("Invalid or corrupt snapshot"));
  EXPECT_EQ(header_error({.version = 2, .chunk_size = kC}, errno_status(EINVAL)),
            "unable to handle snapshot disk version 2");
  EXPECT_EQ(header_error({.chunk_size = 3}, errno_status(EINVAL)),
            "invalid on-disk chunk size 3: Chunk size is not a power of 2.");
  EXPECT_EQ(header_error({.chunk_size = 0}, errno_status(EINVAL)),
            "invalid on-disk chunk size 0: Chunk size is not a power of 2.");
  // The chunk size is looked at before the version, as read_header does.
  EXPECT_EQ(header_error({.version = 2, .chunk_size = 1u << 22}, errno_status(EINVAL)),
            "invalid on-disk chunk size 4194304: Chunk size is too high.");
}

TEST(SnapshotStorePersistent, ReadErrorIsReturned) {
  auto cow = new_cow(8 * 100);
  cow->fail_all(errno_status(EIO));
  auto store = make_exception_store("P", kC, cow);
  EXPECT_EQ(load(*store).status, errno_status(EIO));
}

// ---------------------------------------------------------------------------
// Commits: bytes, status, ordering, batching.

TEST(SnapshotStorePersistent, SlotsAreasAndStatusAcrossTwoAreas) {
  auto cow = new_cow(8 * 800);
  auto store = open_loaded(cow);
  MemoryDevice& m = *cow->memory();
  EXPECT_EQ(status_line(*store), "16/6400 16");
  std::vector<ChunkPair> done;
  for (uint32_t k = 0; k < 300; ++k) {
    if (k == kE - 1) cow->clear();
    ChunkPair e = prepare(*store, 1000 + k);
    // Data chunks follow area 0 (chunk 1) from chunk 2; area 1 is chunk 258.
    EXPECT_EQ(e.new_chunk, k < kE ? 2 + k : 3 + k) << k;
    ASSERT_FALSE(commit(*store, e)) << k;
    done.push_back(e);
    if (k + 1 < kE) {
      EXPECT_EQ(status_line(*store), std::to_string((2 + k + 1) * 8) + "/6400 16");
    }
    if (k + 1 == kE) {
      // Area 0 is full: area 1 zeroed (a plain write) before area 0 is
      // written with a preflush and FUA.
      EXPECT_EQ(status_line(*store), "2072/6400 24");
      EXPECT_EQ(
          writes_and_flushes(*cow),
          (std::vector<BioRecord>{write_rec(258 * 8, 8), flush_rec(), write_rec(8, 8, kBioFua)}));
      EXPECT_TRUE(all_are(m.bytes(258 * 8, 8), 0));
    }
  }
  EXPECT_EQ(status_line(*store), std::to_string(303 * 8) + "/6400 24");
  for (uint32_t k = 0; k < 300; ++k) {
    ChunkPair on_disk = k < kE ? slot_on_disk(m, 1, k) : slot_on_disk(m, 258, k - kE);
    EXPECT_EQ(on_disk.old_chunk, 1000 + k);
    EXPECT_EQ(on_disk.new_chunk, done[k].new_chunk);
  }
  // The rest of area 1 is zero: where the list ends.
  EXPECT_TRUE(all_are(m.bytes(258 * 8, 8).subspan(44 * 16), 0));
  EXPECT_TRUE(all_are(m.bytes(515 * 8, 8), 0xAA));  // area 2 not touched yet

  // A reload sees all of them, in order, and the same numbers.
  auto again = make_exception_store("P", kC, cow);
  Loaded l = load(*again);
  ASSERT_FALSE(l.status);
  ASSERT_EQ(l.exceptions.size(), 300u);
  for (uint32_t k = 0; k < 300; ++k) {
    EXPECT_EQ(l.exceptions[k].old_chunk, 1000 + k);
    EXPECT_EQ(l.exceptions[k].new_chunk, done[k].new_chunk);
  }
  EXPECT_EQ(status_line(*again), status_line(*store));
  EXPECT_EQ(prepare(*again, 1).new_chunk, 303u);
}

TEST(SnapshotStorePersistent, OneAreaWriteWhenNothingElseIsPending) {
  auto cow = new_cow(8 * 100);
  auto store = open_loaded(cow);
  std::vector<ChunkPair> es;
  for (int i = 0; i < 5; ++i) es.push_back(prepare(*store, 10 * i));
  cow->clear();
  for (Status st : commit_all(*store, es)) EXPECT_FALSE(st);
  EXPECT_EQ(writes_and_flushes(*cow),
            (std::vector<BioRecord>{flush_rec(), write_rec(8, 8, kBioFua)}));
  for (int i = 0; i < 5; ++i) EXPECT_EQ(slot_on_disk(*cow->memory(), 1, i).old_chunk, 10u * i);
}

TEST(SnapshotStorePersistent, OutOfOrderCommitsLandInAllocationOrder) {
  auto cow = new_cow(8 * 100);
  auto store = open_loaded(cow);
  ChunkPair a = prepare(*store, 30), b = prepare(*store, 10), c = prepare(*store, 20);
  EXPECT_EQ(a.new_chunk, 2u);
  EXPECT_EQ(b.new_chunk, 3u);
  EXPECT_EQ(c.new_chunk, 4u);
  for (Status st : commit_all(*store, {c, b, a})) EXPECT_FALSE(st);
  MemoryDevice& m = *cow->memory();
  EXPECT_EQ(slot_on_disk(m, 1, 0).old_chunk, 30u);
  EXPECT_EQ(slot_on_disk(m, 1, 1).old_chunk, 10u);
  EXPECT_EQ(slot_on_disk(m, 1, 2).old_chunk, 20u);
  EXPECT_EQ(slot_on_disk(m, 1, 2).new_chunk, 4u);
  EXPECT_EQ(slot_on_disk(m, 1, 3).new_chunk, 0u);
}

// An event loop the test turns by hand, to see who is still waiting.
struct Loop {
  asio::io_context ctx;
  IoEngineScope engine{ctx, false};
  void spawn(Task<Status> t, std::optional<Status>& out) {
    asio::co_spawn(ctx, std::move(t), [&out](std::exception_ptr, Status st) { out = st; });
  }
  // Runs whatever is ready until nothing is (a parked coroutine keeps the
  // loop's work count up, so run() would not return).
  void run() {
    ctx.restart();
    while (ctx.poll() != 0) {
    }
  }
};

TEST(SnapshotStorePersistent, ACommitWaitsForEarlierOnesAndForItsAreaWrite) {
  auto cow = new_cow(8 * 100);
  auto store = open_loaded(cow);
  ChunkPair a = prepare(*store, 1), b = prepare(*store, 2), c = prepare(*store, 3);
  cow->clear();
  Loop loop;
  std::optional<Status> done_b, done_a, done_c;
  // b's copy finished first: it waits for a, and writes nothing.
  loop.spawn(store->commit_exception(b, true), done_b);
  loop.run();
  EXPECT_FALSE(done_b);
  EXPECT_TRUE(writes_and_flushes(*cow).empty());
  // a goes, then b; c is still pending, so no area write and no answer.
  loop.spawn(store->commit_exception(a, true), done_a);
  loop.run();
  EXPECT_FALSE(done_a);
  EXPECT_FALSE(done_b);
  EXPECT_TRUE(writes_and_flushes(*cow).empty());
  // c is the last pending one: one area write answers all three, after it
  // has landed.
  cow->set_hops(3);
  loop.spawn(store->commit_exception(c, true), done_c);
  loop.run();
  ASSERT_TRUE(done_a && done_b && done_c);
  EXPECT_FALSE(*done_a);
  EXPECT_FALSE(*done_b);
  EXPECT_FALSE(*done_c);
  EXPECT_EQ(writes_and_flushes(*cow),
            (std::vector<BioRecord>{flush_rec(), write_rec(8, 8, kBioFua)}));
  EXPECT_EQ(slot_on_disk(*cow->memory(), 1, 2).old_chunk, 3u);
}

TEST(SnapshotStorePersistent, AnswersOnlyAfterTheAreaWriteCompletes) {
  auto cow = new_cow(8 * 100);
  auto store = open_loaded(cow);
  cow->set_hops(4);  // every bio takes a while
  ChunkPair a = prepare(*store, 1), b = prepare(*store, 2);
  Loop loop;
  std::optional<Status> done_a, done_b;
  MemoryDevice& m = *cow->memory();
  bool a_saw_slot = false, b_saw_slot = false;
  asio::co_spawn(loop.ctx, store->commit_exception(a, true), [&](std::exception_ptr, Status st) {
    done_a = st;
    a_saw_slot = slot_on_disk(m, 1, 0).old_chunk == 1 && slot_on_disk(m, 1, 1).old_chunk == 2;
  });
  asio::co_spawn(loop.ctx, store->commit_exception(b, true), [&](std::exception_ptr, Status st) {
    done_b = st;
    b_saw_slot = slot_on_disk(m, 1, 1).old_chunk == 2;
  });
  loop.run();
  ASSERT_TRUE(done_a && done_b);
  EXPECT_TRUE(a_saw_slot);
  EXPECT_TRUE(b_saw_slot);
}

TEST(SnapshotStorePersistent, EnospcWhenTheNextChunkDoesNotFit) {
  // 5 chunks: header, area 0, data 2..4; a partial sixth chunk does not count.
  for (uint64_t sectors : {40u, 44u}) {
    auto cow = new_cow(sectors);
    auto store = open_loaded(cow);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(prepare(*store, i).new_chunk, 2u + i);
    Chunk n = 0;
    EXPECT_EQ(store->prepare_exception(9, n), errno_status(ENOSPC));
    EXPECT_EQ(status_line(*store), "40/" + std::to_string(sectors) + " 16");
  }
}

TEST(SnapshotStorePersistent, NextAreaPastTheEndInvalidates) {
  // 258 chunks: the 256th exception (chunk 257) fits, area 1 (chunk 258)
  // does not, so zeroing it fails and the snapshot is invalid; area 0 is
  // then not written.
  auto cow = new_cow(258 * 8);
  auto store = open_loaded(cow);
  for (uint32_t k = 0; k + 1 < kE; ++k) ASSERT_FALSE(commit(*store, prepare(*store, k)));
  ChunkPair last = prepare(*store, 999);
  EXPECT_EQ(last.new_chunk, 257u);
  cow->clear();
  EXPECT_EQ(commit(*store, last), errno_status(EIO));
  EXPECT_EQ(writes_and_flushes(*cow), (std::vector<BioRecord>{write_rec(258 * 8, 8)}));
  EXPECT_EQ(slot_on_disk(*cow->memory(), 1, kE - 1).new_chunk, 0u);
}

TEST(SnapshotStorePersistent, FailedCopyOrAreaWriteInvalidatesAndDropWritesTheHeader) {
  auto cow = new_cow(8 * 100);
  auto store = open_loaded(cow);
  ASSERT_FALSE(commit(*store, prepare(*store, 5)));
  cow->clear();
  EXPECT_EQ(commit(*store, prepare(*store, 6), false), errno_status(EIO));
  EXPECT_TRUE(writes_and_flushes(*cow).empty());  // an invalid store writes no area
  EXPECT_EQ(commit(*store, prepare(*store, 7)), errno_status(EIO));
  run_sync(store->drop_snapshot());
  EXPECT_EQ(writes_and_flushes(*cow), (std::vector<BioRecord>{write_rec(0, kC, kBioFua)}));
  MemoryDevice& m = *cow->memory();
  std::vector<std::byte> header =
      bytes_of({0x53, 0x6E, 0x41, 0x70, 0, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0});
  EXPECT_TRUE(std::equal(header.begin(), header.end(), m.bytes(0, 1).begin()));
  EXPECT_TRUE(all_are(m.bytes(0, kC).subspan(16), 0));
  EXPECT_EQ(slot_on_disk(m, 1, 0).old_chunk, 5u);  // areas as they were
  // Reloaded: Invalid, and its areas are not even read.
  cow->clear();
  auto again = make_exception_store("P", kC, cow);
  Loaded l = load(*again);
  ASSERT_FALSE(l.status);
  EXPECT_FALSE(l.valid);
  EXPECT_TRUE(l.exceptions.empty());
  EXPECT_EQ(cow->bios(), (std::vector<BioRecord>{{BioOp::read, 0, kC, 0}}));

  // An area write that fails invalidates too.
  auto cow2 = new_cow(8 * 100);
  auto store2 = open_loaded(cow2);
  cow2->set_fault([](const Bio& b) { return (b.flags & kBioFua) ? errno_status(EIO) : ok(); });
  EXPECT_EQ(commit(*store2, prepare(*store2, 1)), errno_status(EIO));
  cow2->set_fault({});
  EXPECT_EQ(commit(*store2, prepare(*store2, 2)), errno_status(EIO));
}

// ---------------------------------------------------------------------------
// Loading what is on disk.

// A COW of `chunks` chunks with a valid header and the given slots in area 0.
std::shared_ptr<RecordingDevice> cow_with(std::vector<ChunkPair> slots, uint64_t chunks = 100) {
  auto cow = new_cow(chunks * kC);
  MemoryDevice& m = *cow->memory();
  pstore::encode_header({.chunk_size = kC}, m.bytes(0, kC));
  auto area = m.bytes(kC, kC);
  std::fill(area.begin(), area.end(), std::byte{0});
  for (uint32_t i = 0; i < slots.size(); ++i) pstore::encode_slot(area, i, slots[i]);
  return cow;
}

TEST(SnapshotStorePersistent, LoadsACowWithHoles) {
  // Committed out of order before a crash: chunk 3 and 4 missing.
  auto cow = cow_with({{10, 2}, {11, 5}, {12, 0}, {13, 6}});  // 12: the end, whatever its old
  auto store = make_exception_store("P", kC, cow);
  Loaded l = load(*store);
  ASSERT_FALSE(l.status);
  ASSERT_EQ(l.exceptions.size(), 2u);
  EXPECT_EQ(l.exceptions[1].old_chunk, 11u);
  EXPECT_EQ(l.exceptions[1].new_chunk, 5u);
  EXPECT_EQ(status_line(*store), "48/800 16");  // next_free = 6
  ChunkPair e = prepare(*store, 20);
  EXPECT_EQ(e.new_chunk, 6u);
  ASSERT_FALSE(commit(*store, e));
  ChunkPair third = slot_on_disk(*cow->memory(), 1, 2);  // appended after the two
  EXPECT_EQ(third.old_chunk, 20u);
  EXPECT_EQ(third.new_chunk, 6u);
}

TEST(SnapshotStorePersistent, LoadSkipsTheNextAreaWhenTheHighestChunkIsBeforeIt) {
  auto cow = cow_with({{1, 257}}, 400);
  auto store = make_exception_store("P", kC, cow);
  ASSERT_FALSE(load(*store).status);
  EXPECT_EQ(prepare(*store, 2).new_chunk, 259u);  // 258 is area 1
}

// ---------------------------------------------------------------------------
// Merging.

TEST(SnapshotStorePersistent, MergeBatchesRunsBackwardsAndZeroesSlots) {
  auto cow = new_cow(8 * 100);
  auto store = open_loaded(cow);
  // Slots: 100..104 -> 2..6, then 50 -> 7, 51 -> 8 (a run of its own).
  for (Chunk old : {100, 101, 102, 103, 104, 50, 51})
    ASSERT_FALSE(commit(*store, prepare(*store, old)));
  MemoryDevice& m = *cow->memory();
  Chunk last_old = 0, last_new = 0;
  unsigned n = 0;
  ASSERT_FALSE(run_sync(store->prepare_merge(last_old, last_new, n)));
  EXPECT_EQ(last_old, 51u);
  EXPECT_EQ(last_new, 8u);
  EXPECT_EQ(n, 2u);
  cow->clear();
  ASSERT_FALSE(run_sync(store->commit_merge(2)));
  EXPECT_EQ(writes_and_flushes(*cow),
            (std::vector<BioRecord>{flush_rec(), write_rec(8, 8, kBioFua)}));
  EXPECT_EQ(slot_on_disk(m, 1, 5).new_chunk, 0u);
  EXPECT_EQ(slot_on_disk(m, 1, 5).old_chunk, 0u);
  EXPECT_EQ(slot_on_disk(m, 1, 4).old_chunk, 104u);
  EXPECT_EQ(status_line(*store), "56/800 16");  // next_free = 1 + 5 + 1

  ASSERT_FALSE(run_sync(store->prepare_merge(last_old, last_new, n)));
  EXPECT_EQ(last_old, 104u);
  EXPECT_EQ(last_new, 6u);
  EXPECT_EQ(n, 5u);
  EXPECT_EQ(run_sync(store->commit_merge(6)), errno_status(EINVAL));
  ASSERT_FALSE(run_sync(store->commit_merge(3)));  // part of a batch
  ASSERT_FALSE(run_sync(store->prepare_merge(last_old, last_new, n)));
  EXPECT_EQ(last_old, 101u);
  EXPECT_EQ(n, 2u);
  ASSERT_FALSE(run_sync(store->commit_merge(2)));
  EXPECT_EQ(status_line(*store), "16/800 16");  // finished: allocated == metadata == 2C
  ASSERT_FALSE(run_sync(store->prepare_merge(last_old, last_new, n)));
  EXPECT_EQ(n, 0u);
  EXPECT_TRUE(all_are(m.bytes(8, 8), 0));
  EXPECT_EQ(pstore::decode_header(m.bytes(0, 1)).valid, 1u);  // the header stays
}

TEST(SnapshotStorePersistent, MergeStepsBackAnAreaAfterReload) {
  auto cow = new_cow(8 * 800);
  {
    auto store = open_loaded(cow);
    for (uint32_t k = 0; k < 300; ++k) ASSERT_FALSE(commit(*store, prepare(*store, 1000 + k)));
  }
  auto store = make_exception_store("P", kC, cow);
  ASSERT_FALSE(load(*store).status);
  Chunk last_old = 0, last_new = 0;
  unsigned n = 0;
  ASSERT_FALSE(run_sync(store->prepare_merge(last_old, last_new, n)));
  EXPECT_EQ(last_old, 1299u);
  EXPECT_EQ(last_new, 302u);
  EXPECT_EQ(n, 44u);  // area 1 only
  ASSERT_FALSE(run_sync(store->commit_merge(44)));
  EXPECT_EQ(status_line(*store), "2072/6400 24");  // next_free = 258 + 0 + 1
  EXPECT_TRUE(all_are(cow->memory()->bytes(258 * 8, 8), 0));
  cow->clear();
  ASSERT_FALSE(run_sync(store->prepare_merge(last_old, last_new, n)));
  EXPECT_EQ(cow->bios(), (std::vector<BioRecord>{{BioOp::read, 8, 8, 0}}));  // area 0 re-read
  EXPECT_EQ(last_old, 1255u);
  EXPECT_EQ(last_new, 257u);
  EXPECT_EQ(n, 256u);  // the whole area, never into the one before
  EXPECT_EQ(status_line(*store), "2072/6400 16");
  ASSERT_FALSE(run_sync(store->commit_merge(256)));
  EXPECT_EQ(status_line(*store), "16/6400 16");
  ASSERT_FALSE(run_sync(store->prepare_merge(last_old, last_new, n)));
  EXPECT_EQ(n, 0u);
  EXPECT_TRUE(all_are(cow->memory()->bytes(8, 8), 0));
}

TEST(SnapshotStorePersistent, MergeWriteErrorIsReturned) {
  auto cow = new_cow(8 * 100);
  auto store = open_loaded(cow);
  ASSERT_FALSE(commit(*store, prepare(*store, 4)));
  Chunk o = 0, nw = 0;
  unsigned n = 0;
  ASSERT_FALSE(run_sync(store->prepare_merge(o, nw, n)));
  cow->fail_all(errno_status(EIO));
  EXPECT_EQ(run_sync(store->commit_merge(1)), errno_status(EIO));
}

// ---------------------------------------------------------------------------
// Crashes.

// Groups of exceptions committed side by side and out of order, each one's
// data chunk written first (as the snapshot's copy does) with a pattern of
// its origin chunk. What a crash at any point leaves must load, hold every
// exception whose commit said ok, and nothing that points at a chunk whose
// data is not there.
struct CrashRun {
  std::map<Chunk, Chunk> prepared;  // old -> new
  std::set<Chunk> acknowledged;     // old chunks whose commit returned ok
  uint64_t ops = 0;                 // writes and flushes the run sent
};

uint8_t tag(Chunk old_chunk) {
  return static_cast<uint8_t>(old_chunk * 7 + 1);
}

constexpr uint32_t kCrashC = 1;  // E = 32: many areas fill up

Task<Status> copy_then_commit(ExceptionStore& store, BlockDevice& cow, ChunkPair e, CrashRun& run) {
  std::vector<std::byte> data(kCrashC * 512, std::byte{tag(e.old_chunk)});
  Status st = co_await write_sectors(cow, e.new_chunk * kCrashC, data);
  Status committed = co_await store.commit_exception(e, !st);
  if (!committed) run.acknowledged.insert(e.old_chunk);
  co_return committed;
}

Task<void> crash_workload(ExceptionStore& store, BlockDevice& cow, CrashRun& run, uint64_t seed) {
  std::mt19937_64 random(seed);
  Chunk old_chunk = 0;
  for (int group = 0; group < 40; ++group) {
    std::vector<ChunkPair> es;
    const int n = 1 + static_cast<int>(random() % 4);
    for (int i = 0; i < n; ++i) {
      ChunkPair e{old_chunk, 0};
      old_chunk += 1 + random() % 2;  // runs and gaps
      if (store.prepare_exception(e.old_chunk, e.new_chunk)) co_return;
      run.prepared[e.old_chunk] = e.new_chunk;
      es.push_back(e);
    }
    std::shuffle(es.begin(), es.end(), random);
    std::vector<Task<Status>> tasks;
    for (ChunkPair e : es) tasks.push_back(copy_then_commit(store, cow, e, run));
    co_await when_all(tasks);
  }
}

// One run with the power gone after `allowed` writes and flushes (none: the
// whole run), then checks of what a reload finds.
CrashRun crash_run(uint64_t allowed, uint64_t seed, std::optional<uint64_t> keep_seed) {
  auto memory = std::make_shared<MemoryDevice>(4096 * kCrashC);
  memory->fill_pattern(0x5A);
  std::memset(memory->bytes(0, 1).data(), 0, 512);
  auto recording = std::make_shared<RecordingDevice>(memory, "count");
  auto crash = std::make_shared<CrashDevice>(recording);
  CrashRun run;
  {
    auto store = open_loaded(crash, kCrashC);
    recording->clear();
    crash->power_off_after(allowed);
    run_sync(crash_workload(*store, *crash, run, seed));
    run.ops = writes_and_flushes(*recording).size();
    EXPECT_FALSE(run_sync(crash->crash(keep_seed)));
  }
  auto store = make_exception_store("P", kCrashC, memory);
  Loaded l = load(*store);
  EXPECT_FALSE(l.status) << l.status.message();
  EXPECT_TRUE(l.valid);
  std::set<Chunk> present;
  for (ChunkPair e : l.exceptions) {
    EXPECT_TRUE(present.insert(e.old_chunk).second) << "twice: " << e.old_chunk;
    auto it = run.prepared.find(e.old_chunk);
    if (it == run.prepared.end()) {
      ADD_FAILURE() << "never prepared: " << e.old_chunk;
      continue;
    }
    EXPECT_EQ(e.new_chunk, it->second);
    EXPECT_TRUE(all_are(memory->bytes(e.new_chunk * kCrashC, kCrashC), tag(e.old_chunk)))
        << "exception " << e.old_chunk << " -> " << e.new_chunk << " without its data";
  }
  for (Chunk old : run.acknowledged) EXPECT_TRUE(present.count(old)) << "lost: " << old;
  return run;
}

TEST(SnapshotStoreCrash, EveryAcknowledgedCommitSurvivesACrashAtAnyWrite) {
  const CrashRun whole = crash_run(UINT64_MAX, 1, std::nullopt);
  ASSERT_GT(whole.ops, 100u);
  EXPECT_EQ(whole.acknowledged.size(), whole.prepared.size());
  for (uint64_t at = 0; at <= whole.ops; ++at) {
    SCOPED_TRACE("power lost after " + std::to_string(at) + " writes");
    crash_run(at, 1, std::nullopt);
    if (HasFailure()) return;
  }
}

TEST(SnapshotStoreCrash, SurvivesADiskThatKeepsSomeVolatileWrites) {
  const CrashRun whole = crash_run(UINT64_MAX, 2, std::nullopt);
  for (uint64_t at = 0; at <= whole.ops; at += 3) {
    SCOPED_TRACE("power lost after " + std::to_string(at) + " writes");
    crash_run(at, 2, at * 31 + 7);
    if (HasFailure()) return;
  }
}

TEST(SnapshotStoreCrash, ACrashWhileCreatingLeavesANewOrAValidStore) {
  for (uint64_t at = 0; at <= 3; ++at) {
    auto memory = std::make_shared<MemoryDevice>(64 * kC);
    memory->fill_pattern(0x33);
    std::memset(memory->bytes(0, 1).data(), 0, 512);
    auto crash = std::make_shared<CrashDevice>(memory);
    crash->power_off_after(at);
    {
      auto store = make_exception_store("P", kC, crash);
      load(*store);
    }
    ASSERT_FALSE(run_sync(crash->crash()));
    auto store = make_exception_store("P", kC, memory);
    Loaded l = load(*store);
    ASSERT_FALSE(l.status);
    EXPECT_TRUE(l.valid);
    EXPECT_TRUE(l.exceptions.empty()) << at;
    EXPECT_TRUE(all_are(memory->bytes(kC, kC), 0)) << at;
  }
}

// ---------------------------------------------------------------------------
// The transient store.

TEST(SnapshotStoreTransient, ChunksFromZeroUntilFull) {
  auto cow = std::make_shared<RecordingDevice>("cow", 44);
  auto store = make_exception_store("N", kC, cow);
  Loaded l = load(*store);
  ASSERT_FALSE(l.status);
  EXPECT_TRUE(l.valid);
  EXPECT_EQ(status_line(*store), "0/44 0");
  for (Chunk k = 0; k < 5; ++k) EXPECT_EQ(prepare(*store, 100 + k).new_chunk, k);
  Chunk n = 0;
  EXPECT_EQ(store->prepare_exception(9, n), errno_status(ENOSPC));
  EXPECT_EQ(status_line(*store), "40/44 0");
  for (Status st : commit_all(*store, {{102, 2}, {100, 0}, {101, 1}})) EXPECT_FALSE(st);
  EXPECT_EQ(commit(*store, {103, 3}, false), errno_status(EIO));
  EXPECT_FALSE(commit(*store, {104, 4}));
  EXPECT_TRUE(cow->bios().empty());  // nothing of its own on the COW
  run_sync(store->drop_snapshot());
  EXPECT_TRUE(cow->bios().empty());
  unsigned count = 7;
  Chunk a = 0, b = 0;
  EXPECT_EQ(run_sync(store->prepare_merge(a, b, count)), errno_status(EOPNOTSUPP));
  EXPECT_EQ(count, 0u);
}

TEST(SnapshotStoreTransient, CommitsAnswerInAllocationOrder) {
  auto cow = std::make_shared<MemoryDevice>(800);
  auto store = make_exception_store("N", kC, cow);
  ASSERT_FALSE(load(*store).status);
  ChunkPair a = prepare(*store, 1), b = prepare(*store, 2);
  Loop loop;
  std::optional<Status> done_a, done_b;
  loop.spawn(store->commit_exception(b, true), done_b);
  loop.run();
  EXPECT_FALSE(done_b);
  loop.spawn(store->commit_exception(a, true), done_a);
  loop.run();
  EXPECT_TRUE(done_a && done_b);
}

// ---------------------------------------------------------------------------
// The in-memory table.

TEST(ExceptionTable, InsertLookupReplaceErase) {
  ExceptionTable t;
  Chunk out = 99;
  EXPECT_FALSE(t.lookup(5, out));
  EXPECT_FALSE(t.erase(5));
  EXPECT_EQ(t.memory_bytes(), 0u);
  t.insert(5, 0);  // a transient store's first COW chunk
  EXPECT_TRUE(t.lookup(5, out));
  EXPECT_EQ(out, 0u);
  t.insert(0, 7);
  t.insert(5, 9);  // replaces
  EXPECT_EQ(t.size(), 2u);
  EXPECT_TRUE(t.lookup(5, out));
  EXPECT_EQ(out, 9u);
  EXPECT_TRUE(t.lookup(0, out));
  EXPECT_EQ(out, 7u);
  EXPECT_FALSE(t.lookup(~Chunk{0}, out));
  EXPECT_THROW(t.insert(~Chunk{0}, 1), std::invalid_argument);
  EXPECT_TRUE(t.erase(5));
  EXPECT_FALSE(t.lookup(5, out));
  EXPECT_FALSE(t.erase(5));
  EXPECT_TRUE(t.erase(0));
  EXPECT_EQ(t.size(), 0u);
  EXPECT_EQ(t.memory_bytes(), 0u);
}

TEST(ExceptionTable, AgreesWithAReferenceMapUnderRandomOperations) {
  ExceptionTable t;
  std::unordered_map<Chunk, Chunk> ref;
  std::mt19937_64 random(42);
  for (int i = 0; i < 300000; ++i) {
    // Keys in a small range so that erase and replace hit; runs and strides
    // like an origin's chunks.
    const Chunk key = (random() % 4 == 0) ? random() : random() % 20000;
    switch (random() % 3) {
      case 0:
      case 1: {
        const Chunk v = random();
        t.insert(key, v);
        ref[key] = v;
        break;
      }
      default:
        ASSERT_EQ(t.erase(key), ref.erase(key) == 1) << i;
    }
    ASSERT_EQ(t.size(), ref.size());
    if (t.size() > 0) {
      ASSERT_LE(t.memory_bytes(), 32 * t.size()) << i;
    }
  }
  Chunk out = 0;
  for (auto [k, v] : ref) {
    ASSERT_TRUE(t.lookup(k, out)) << k;
    ASSERT_EQ(out, v);
  }
  for (Chunk k = 0; k < 20000; ++k) ASSERT_EQ(t.lookup(k, out), ref.count(k) == 1) << k;
}

TEST(ExceptionTable, AtMostThirtyTwoBytesPerExceptionAtAnySize) {
  ExceptionTable t;
  size_t growths = 0, capacity = 0;
  double worst = 0;
  constexpr size_t kN = 1'000'000;
  for (size_t i = 0; i < kN; ++i) {
    t.insert(i * 3 + 17, i);
    if (t.capacity() != capacity) {
      ++growths;
      capacity = t.capacity();
    }
    const double per = static_cast<double>(t.memory_bytes()) / static_cast<double>(t.size());
    worst = std::max(worst, per);
    ASSERT_LE(t.memory_bytes(), 32 * t.size()) << "at " << t.size();
  }
  EXPECT_GT(growths, 20u);
  EXPECT_LE(t.memory_bytes(), 32 * kN);
  EXPECT_LE(worst, 32.0);
  RecordProperty("worst_bytes_per_exception", std::to_string(worst));
  Chunk out = 0;
  for (size_t i = 0; i < kN; i += 997) {
    ASSERT_TRUE(t.lookup(i * 3 + 17, out));
    ASSERT_EQ(out, i);
    ASSERT_FALSE(t.lookup(i * 3 + 18, out));
  }
  // And while a merge empties it, newest first.
  for (size_t i = kN; i-- > 0;) {
    ASSERT_TRUE(t.erase(i * 3 + 17));
    if (t.size() > 0) {
      ASSERT_LE(t.memory_bytes(), 32 * t.size()) << "at " << t.size();
    }
  }
  EXPECT_EQ(t.memory_bytes(), 0u);
}

}  // namespace
}  // namespace dmnbd::snapshot
