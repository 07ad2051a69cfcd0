// thin's persistent data: btrees against a model, and pool metadata that
// thin_check accepts and thin_dump reads back as the operations left it.
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include "../../targets/thin/btree.hpp"
#include "../../targets/thin/btree_node.hpp"
#include "../../targets/thin/metadata_checker.hpp"
#include "../../targets/thin/pool_metadata.hpp"
#include "devices/crash_device.hpp"
#include "devices/memory_device.hpp"
#include "test_support.hpp"

namespace dmnbd::thin {
namespace {

using test::run_sync;

std::string run_tool(const std::string& command, int& rc) {
  std::string out;
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  rc = pclose(p);
  rc = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  return out;
}

bool have_thin_tools() {
  return std::system("command -v thin_check >/dev/null 2>&1") == 0;
}

// A btree of u64 values in memory, with a model beside it.
class BTreeTest : public ::testing::Test {
 protected:
  BTreeTest()
      : disk_(std::make_shared<test::MemoryDevice>(uint64_t{8} * 8192)),
        cache_(*disk_, kMetadataBlockBytes, 256),
        counts_(8192),
        tm_(cache_, counts_),
        tree_(tm_, type_) {
    EXPECT_FALSE(counts_.set(0, 1));  // block 0 stands for the superblock
  }

  // Every node reachable from `roots` counted once per holder must equal
  // the space map's counts, and nothing else may be allocated.
  void expect_counts_match(const std::vector<uint64_t>& roots) {
    std::map<uint64_t, uint32_t> expected{{0, 1}};
    std::vector<uint64_t> todo = roots;
    std::set<uint64_t> seen;
    while (!todo.empty()) {
      const uint64_t b = todo.back();
      todo.pop_back();
      if (expected[b]++ > 0) continue;
      std::vector<uint64_t> children;
      run_sync([&]() -> Task<void> {
        TransactionManager::Ref ref;
        Status st = co_await tm_.read(b, BlockKind::btree_node, ref);
        EXPECT_FALSE(st) << st.message();
        if (st) co_return;
        const NodeView n(ref.data());
        if (!n.leaf())
          for (uint32_t i = 0; i < n.nr(); ++i) children.push_back(n.child(i));
      }());
      todo.insert(todo.end(), children.begin(), children.end());
    }
    uint64_t allocated = 0;
    for (uint64_t b = 0; b < counts_.nr_blocks(); ++b) {
      auto it = expected.find(b);
      const uint32_t want = it == expected.end() ? 0 : it->second;
      ASSERT_EQ(counts_.count(b), want) << "block " << b;
      allocated += want != 0;
    }
    EXPECT_EQ(counts_.nr_allocated(), allocated);
  }

  std::map<uint64_t, uint64_t> contents(uint64_t root) {
    std::map<uint64_t, uint64_t> out;
    uint64_t last = 0;
    bool first = true;
    const BTree::Visitor visit = [&](uint64_t k, const std::byte* v) {
      EXPECT_TRUE(first || k > last) << "keys out of order at " << k;
      first = false;
      last = k;
      out[k] = get_le64(v);
      return true;
    };
    EXPECT_FALSE(run_sync(tree_.walk(root, visit)));
    return out;
  }

