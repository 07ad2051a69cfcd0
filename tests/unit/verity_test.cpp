// The verity target: the kernel's constructor checks and errors, the tree's
// geometry, and reads of images whose trees are built here with OpenSSL, the
// way veritysetup format builds them (independently of the target's code),
// then damaged one byte at a time.
#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <bit>
#include <cctype>
#include <cstring>
#include <fstream>
#include <random>
#include <thread>

#include "../../targets/verity/hash_tree.hpp"
#include "../../targets/verity/verity_geometry.hpp"
#include "../../targets/verity/verity_hash.hpp"
#include "dm/table.hpp"
#include "test_support.hpp"

namespace dmnbd {
namespace {

using test::run_sync;

// ---- an independent tree builder (veritysetup's VERITY_create)

struct TreeSpec {
  unsigned version = 1;
  unsigned data_block = 4096, hash_block = 4096;
  std::string alg = "sha256";
  std::string salt_hex = "-";
  uint64_t hash_start = 0;  // in hash blocks
};

std::vector<uint8_t> unhex(const std::string& hex) {
  std::vector<uint8_t> out;
  if (hex == "-") return out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

std::string hex(const std::vector<uint8_t>& bytes) {
  std::string out;
  char buf[3];
  for (uint8_t b : bytes) {
    std::snprintf(buf, sizeof buf, "%02x", b);
    out += buf;
  }
  return out;
}

std::vector<uint8_t> salted_digest(const TreeSpec& spec, const uint8_t* data, size_t size) {
  const std::vector<uint8_t> salt = unhex(spec.salt_hex);
  std::vector<uint8_t> input;
  if (spec.version == 1) input.insert(input.end(), salt.begin(), salt.end());
  input.insert(input.end(), data, data + size);
  if (spec.version == 0) input.insert(input.end(), salt.begin(), salt.end());
  std::vector<uint8_t> out(EVP_MAX_MD_SIZE);
  unsigned len = 0;
  const EVP_MD* md = EVP_get_digestbyname(spec.alg.c_str());
  EXPECT_TRUE(md);
  EXPECT_EQ(EVP_Digest(input.data(), input.size(), out.data(), &len, md, nullptr), 1);
  out.resize(len);
  return out;
}

struct Tree {
  std::vector<uint8_t> hash;  // the hash area, from hash_start on
  std::string root;
  std::vector<uint64_t> level_start;  // hash block (from hash_start) of each level, 0 lowest
};

// Level by level from the data up; stored top level first.
Tree build_tree(const TreeSpec& spec, const std::vector<uint8_t>& data) {
  const size_t ds = EVP_MD_get_size(EVP_get_digestbyname(spec.alg.c_str()));
  size_t per_block = 1;
  while (per_block * 2 * ds <= spec.hash_block) per_block *= 2;
  const size_t stride = spec.version == 0 ? ds : spec.hash_block / per_block;

  std::vector<std::vector<uint8_t>> digests;
  for (size_t off = 0; off < data.size(); off += spec.data_block)
    digests.push_back(salted_digest(spec, data.data() + off, spec.data_block));
  std::vector<std::vector<uint8_t>> levels;  // each level's bytes, lowest first
  while (digests.size() > 1) {
    const size_t blocks = (digests.size() + per_block - 1) / per_block;
    std::vector<uint8_t> level(blocks * spec.hash_block, 0);
    for (size_t i = 0; i < digests.size(); ++i)
      std::memcpy(&level[(i / per_block) * spec.hash_block + (i % per_block) * stride],
                  digests[i].data(), ds);
    digests.clear();
    for (size_t b = 0; b < blocks; ++b)
      digests.push_back(salted_digest(spec, &level[b * spec.hash_block], spec.hash_block));
    levels.push_back(std::move(level));
  }
  Tree tree;
  tree.root = hex(digests.at(0));
  tree.level_start.resize(levels.size());
  for (size_t i = levels.size(); i-- > 0;) {
    tree.level_start[i] = tree.hash.size() / spec.hash_block;
    tree.hash.insert(tree.hash.end(), levels[i].begin(), levels[i].end());
  }
  return tree;
}

void write_file(const std::filesystem::path& p, const std::vector<uint8_t>& bytes) {
  std::ofstream(p, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
}

void flip_byte(const std::filesystem::path& p, uint64_t offset) {
  std::fstream f(p, std::ios::binary | std::ios::in | std::ios::out);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x5a);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

std::vector<uint8_t> random_bytes(size_t size, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> out(size);
  for (auto& b : out) b = static_cast<uint8_t>(rng());
  return out;
}

// ---- fixture: data.img and hash.img, and a table over them

class VerityTest : public ::testing::Test {
 protected:
  // Writes data.img (`blocks` random data blocks, with `zero_blocks` zeroed)
  // and its tree: in hash.img, or in data.img after the data when
  // spec.hash_start says so (with a gap of hash_start blocks minus the data).
  void make_image(const TreeSpec& spec, uint64_t blocks, bool same_file = false,
                  std::vector<uint64_t> zero_blocks = {}) {
    spec_ = spec;
    blocks_ = blocks;
    data_ = random_bytes(blocks * spec.data_block, 1234 + blocks);
    for (uint64_t z : zero_blocks) std::memset(&data_[z * spec.data_block], 0, spec.data_block);
    tree_ = build_tree(spec, data_);
    std::vector<uint8_t> hash_file(spec.hash_start * spec.hash_block, 0);
    if (same_file) {
      EXPECT_GE(hash_file.size(), data_.size());
      std::memcpy(hash_file.data(), data_.data(), data_.size());
    }
    hash_file.insert(hash_file.end(), tree_.hash.begin(), tree_.hash.end());
    hash_name_ = same_file ? "data.img" : "hash.img";
    if (!same_file) write_file(dir_ / "data.img", data_);
    write_file(dir_ / hash_name_, hash_file);
  }

  uint64_t sectors() const { return blocks_ * spec_.data_block / 512; }

  std::string args(const std::string& opts = "") const {
    std::string line = std::to_string(spec_.version) + " data.img " + hash_name_ + " " +
                       std::to_string(spec_.data_block) + " " + std::to_string(spec_.hash_block) +
                       " " + std::to_string(blocks_) + " " + std::to_string(spec_.hash_start) +
                       " " + spec_.alg + " " + tree_.root + " " + spec_.salt_hex;
    return opts.empty() ? line : line + " " + opts;
  }
  std::string line(const std::string& opts = "") const {
    return "0 " + std::to_string(sectors()) + " verity " + args(opts) + "\n";
  }

  void load(const std::string& opts = "") {
    table_ = test::open_table(line(opts), resolver_, true, [this] { ++events_; });
  }
  Target& t() { return *table_->entries()[0].target; }
  std::string status() { return table_->status_text(); }

  // The reason a table is refused with, or "(built)".
  std::string error(const std::string& text, bool read_only = true) {
    try {
      test::open_table(text, resolver_, read_only);
    } catch (const TableError& e) {
      return e.reason();
    }
    return "(built)";
  }

  // Reads data blocks [block, block + count) through the target.
  Status read(uint64_t block, uint64_t count, std::vector<uint8_t>* out = nullptr) {
    std::vector<std::byte> buf(count * spec_.data_block);
    const uint64_t per = spec_.data_block / 512;
    Status st = run_sync(
        t().map({.op = BioOp::read, .sector = block * per, .sectors = count * per, .data = buf}));
    if (out) {
      out->resize(buf.size());
      std::memcpy(out->data(), buf.data(), buf.size());
    }
    return st;
  }
  bool reads_right(uint64_t block, uint64_t count) {
    std::vector<uint8_t> got;
    if (read(block, count, &got)) return false;
    return std::memcmp(got.data(), &data_[block * spec_.data_block], got.size()) == 0;
  }
  // Every block on its own: the ones that fail.
  std::vector<uint64_t> failing_blocks() {
    std::vector<uint64_t> out;
    for (uint64_t b = 0; b < blocks_; ++b)
      if (read(b, 1)) out.push_back(b);
    return out;
  }

  test::TempDir dir_;
  test::DirResolver resolver_{dir_.path()};
  TreeSpec spec_;
  uint64_t blocks_ = 0;
  std::vector<uint8_t> data_;
  Tree tree_;
  std::string hash_name_;
  std::shared_ptr<Table> table_;
  int events_ = 0;
};

std::vector<uint64_t> range(uint64_t lo, uint64_t hi) {
  std::vector<uint64_t> out;
  for (uint64_t b = lo; b < hi; ++b) out.push_back(b);
  return out;
}

// ---- constructor

TEST_F(VerityTest, EveryConstructorErrorInTheKernelsOrder) {
  make_image({}, 256);
  write_file(dir_ / "small.img", std::vector<uint8_t>(8192));
  write_file(dir_ / "fec.img", std::vector<uint8_t>(1 << 20));
  const std::string root = tree_.root;
  const std::string len = "0 2048 verity ";
  const std::string head = "1 data.img hash.img 4096 4096 256 0 sha256 ";
  struct Case {
    std::string args, error;
  };
  const std::vector<Case> cases = {
      {"1 data.img hash.img 4096 4096 256 0 sha256 " + root, "Not enough arguments"},
      // The option count is read first, before the version.
      {"2 data.img hash.img 4096 4096 256 0 sha256 " + root + " - 15 x",
       "Invalid number of feature args"},
      {"2 data.img hash.img 4096 4096 256 0 sha256 " + root + " - 2 x",
       "Invalid number of feature args"},
      {"2 data.img hash.img 4096 4096 256 0 sha256 " + root + " -", "Invalid version"},
      {"x data.img hash.img 4096 4096 256 0 sha256 " + root + " -", "Invalid version"},
      {"1 nope.img hash.img 4096 4096 256 0 sha256 " + root + " -", "Data device lookup failed"},
      {"1 data.img nope.img 4096 4096 256 0 sha256 " + root + " -", "Hash device lookup failed"},
      {"1 data.img hash.img 8192 4096 128 0 sha256 " + root + " -",
       "Invalid data device block size"},
      {"1 data.img hash.img 256 4096 8192 0 sha256 " + root + " -",
       "Invalid data device block size"},
      {"1 data.img hash.img 3000 4096 256 0 sha256 " + root + " -",
       "Invalid data device block size"},
      {"1 data.img hash.img 4096 256 256 0 sha256 " + root + " -",
       "Invalid hash device block size"},
      {"1 data.img hash.img 4096 6144 256 0 sha256 " + root + " -",
       "Invalid hash device block size"},
      {"1 data.img hash.img 4096 4096 x 0 sha256 " + root + " -", "Invalid data blocks"},
      {"1 data.img hash.img 4096 4096 4611686018427387904 0 sha256 " + root + " -",
       "Invalid data blocks"},
      {"1 data.img hash.img 4096 4096 255 0 sha256 " + root + " -", "Data device is too small"},
      {"1 data.img hash.img 4096 4096 256 x sha256 " + root + " -", "Invalid hash start"},
      {"1 data.img hash.img 4096 4096 256 4611686018427387904 sha256 " + root + " -",
       "Invalid hash start"},
      {"1 data.img hash.img 4096 4096 256 0 sha257 " + root + " -",
       "Cannot initialize hash function"},
      {"1 data.img hash.img 4096 4096 256 0 SHA256 " + root + " -",
       "Cannot initialize hash function"},
      {head + root.substr(2) + " -", "Invalid root digest"},
      {head + root + "00 -", "Invalid root digest"},
      {head + "g" + root.substr(1) + " -", "Invalid root digest"},
      {head + root + " abc", "Invalid salt"},
      {head + root + " zz", "Invalid salt"},
      {head + root + " - 1 frob", "Unrecognized verity feature request"},
      // Not in 6.1 (later kernels have them).
      {head + root + " - 1 restart_on_error", "Unrecognized verity feature request"},
      {head + root + " - 1 panic_on_error", "Unrecognized verity feature request"},
      {head + root + " - 2 ignore_corruption restart_on_corruption",
       "Conflicting error handling parameters"},
      {head + root + " - 2 panic_on_corruption panic_on_corruption",
       "Conflicting error handling parameters"},
      {head + root + " - 1 fec_roots", "FEC feature arguments require a value"},
      {head + root + " - 2 fec_roots 1", "Invalid fec_roots"},
      {head + root + " - 2 fec_roots 25", "Invalid fec_roots"},
      {head + root + " - 2 fec_roots 258", "Invalid fec_roots"},
      {head + root + " - 2 fec_blocks x", "Invalid fec_blocks"},
      {head + root + " - 2 fec_start x", "Invalid fec_start"},
      {head + root + " - 2 use_fec_from_device nope.img", "FEC device lookup failed"},
      {head + root + " - 1 root_hash_sig_key_desc",
       "DM Verity Sig Verification Signature key not specified"},
      {head + root + " - 2 root_hash_sig_key_desc mykey",
       "DM Verity Sig Verification Invalid key specified"},
      {"1 data.img hash.img 512 512 4294967296 0 sha256 " + root + " - 1 check_at_most_once",
       "device too large to use check_at_most_once"},
      {"1 data.img hash.img 512 512 2048 18446744073709551615 sha256 " + root + " -",
       "Hash device offset overflow"},
      {"1 data.img small.img 4096 4096 256 0 sha256 " + root + " -", "Hash device is too small"},
      {head + root + " - 2 use_fec_from_device fec.img", "Missing fec_roots"},
      {head + root + " - 4 use_fec_from_device fec.img fec_roots 2", "Missing fec_blocks"},
      {head + root + " - 6 use_fec_from_device fec.img fec_roots 2 fec_blocks 10",
       "Invalid fec_blocks"},
      {head + root + " - 6 use_fec_from_device fec.img fec_roots 2 fec_blocks 259",
       "FEC is not supported yet"},
      // fec_* without a device: FEC stays off, the kernel ignores them.
      {head + root + " - 4 fec_roots 2 fec_blocks 259", "(built)"},
      {head + root + " -", "(built)"},
  };
  for (const Case& c : cases) {
    const std::string got = error(len + c.args);
    const std::string want = c.error == "(built)" ? c.error : "verity: " + c.error;
    EXPECT_EQ(got.substr(0, want.size()), want) << c.args;
  }
  // The table must be read-only, before anything else is looked at.
  EXPECT_EQ(error(len + "x", false), "verity: Device must be readonly");
}

TEST_F(VerityTest, TheTableLineRoundTrips) {
  make_image({.salt_hex = "00ff10"}, 64);
  load("3 check_at_most_once IGNORE_ZERO_BLOCKS ignore_corruption");
  // The kernel's order and words, hex in lower case.
  const std::string want = line("3 ignore_corruption ignore_zero_blocks check_at_most_once");
  EXPECT_EQ(table_->table_text(), want);
  EXPECT_EQ(status(), "0 " + std::to_string(sectors()) + " verity V\n");
  // Upper-case hex is read and printed in lower case; printed tables reload.
  std::string upper = line();
  const size_t at = upper.find(tree_.root);
  for (size_t i = at; i < at + tree_.root.size(); ++i) upper[i] = std::toupper(upper[i]);
  table_ = test::open_table(upper, resolver_, true);
  EXPECT_EQ(table_->table_text(), line());
  table_ = test::open_table(want, resolver_, true);
  EXPECT_EQ(table_->table_text(), want);
  table_ = test::open_table(line("2 restart_on_corruption try_verify_in_tasklet"), resolver_, true);
  EXPECT_EQ(table_->table_text(), line("2 restart_on_corruption try_verify_in_tasklet"));
  table_ = test::open_table(line("1 panic_on_corruption"), resolver_, true);
  EXPECT_EQ(table_->table_text(), line("1 panic_on_corruption"));
  table_ = test::open_table(line("0"), resolver_, true);
  EXPECT_EQ(table_->table_text(), line());
}

// ---- geometry

verity::VerityGeometry geometry(unsigned version, unsigned dbits, unsigned hbits, unsigned ds,
                                uint64_t blocks, uint64_t start = 0) {
  verity::VerityGeometry g;
  g.version = version;
  g.data_block_bits = dbits;
  g.hash_block_bits = hbits;
  g.digest_size = ds;
  g.data_blocks = blocks;
  g.hash_start = start;
  g.compute();
  return g;
}

TEST(VerityGeometryTest, LevelsAndTheirBlocksAsTheKernelComputesThem) {
  // sha256, 4 KiB: 128 digests per block.
  auto g = geometry(1, 12, 12, 32, 256, 1);
  EXPECT_EQ(g.hash_per_block_bits, 7u);
  EXPECT_EQ(g.levels, 2u);
  EXPECT_EQ(g.hash_level_block[1], 1u);  // the top level first
  EXPECT_EQ(g.hash_level_block[0], 2u);
  EXPECT_EQ(g.hash_blocks, 4u);
  EXPECT_EQ(geometry(1, 12, 12, 32, 1).levels, 0u);
  EXPECT_EQ(geometry(1, 12, 12, 32, 0).levels, 0u);
  EXPECT_EQ(geometry(1, 12, 12, 32, 128).levels, 1u);
  EXPECT_EQ(geometry(1, 12, 12, 32, 129).levels, 2u);
  EXPECT_EQ(geometry(1, 12, 12, 32, 16384).levels, 2u);
  g = geometry(1, 12, 12, 32, 16385);
  EXPECT_EQ(g.levels, 3u);
  EXPECT_EQ(g.hash_level_block[2], 0u);
  EXPECT_EQ(g.hash_level_block[1], 1u);
  EXPECT_EQ(g.hash_level_block[0], 3u);
  EXPECT_EQ(g.hash_blocks, 3u + 129u);
  // sha1 (20 bytes): still 128 per 4 KiB block (__fls(204) = 7); 512-byte
  // blocks of sha256: 16; of sha512: 8.
  EXPECT_EQ(geometry(1, 12, 12, 20, 10).hash_per_block_bits, 7u);
  EXPECT_EQ(geometry(1, 9, 9, 32, 10).hash_per_block_bits, 4u);
  EXPECT_EQ(geometry(1, 9, 9, 64, 10).hash_per_block_bits, 3u);
  // 1 GiB of 512-byte blocks with sha512 in 512-byte hash blocks: 7 levels.
  g = geometry(1, 9, 9, 64, 2097152);
  EXPECT_EQ(g.levels, 7u);
  uint64_t total = 0;
  for (unsigned i = 0; i < g.levels; ++i) total += 2097152 >> (3 * (i + 1));
  EXPECT_EQ(g.hash_blocks, total);

  // Offsets: version 1 pads digests to a power of two, version 0 packs them.
  uint64_t block = 0;
  unsigned offset = 0;
  auto v1 = geometry(1, 12, 12, 20, 1000);
  v1.locate(130, 0, block, offset);
  EXPECT_EQ(block, v1.hash_level_block[0] + 1);
  EXPECT_EQ(offset, 2u * 32);
  v1.locate(130, 1, block, offset);
  EXPECT_EQ(block, v1.hash_level_block[1]);
  EXPECT_EQ(offset, 1u * 32);
  auto v0 = geometry(0, 12, 12, 20, 1000);
  v0.locate(130, 0, block, offset);
  EXPECT_EQ(offset, 2u * 20);
}

TEST_F(VerityTest, TheGeometryMatchesTheTreeBuiltHere) {
  const TreeSpec specs[] = {
      {},
      {.version = 0, .data_block = 512, .hash_block = 512, .alg = "sha1", .salt_hex = "aabb"},
      {.data_block = 1024, .hash_block = 2048, .alg = "sha512"},
  };
  for (const TreeSpec& spec : specs)
    for (uint64_t blocks : {1, 2, 127, 128, 129, 1000, 16385}) {
      const Tree tree = build_tree(spec, std::vector<uint8_t>(blocks * spec.data_block, 1));
      const unsigned ds = EVP_MD_get_size(EVP_get_digestbyname(spec.alg.c_str()));
      auto g = geometry(spec.version, std::countr_zero(spec.data_block),
                        std::countr_zero(spec.hash_block), ds, blocks, 5);
      EXPECT_EQ(g.hash_blocks - 5, tree.hash.size() / spec.hash_block) << blocks;
      ASSERT_EQ(g.levels, tree.level_start.size()) << blocks;
      for (unsigned i = 0; i < g.levels; ++i)
        EXPECT_EQ(g.hash_level_block[i] - 5, tree.level_start[i]);
    }
}

// ---- reads

TEST_F(VerityTest, GoodImagesReadRight) {
  struct Config {
    TreeSpec spec;
    uint64_t blocks;
    bool same_file;
  };
  const Config configs[] = {
      {{}, 1000, false},
      {{.salt_hex = "0123456789abcdef0123456789abcdef"}, 300, false},
      {{.version = 0, .data_block = 512, .hash_block = 512, .alg = "sha1", .salt_hex = "feed"},
       3000,
       false},
      {{.data_block = 1024, .hash_block = 4096, .alg = "sha512", .salt_hex = "01"}, 700, false},
      {{.version = 0, .alg = "sha256"}, 129, false},
      {{}, 1, false},
      // The tree in the data file, after the data (veritysetup --hash-offset).
      {{.hash_start = 300}, 257, true},
  };
  for (const Config& c : configs) {
    make_image(c.spec, c.blocks, c.same_file);
    SCOPED_TRACE(line());
    load();
    EXPECT_TRUE(reads_right(0, 1));
    EXPECT_TRUE(reads_right(c.blocks - 1, 1));
    EXPECT_TRUE(reads_right(0, c.blocks));  // past 64 KiB: hashed on the CPU pool
    for (uint64_t b = 0; b < c.blocks; b += 7)
      EXPECT_TRUE(reads_right(b, std::min<uint64_t>(5, c.blocks - b)));
    EXPECT_EQ(status(), "0 " + std::to_string(sectors()) + " verity V\n");
  }
}

TEST_F(VerityTest, ImagesMadeByVeritysetupReadRight) {
  if (std::system("command -v veritysetup >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "veritysetup is not installed (cryptsetup-bin)";
  data_ = random_bytes(300 * 4096, 7);
  write_file(dir_ / "data.img", data_);
  const std::string cmd = "veritysetup format --salt=abcd " + (dir_ / "data.img").string() + " " +
                          (dir_ / "hash.img").string() + " | sed -n 's/^Root hash:[ \\t]*//p' > " +
                          (dir_ / "root").string();
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  std::string root;
  std::ifstream(dir_ / "root") >> root;
  // The tree built here is veritysetup's, byte for byte (after its superblock).
  spec_ = {.salt_hex = "abcd", .hash_start = 1};
  const Tree tree = build_tree(spec_, data_);
  EXPECT_EQ(root, tree.root);
  const std::vector<std::byte> hash_file = test::read_file_bytes(dir_ / "hash.img");
  ASSERT_EQ(hash_file.size(), 4096 + tree.hash.size());
  EXPECT_EQ(std::memcmp(hash_file.data() + 4096, tree.hash.data(), tree.hash.size()), 0);
  blocks_ = 300;
  tree_ = tree;
  hash_name_ = "hash.img";
  load();
  EXPECT_TRUE(reads_right(0, 300));
}

TEST_F(VerityTest, AFlippedDataByteFailsExactlyThatBlock) {
  make_image({}, 300);
  load();
  EXPECT_TRUE(reads_right(0, 300));
  EXPECT_EQ(status(), "0 2400 verity V\n");
  flip_byte(dir_ / "data.img", 137 * 4096 + 1000);
  EXPECT_EQ(failing_blocks(), std::vector<uint64_t>{137});
  EXPECT_EQ(read(130, 20), errno_status(EIO));  // a read covering it fails whole
  EXPECT_EQ(read(0, 300), errno_status(EIO));
  EXPECT_TRUE(reads_right(138, 100));
  EXPECT_EQ(status(), "0 2400 verity C\n");
  EXPECT_EQ(events_, 0);
}

TEST_F(VerityTest, AFlippedHashByteFailsExactlyTheBlocksUnderIt) {
  make_image({}, 300);  // levels: 1 top block, then 3 level-0 blocks
  ASSERT_EQ(tree_.level_start, (std::vector<uint64_t>{1, 0}));
  flip_byte(dir_ / "hash.img", (tree_.level_start[0] + 1) * 4096 + 77);  // data blocks 128-255
  load();
  EXPECT_EQ(failing_blocks(), range(128, 256));
  EXPECT_EQ(status(), "0 2400 verity C\n");
  EXPECT_TRUE(reads_right(0, 128));
  EXPECT_TRUE(reads_right(256, 44));
  // The top block: nothing verifies.
  flip_byte(dir_ / "hash.img", 10);
  load();
  EXPECT_EQ(failing_blocks(), range(0, 300));
}

TEST_F(VerityTest, AVerifiedHashBlockIsKeptUntilSuspend) {
  make_image({}, 300);
  load();
  EXPECT_TRUE(reads_right(0, 1));
  // Block 0's level-0 hash block is verified and in memory: damage on the
  // disk is not seen, as in the kernel's dm-bufio, until a suspend drops it.
  flip_byte(dir_ / "hash.img", (tree_.level_start[0]) * 4096 + 4000);
  EXPECT_TRUE(reads_right(0, 128));
  run_sync(t().postsuspend());
  EXPECT_EQ(read(0, 1), errno_status(EIO));
}

TEST_F(VerityTest, IgnoreCorruptionReturnsTheDataAndTurnsTheStatusC) {
  make_image({}, 300);
  load("1 ignore_corruption");
  flip_byte(dir_ / "data.img", 5 * 4096);
  flip_byte(dir_ / "hash.img", (tree_.level_start[0] + 2) * 4096 + 5);  // blocks 256-299
  data_[5 * 4096] ^= 0x5a;                                              // what the file holds now
  EXPECT_TRUE(reads_right(0, 300));
  EXPECT_EQ(failing_blocks(), std::vector<uint64_t>{});
  EXPECT_EQ(status(), "0 2400 verity C\n");
}

TEST_F(VerityTest, RestartOnCorruptionFailsEveryLaterRead) {
  for (const char* mode : {"restart_on_corruption", "panic_on_corruption"}) {
    make_image({}, 300);
    load(std::string("1 ") + mode);
    events_ = 0;
    EXPECT_TRUE(reads_right(0, 300));
    flip_byte(dir_ / "data.img", 200 * 4096);
    EXPECT_EQ(read(200, 1), errno_status(EIO));
    EXPECT_EQ(status(), "0 2400 verity C\n");
    EXPECT_EQ(events_, 1);
    EXPECT_EQ(read(0, 1), errno_status(EIO));  // a good block too: the device is dead
    EXPECT_EQ(events_, 1);
  }
}

TEST_F(VerityTest, CheckAtMostOnceChecksABlockOnce) {
  make_image({}, 300);
  load("1 check_at_most_once");
  EXPECT_TRUE(reads_right(0, 10));
  flip_byte(dir_ / "data.img", 3 * 4096 + 9);  // already validated: not checked again
  flip_byte(dir_ / "data.img", 20 * 4096 + 9);
  data_[3 * 4096 + 9] ^= 0x5a;
  EXPECT_TRUE(reads_right(0, 10));
  EXPECT_EQ(read(20, 1), errno_status(EIO));
  EXPECT_EQ(status(), "0 2400 verity C\n");
  // Without the option every read checks.
  load();
  EXPECT_EQ(read(3, 1), errno_status(EIO));
}

TEST_F(VerityTest, IgnoreZeroBlocksReadsZeroBlocksAsZeroes) {
  make_image({}, 300, false, {4, 150});
  // Whatever the disk holds there now, a block whose digest is the zero
  // block's reads as zeroes, unchecked.
  flip_byte(dir_ / "data.img", 4 * 4096 + 1);
  flip_byte(dir_ / "data.img", 150 * 4096 + 4095);
  load("1 ignore_zero_blocks");
  EXPECT_TRUE(reads_right(0, 300));
  EXPECT_EQ(status(), "0 2400 verity V\n");
  load();
  EXPECT_EQ(failing_blocks(), (std::vector<uint64_t>{4, 150}));
}

TEST_F(VerityTest, OnlyAlignedReadsAreServed) {
  make_image({}, 64);
  load();
  std::vector<std::byte> buf(8192);
  const auto io = [&](BioOp op, uint64_t sector, uint64_t sectors) {
    return run_sync(t().map({.op = op,
                             .sector = sector,
                             .sectors = sectors,
                             .data = std::span(buf).first(sectors * 512)}));
  };
  EXPECT_EQ(io(BioOp::read, 1, 8), errno_status(EIO));  // unaligned io
  EXPECT_EQ(io(BioOp::read, 0, 4), errno_status(EIO));
  EXPECT_FALSE(io(BioOp::read, 8, 16));
  EXPECT_EQ(io(BioOp::write, 8, 8), errno_status(EIO));
  EXPECT_EQ(run_sync(t().map({.op = BioOp::discard, .sector = 0, .sectors = 8})),
            errno_status(EOPNOTSUPP));
  EXPECT_EQ(run_sync(t().map({.op = BioOp::write_zeroes, .sector = 0, .sectors = 8})),
            errno_status(EOPNOTSUPP));
  EXPECT_FALSE(run_sync(t().flush()));
  EXPECT_EQ(status(), "0 512 verity V\n");
  // 512-byte blocks take any sector.
  make_image({.data_block = 512}, 64);
  load();
  EXPECT_TRUE(reads_right(3, 1));
}

// Data that reads wrong once (the first read of each bio) and right after:
// the kernel's verity_recheck() reads a mismatching block again on its own.
class CorruptFirstRead final : public BlockDevice {
 public:
  explicit CorruptFirstRead(std::shared_ptr<BlockDevice> inner) : inner_(std::move(inner)) {}
  std::string name() const override { return inner_->name(); }
  uint64_t sectors() const override { return inner_->sectors(); }
  Task<Status> submit(Bio bio) override {
    const Status st = co_await inner_->submit(bio);
    if (!st && bio.op == BioOp::read && reads_++ == 0) bio.data[0] ^= std::byte{1};
    co_return st;
  }
  Task<Status> block_status(uint64_t sector, uint64_t count, ExtentList& out) override {
    co_return co_await inner_->block_status(sector, count, out);
  }
  std::shared_ptr<BlockDevice> inner_;
  std::atomic<int> reads_ = 0;
};

TEST_F(VerityTest, ABlockThatReadsRightTheSecondTimeIsNotCorrupt) {
  make_image({}, 64);
  auto flaky = std::make_shared<CorruptFirstRead>(resolver_.open("data.img", true));
  resolver_.add("flaky", flaky);
  std::string text = line();
  text.replace(text.find("data.img"), 8, "flaky");
  table_ = test::open_table(text, resolver_, true);
  EXPECT_TRUE(reads_right(10, 4));
  EXPECT_EQ(flaky->reads_, 2);  // the bio, then block 10 again
  EXPECT_EQ(status(), "0 512 verity V\n");
}

TEST_F(VerityTest, AHashDeviceThatFailsIsAnIoErrorNotCorruption) {
  make_image({}, 64);
  auto failing = test::make_device("0 64 error", resolver_, false, "failing");
  resolver_.add("failing", failing);
  std::string text = line();
  text.replace(text.find("hash.img"), 8, "failing");
  table_ = test::open_table(text, resolver_, true);
  EXPECT_EQ(read(0, 1), errno_status(EIO));
  EXPECT_EQ(status(), "0 512 verity V\n");
}

TEST_F(VerityTest, ReadsFromSeveralThreadsAtOnce) {
  // A cold tree (4096 level-0 blocks of 16 digests each) read by four
  // threads at once, each on its own loop.
  make_image({.data_block = 512, .hash_block = 512}, 65536);
  load();
  std::vector<std::thread> threads;
  std::atomic<int> bad = 0;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int i = 0; i < 300; ++i) {
        const uint64_t block = rng() % (65536 - 300);
        if (!reads_right(block, 1 + rng() % 300)) ++bad;
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad, 0);
  EXPECT_EQ(status(), "0 65536 verity V\n");
}

// The tree on its own, with room for only a few verified blocks: every
// digest is still right, from several threads at once, and the set stays
// within its bound.
TEST_F(VerityTest, TheVerifiedSetStaysBoundedAndRight) {
  make_image({.salt_hex = "77"}, 20000);  // 157 level-0 blocks, 2 levels
  auto hash = verity::VerityHash::create("sha256");
  hash->set_salt(1, unhex("77"));
  auto g = geometry(1, 12, 12, 32, 20000);
  auto dev = resolver_.open("hash.img", true);
  verity::HashTree tree(*dev, g, *hash, unhex(tree_.root), 4 * 4096);
  std::vector<std::thread> threads;
  std::atomic<int> bad = 0;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int i = 0; i < 200; ++i) {
        const uint64_t first = rng() % 19000, count = 1 + rng() % 1000;
        std::vector<uint8_t> got(count * 32);
        verity::HashTree::Lookup result;
        run_sync(tree.digests(first, count, got.data(), false, &result));
        if (result.resolved != count || result.error || result.corrupt) ++bad;
        for (uint64_t b = 0; b < count; ++b)
          if (std::memcmp(&got[b * 32],
                          salted_digest(spec_, &data_[(first + b) * 4096], 4096).data(), 32) != 0)
            ++bad;
        if (tree.verified_blocks() > 4) ++bad;
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad, 0);
  EXPECT_LE(tree.verified_blocks(), 4u);
  EXPECT_GT(tree.verified_blocks(), 0u);
  tree.reset();
  EXPECT_EQ(tree.verified_blocks(), 0u);
}

TEST_F(VerityTest, ADeviceServesItThroughTheCore) {
  make_image({}, 300);
  auto device = test::make_device(line(), resolver_, true);
  std::vector<std::byte> buf(300 * 4096);
  EXPECT_FALSE(
      run_sync(device->submit({.op = BioOp::read, .sector = 0, .sectors = 2400, .data = buf})));
  EXPECT_EQ(std::memcmp(buf.data(), data_.data(), buf.size()), 0);
  // Deps: both files.
  EXPECT_EQ(device->dependencies(false).size(), 2u);
  // The data block is the device's logical block: a 512-byte read inside a
  // block reads (and checks) the whole block.
  EXPECT_EQ(device->logical_block_size(), 4096u);
  std::vector<std::byte> small(512);
  EXPECT_FALSE(
      run_sync(device->submit({.op = BioOp::read, .sector = 83, .sectors = 1, .data = small})));
  EXPECT_EQ(std::memcmp(small.data(), &data_[83 * 512], 512), 0);
  flip_byte(dir_ / "data.img", 10 * 4096 + 4000);  // sector 87, block 10
  EXPECT_EQ(
      run_sync(device->submit({.op = BioOp::read, .sector = 80, .sectors = 1, .data = small})),
      errno_status(EIO));
}

}  // namespace
}  // namespace dmnbd