  std::shared_ptr<test::MemoryDevice> disk_;
  BlockCache cache_;
  RefCounts counts_;
  TransactionManager tm_;
  ValueType type_{8};
  BTree tree_;
};

TEST_F(BTreeTest, RandomInsertsAndRemovesMatchAModel) {
  std::mt19937_64 rng(42);
  uint64_t root = 0;
  ASSERT_FALSE(run_sync(tree_.create(root)));
  std::map<uint64_t, uint64_t> model;
  for (int step = 0; step < 6000; ++step) {
    // Phases of growth and shrinkage, so nodes split and merge.
    const bool grow = (step / 1500) % 2 == 0;
    const uint64_t key = rng() % 3000;
    if (rng() % 100 < (grow ? 75u : 25u)) {
      const uint64_t value = rng();
      std::byte v[8];
      put_le64(v, value);
      bool inserted = false;
      ASSERT_FALSE(run_sync(tree_.insert(root, key, v, &inserted)));
      EXPECT_EQ(inserted, model.count(key) == 0);
      model[key] = value;
    } else {
      bool removed = false;
      ASSERT_FALSE(run_sync(tree_.remove(root, key, &removed)));
      EXPECT_EQ(removed, model.erase(key) == 1);
    }
    if (step % 500 == 0) {
      ASSERT_EQ(contents(root), model) << "step " << step;
      expect_counts_match({root});
    }
    std::byte v[8];
    bool found = false;
    const uint64_t probe = rng() % 3000;
    ASSERT_FALSE(run_sync(tree_.lookup(root, probe, v, found)));
    ASSERT_EQ(found, model.count(probe) == 1);
    if (found) {
      ASSERT_EQ(get_le64(v), model[probe]);
    }
  }
  EXPECT_EQ(contents(root), model);
  expect_counts_match({root});
  uint64_t removed = 0;
  ASSERT_FALSE(run_sync(tree_.remove_range(root, 1000, 2000, removed)));
  EXPECT_EQ(removed, std::distance(model.lower_bound(1000), model.lower_bound(2000)));
  model.erase(model.lower_bound(1000), model.lower_bound(2000));
  EXPECT_EQ(contents(root), model);
  expect_counts_match({root});
}

TEST_F(BTreeTest, ASharedTreeIsCopiedOnWriteAndBothKeepTheirContents) {
  uint64_t a = 0;
  ASSERT_FALSE(run_sync(tree_.create(a)));
  std::map<uint64_t, uint64_t> model_a;
  for (uint64_t k = 0; k < 2000; ++k) {
    std::byte v[8];
    put_le64(v, k * 7);
    ASSERT_FALSE(run_sync(tree_.insert(a, k, v)));
    model_a[k] = k * 7;
  }
  // A second holder of the same root: a snapshot.
  ASSERT_FALSE(tm_.inc(a));
  uint64_t b = a;
  auto model_b = model_a;
  std::mt19937_64 rng(7);
  for (int i = 0; i < 800; ++i) {
    const uint64_t key = rng() % 2500;
    std::byte v[8];
    put_le64(v, 1000000 + i);
    ASSERT_FALSE(run_sync(tree_.insert(b, key, v)));
    model_b[key] = 1000000 + i;
    const uint64_t gone = rng() % 2500;
    ASSERT_FALSE(run_sync(tree_.remove(b, gone)));
    model_b.erase(gone);
  }
  EXPECT_EQ(contents(a), model_a);
  EXPECT_EQ(contents(b), model_b);
  expect_counts_match({a, b});
  ASSERT_FALSE(run_sync(tree_.del(a)));
  EXPECT_EQ(contents(b), model_b);
  expect_counts_match({b});
}

TEST_F(BTreeTest, BuildMakesNodesAThirdFullOrMore) {
  for (uint64_t n : {0u, 1u, 252u, 253u, 1000u, 70000u}) {
    std::vector<uint64_t> keys;
    std::vector<std::byte> values(n * 8);
    for (uint64_t i = 0; i < n; ++i) {
      keys.push_back(i * 3);
      put_le64(values.data() + i * 8, i);
    }
    uint64_t root = 0;
    ASSERT_FALSE(run_sync(tree_.build(keys, values, root)));
    const auto got = contents(root);
    ASSERT_EQ(got.size(), n);
    std::vector<uint64_t> nodes;
    ASSERT_FALSE(run_sync(tree_.nodes(root, nodes)));
    for (uint64_t b : nodes) {
      if (b == root) continue;
      run_sync([&]() -> Task<void> {
        TransactionManager::Ref ref;
        EXPECT_FALSE(co_await tm_.read(b, BlockKind::btree_node, ref));
        const NodeView node(ref.data());
        EXPECT_GE(node.nr(), node.max() / 3);
      }());
    }
    ASSERT_FALSE(run_sync(tree_.del(root)));
  }
  expect_counts_match({});
}

// ---- pool metadata on a file, checked by thin-provisioning-tools ----

class PoolMetadataTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_thin_tools()) GTEST_SKIP() << "thin-provisioning-tools not installed";
    meta_path_ = dir_ / "meta";
    std::filesystem::resize_file(create(meta_path_), 4 << 20);
  }
  static std::filesystem::path create(const std::filesystem::path& p) {
    std::ofstream(p, std::ios::binary).flush();
    return p;
  }
  std::unique_ptr<PoolMetadata> open(uint32_t block_sectors = 128) {
    auto dev = FileDevice::open(meta_path_, false);
    std::unique_ptr<PoolMetadata> pmd;
    std::string error;
    Status st = run_sync(PoolMetadata::open(dev, block_sectors, false, pmd, error));
    EXPECT_FALSE(st) << error << ": " << st.message();
    return pmd;
  }
  void expect_thin_check_passes(const std::string& extra = "") {
    int rc = 0;
    const std::string out = run_tool("thin_check " + extra + " " + meta_path_.string(), rc);
    EXPECT_EQ(rc, 0) << out;
  }
  MetadataCheck own_check() {
    auto dev = FileDevice::open(meta_path_, true);
    return run_sync(check_metadata(*dev));
  }
  static std::string joined(const MetadataCheck& c) {
    std::string out;
    for (const auto& e : c.errors) out += e + "\n";
    return out;
  }
  std::string thin_dump(const std::string& extra = "") {
    int rc = 0;
    std::string out = run_tool("thin_dump " + extra + " " + meta_path_.string(), rc);
    EXPECT_EQ(rc, 0) << out;
    return out;
  }

  test::TempDir dir_;
  std::filesystem::path meta_path_;
};

TEST_F(PoolMetadataTest, AFreshPoolPassesThinCheck) {
  auto pmd = open();
  ASSERT_TRUE(pmd);
  pmd.reset();
  expect_thin_check_passes();
  const std::string xml = thin_dump();
  EXPECT_NE(xml.find("data_block_size=\"128\""), std::string::npos) << xml;
  EXPECT_NE(xml.find("nr_data_blocks=\"0\""), std::string::npos) << xml;
}

TEST_F(PoolMetadataTest, MappingsSnapshotsAndDeletesAreWhatThinDumpShows) {
  auto pmd = open();
  ASSERT_TRUE(pmd);
  ASSERT_FALSE(pmd->resize_data(1000));
  ASSERT_FALSE(run_sync(pmd->create_thin(1)));
  for (uint64_t v = 0; v < 600; ++v) {
    uint64_t d = 0;
    ASSERT_FALSE(pmd->alloc_data_block(d));
    ASSERT_FALSE(run_sync(pmd->insert_block(1, v * 2, d)));
  }
  ASSERT_FALSE(run_sync(pmd->commit()));
  expect_thin_check_passes();
  ASSERT_FALSE(run_sync(pmd->create_snap(2, 1)));
  // Break sharing of a few blocks on the origin.
  for (uint64_t v : {0u, 10u, 500u}) {
    std::optional<PoolMetadata::Mapping> m;
    ASSERT_FALSE(run_sync(pmd->find_block(1, v, m)));
    ASSERT_TRUE(m && m->shared);
    uint64_t d = 0;
    ASSERT_FALSE(pmd->alloc_data_block(d));
    ASSERT_FALSE(run_sync(pmd->insert_block(1, v, d)));
  }
  ASSERT_FALSE(pmd->set_transaction_id(0, 9));
  ASSERT_FALSE(run_sync(pmd->commit()));
  expect_thin_check_passes();
  EXPECT_EQ(pmd->data_block_count(0), 1u);  // v0 of dev 1 moved away; dev 2 keeps d0
  EXPECT_EQ(pmd->data_block_count(1), 2u);
  EXPECT_EQ(pmd->usage().data_free, 1000u - 603u);

  ASSERT_FALSE(run_sync(pmd->reserve_metadata_snap()));
  uint64_t removed = 0;
  ASSERT_FALSE(run_sync(pmd->remove_range(2, 0, 200, removed)));
  EXPECT_EQ(removed, 100u);
  ASSERT_FALSE(run_sync(pmd->commit()));
  expect_thin_check_passes();
  expect_thin_check_passes("-m");
  ASSERT_FALSE(run_sync(pmd->release_metadata_snap()));
  ASSERT_FALSE(run_sync(pmd->delete_device(1)));
  ASSERT_FALSE(run_sync(pmd->commit()));
  pmd.reset();
  expect_thin_check_passes();
  const MetadataCheck own = own_check();
  EXPECT_TRUE(own.ok()) << joined(own);
  EXPECT_EQ(own.devices, 1u);
  EXPECT_EQ(own.mappings, 500u);
  EXPECT_EQ(own.data_used, 500u);
  const std::string xml = thin_dump();
  EXPECT_NE(xml.find("transaction=\"9\""), std::string::npos) << xml;
  EXPECT_EQ(xml.find("dev_id=\"1\""), std::string::npos) << xml;
  EXPECT_NE(xml.find("dev_id=\"2\""), std::string::npos) << xml;

  // Reopened, dev 2 holds its 500 blocks.
  pmd = open();
  ASSERT_TRUE(pmd);
  EXPECT_EQ(pmd->mapped_blocks(2), 500u);
  std::optional<uint64_t> highest;
  ASSERT_FALSE(run_sync(pmd->highest_mapped(2, highest)));
  EXPECT_EQ(highest, 1198u);
  EXPECT_EQ(pmd->usage().data_free, 1000u - 500u);
}

// thin_check 0.9.0 does not count data blocks; the project's check does.
TEST_F(PoolMetadataTest, TheOwnCheckFindsALeakedDataBlockThinCheckMisses) {
  auto pmd = open();
  ASSERT_TRUE(pmd);
  ASSERT_FALSE(pmd->resize_data(100));
  ASSERT_FALSE(run_sync(pmd->create_thin(1)));
  uint64_t d = 0;
  ASSERT_FALSE(pmd->alloc_data_block(d));
  ASSERT_FALSE(run_sync(pmd->insert_block(1, 7, d)));
  ASSERT_FALSE(pmd->inc_data_block(d));  // one holder too many
  ASSERT_FALSE(run_sync(pmd->commit()));
  pmd.reset();
  expect_thin_check_passes();
  const MetadataCheck own = own_check();
  ASSERT_FALSE(own.ok());
  EXPECT_NE(joined(own).find("data space map: block " + std::to_string(d) +
                             " has count 2, its references make 1"),
            std::string::npos)
      << joined(own);
}

// Power lost after every number of metadata writes in turn: the pool opens
// again at its last commit (every mapping committed before is there, none
// that no commit covered), and thin_check accepts the metadata.
TEST(ThinCrashTest, APoolLosingPowerAtAnyWriteOpensAtItsLastCommit) {
  const bool check = have_thin_tools();
  test::TempDir dir;
  for (uint64_t writes = 1; writes < 400; writes += 17) {
    auto disk = std::make_shared<test::MemoryDevice>(uint64_t{8} * 1024);
    auto crash = std::make_shared<test::CrashDevice>(disk);
    crash->power_off_after(writes);
    std::map<uint64_t, uint64_t> committed;  // vblock -> data block, as of the last commit
    std::map<uint64_t, uint64_t> inserted;   // everything inserted since then too
    std::unique_ptr<PoolMetadata> pmd;
    std::string error;
    bool formatted = false;
    if (!run_sync(PoolMetadata::open(crash, 128, false, pmd, error))) {
      formatted = true;
      bool alive = !pmd->resize_data(2000) && !run_sync(pmd->create_thin(1));
      for (uint64_t v = 0; alive && v < 1200; ++v) {
        uint64_t d = 0;
        alive = !pmd->alloc_data_block(d) && !run_sync(pmd->insert_block(1, v * 3 % 1201, d));
        if (alive) inserted[v * 3 % 1201] = d;
        if (alive && v % 100 == 99) {
          alive = !run_sync(pmd->commit());
          if (alive) committed = inserted;
        }
        if (alive && v == 600) alive = !run_sync(pmd->create_snap(2, 1));
      }
    }
    pmd.reset();
    ASSERT_FALSE(run_sync(crash->crash()));
    std::unique_ptr<PoolMetadata> again;
    Status st = run_sync(PoolMetadata::open(disk, 128, false, again, error));
    ASSERT_FALSE(st) << "after " << writes << " writes: " << error;
    if (!formatted || committed.empty()) continue;
    for (const auto& [v, d] : committed) {
      std::optional<PoolMetadata::Mapping> m;
      ASSERT_FALSE(run_sync(again->find_block(1, v, m)));
      ASSERT_TRUE(m) << "committed block " << v << " lost after " << writes << " writes";
      // A later commit may have remapped it (never here: each block once).
      EXPECT_EQ(m->data_block, d);
    }
    EXPECT_GE(again->mapped_blocks(1), committed.size());
    EXPECT_LE(again->mapped_blocks(1), inserted.size());
    again.reset();
    const MetadataCheck own = run_sync(check_metadata(*disk));
    ASSERT_TRUE(own.ok()) << "after " << writes << " writes: " << own.errors.front();
    if (check) {
      const auto path = dir / "meta";
      std::ofstream(path, std::ios::binary)
          .write(reinterpret_cast<const char*>(disk->bytes().data()),
                 static_cast<std::streamsize>(disk->bytes().size()));
      int rc = 0;
      const std::string out = run_tool("thin_check " + path.string(), rc);
      ASSERT_EQ(rc, 0) << "after " << writes << " writes: " << out;
    }
  }
}

}  // namespace
}  // namespace dmnbd::thin
