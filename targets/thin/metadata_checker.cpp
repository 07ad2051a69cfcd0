#include "metadata_checker.hpp"

#include <fmt/format.h>

#include <functional>
#include <set>
#include <unordered_set>

#include "btree_node.hpp"
#include "dmnbd/dm_io.hpp"
#include "metadata_format.hpp"

namespace dmnbd::thin {
namespace {

constexpr size_t kMaxReported = 20;  // mismatches listed per space map

class Checker {
 public:
  Checker(BlockDevice& dev, MetadataCheck& out) : dev_(dev), out_(out) {}

  Task<void> run();

 private:
  using Block = std::vector<std::byte>;
  using LeafVisitor = std::function<Task<void>(const NodeView&)>;

  void error(std::string what) { out_.errors.push_back(std::move(what)); }

  Task<bool> read(uint64_t b, BlockKind kind, Block& out) {
    if (b >= device_blocks_) {
      error(fmt::format("block {} is past the end of the metadata device", b));
      co_return false;
    }
    out.assign(kMetadataBlockBytes, std::byte{0});
    Status st = co_await read_sectors(dev_, b * kMetadataBlockSectors, out);
    if (st) {
      error(fmt::format("block {}: read failed: {}", b, st.message()));
      co_return false;
    }
    if (!checksum_matches(out, kind)) {
      error(fmt::format("block {}: bad checksum", b));
      co_return false;
    }
    if (get_le64(out.data() + 8) != b) {
      error(fmt::format("block {}: says it is block {}", b, get_le64(out.data() + 8)));
      co_return false;
    }
    co_return true;
  }

  void ref_metadata(uint64_t b, const char* what) {
    if (b >= want_meta_.size()) {
      error(fmt::format("{} at block {}, past the metadata space map's {} blocks", what, b,
                        want_meta_.size()));
      return;
    }
    ++want_meta_[b];
  }

  // One reference to the tree at `root`; its nodes are read the first time
  // any reference reaches them (thin_check counts the same way).
  Task<void> walk(uint64_t root, uint32_t value_size, const LeafVisitor& leaf, const char* what,
                  bool is_root = true, uint64_t lower_bound = 0) {
    ref_metadata(root, what);
    if (!visited_.insert(root).second) co_return;
    Block bytes;
    if (!co_await read(root, BlockKind::btree_node, bytes)) co_return;
    const NodeView n(bytes);
    if (!n.sane(value_size) || n.max() % 3 != 0) {
      error(fmt::format("{}: node {} has a bad header", what, root));
      co_return;
    }
    if (!is_root && n.nr() < n.max() / 3)
      error(fmt::format("{}: node {} has {} entries, fewer than a third of {}", what, root, n.nr(),
                        n.max()));
    for (uint32_t i = 0; i < n.nr(); ++i) {
      if (i > 0 && n.key(i) <= n.key(i - 1))
        error(fmt::format("{}: node {} keys out of order at {}", what, root, i));
      if (i == 0 && !is_root && n.key(0) < lower_bound)
        error(fmt::format("{}: node {} starts below its parent's key", what, root));
    }
    if (n.leaf()) {
      co_await leaf(n);
      co_return;
    }
    for (uint32_t i = 0; i < n.nr(); ++i)
      co_await walk(n.child(i), value_size, leaf, what, false, n.key(i));
  }

  // The counts one space map holds, from its bitmaps and overflow tree.
  Task<void> read_space_map(const SpaceMapRoot& root, bool metadata, std::vector<uint32_t>& have);

  Task<void> walk_superblock_trees(const Block& sb, const char* which);
  void compare(const char* what, const std::vector<uint32_t>& want,
               const std::vector<uint32_t>& have, uint64_t nr_allocated);

  BlockDevice& dev_;
  MetadataCheck& out_;
  uint64_t device_blocks_ = 0;
  std::vector<uint32_t> want_meta_, want_data_;
  std::unordered_set<uint64_t> visited_;
  std::set<uint64_t> detail_ids_, mapping_ids_;
};

Task<void> Checker::read_space_map(const SpaceMapRoot& root, bool metadata,
                                   std::vector<uint32_t>& have) {
  const char* what = metadata ? "metadata space map" : "data space map";
  have.assign(root.nr_blocks, 0);
  const uint64_t nr_bitmaps =
      (root.nr_blocks + space_map::kEntriesPerBitmap - 1) / space_map::kEntriesPerBitmap;
  std::vector<IndexEntry> entries;
  if (metadata) {
    ref_metadata(root.bitmap_root, "metadata space map index");
    Block index;
    if (nr_bitmaps > space_map::kMaxMetadataBitmaps) {
      error("metadata space map: too many bitmaps");
      co_return;
    }
    if (!co_await read(root.bitmap_root, BlockKind::index, index)) co_return;
    for (uint64_t i = 0; i < nr_bitmaps; ++i)
      entries.push_back(IndexEntry::load(index.data() + space_map::kIndexHeaderBytes +
                                         i * space_map::kIndexEntryBytes));
  } else {
    const LeafVisitor collect = [&](const NodeView& n) -> Task<void> {
      for (uint32_t i = 0; i < n.nr(); ++i) {
        if (n.key(i) != entries.size()) error("data space map index: keys not 0, 1, 2, ...");
        entries.push_back(IndexEntry::load(n.value(i)));
      }
      co_return;
    };
    co_await walk(root.bitmap_root, space_map::kIndexEntryBytes, collect, "data space map index");
    if (entries.size() != nr_bitmaps) {
      error(fmt::format("data space map index: {} entries for {} bitmaps", entries.size(),
                        nr_bitmaps));
      co_return;
    }
  }
  for (uint64_t i = 0; i < nr_bitmaps; ++i) {
    ref_metadata(entries[i].blocknr, "space map bitmap");
    Block bitmap;
    if (!co_await read(entries[i].blocknr, BlockKind::bitmap, bitmap)) continue;
    const uint64_t first = i * space_map::kEntriesPerBitmap;
    const uint64_t n = std::min<uint64_t>(space_map::kEntriesPerBitmap, root.nr_blocks - first);
    uint32_t free_entries = 0, first_free = space_map::kEntriesPerBitmap;
    for (uint32_t j = 0; j < n; ++j) {
      const uint8_t byte = static_cast<uint8_t>(bitmap[space_map::kBitmapHeaderBytes + j / 4]);
      const unsigned shift = (2 * j) % 8;
      const uint32_t v = ((byte >> shift) & 1u) << 1 | ((byte >> (shift + 1)) & 1u);
      have[first + j] = v;
      if (v == 0) {
        ++free_entries;
        first_free = std::min(first_free, j);
      }
    }
    // Exact, or the kernel's way: entries past the end of a partial last
    // bitmap counted as free.
    const uint32_t past_end = static_cast<uint32_t>(space_map::kEntriesPerBitmap - n);
    if (entries[i].nr_free != free_entries && entries[i].nr_free != free_entries + past_end)
      error(fmt::format("{}: bitmap {} says {} free, has {}", what, i, entries[i].nr_free,
                        free_entries));
    if (free_entries > 0 && entries[i].none_free_before > first_free)
      error(fmt::format("{}: bitmap {} none_free_before {} is past its first free entry {}", what,
                        i, entries[i].none_free_before, first_free));
  }
  const LeafVisitor overflow = [&](const NodeView& n) -> Task<void> {
    for (uint32_t i = 0; i < n.nr(); ++i) {
      const uint64_t b = n.key(i);
      const uint32_t count = get_le32(n.value(i));
      if (b >= have.size() || have[b] != 3 || count < 3)
        error(fmt::format("{}: overflow entry for block {} ({}) without a bitmap entry of 3", what,
                          b, count));
      else
        have[b] = count;
    }
    co_return;
  };
  co_await walk(root.ref_count_root, 4, overflow, metadata ? "metadata overflow" : "data overflow");
  for (uint64_t b = 0; b < have.size(); ++b)
    if (have[b] == 3) error(fmt::format("{}: block {} at 3 without an overflow entry", what, b));
}

// The details and mapping trees of a superblock (the live one or the held copy).
Task<void> Checker::walk_superblock_trees(const Block& sb, const char* which) {
  const bool live = std::string_view(which) == "live";
  const LeafVisitor details = [&](const NodeView& n) -> Task<void> {
    for (uint32_t i = 0; i < n.nr(); ++i)
      if (live) detail_ids_.insert(n.key(i));
    co_return;
  };
  co_await walk(get_le64(sb.data() + superblock::device_details_root), DeviceDetails::kBytes,
                details, "device details tree");
  const LeafVisitor mappings = [&](const NodeView& n) -> Task<void> {
    for (uint32_t i = 0; i < n.nr(); ++i) {
      const uint64_t v = get_le64(n.value(i));
      const uint64_t block = unpack_block(v);
      ++out_.mappings;
      if (block >= want_data_.size())
        error(fmt::format("a mapping to data block {}, past the data space map's {} blocks", block,
                          want_data_.size()));
      else
        ++want_data_[block];
    }
    co_return;
  };
  const LeafVisitor devices = [&](const NodeView& n) -> Task<void> {
    for (uint32_t i = 0; i < n.nr(); ++i) {
      if (n.key(i) > kMaxDevId) error(fmt::format("device id {} is over 2^24-1", n.key(i)));
      if (live) mapping_ids_.insert(n.key(i));
      co_await walk(get_le64(n.value(i)), 8, mappings, "device mapping tree");
    }
  };
  co_await walk(get_le64(sb.data() + superblock::data_mapping_root), 8, devices, "mapping tree");
}

void Checker::compare(const char* what, const std::vector<uint32_t>& want,
                      const std::vector<uint32_t>& have, uint64_t nr_allocated) {
  size_t reported = 0;
  uint64_t used = 0;
  for (uint64_t b = 0; b < have.size(); ++b) {
    used += have[b] != 0;
    if (want[b] == have[b] || reported++ >= kMaxReported) continue;
    error(fmt::format("{}: block {} has count {}, its references make {}", what, b, have[b],
                      want[b]));
  }
  if (reported > kMaxReported)
    error(fmt::format("{}: {} more blocks with wrong counts", what, reported - kMaxReported));
  if (used != nr_allocated)
    error(fmt::format("{}: nr_allocated {}, but {} blocks are in use", what, nr_allocated, used));
}

Task<void> Checker::run() {
  device_blocks_ = dev_.sectors() / kMetadataBlockSectors;
  Block sb;
  if (!co_await read(0, BlockKind::superblock, sb)) co_return;
  if (get_le64(sb.data() + superblock::magic) != superblock::kMagic) {
    error("superblock: bad magic");
    co_return;
  }
  const auto meta_root = SpaceMapRoot::load(sb.data() + superblock::metadata_space_map_root);
  const auto data_root = SpaceMapRoot::load(sb.data() + superblock::data_space_map_root);
  out_.transaction_id = get_le64(sb.data() + superblock::trans_id);
  out_.held_root = get_le64(sb.data() + superblock::held_root);
  out_.needs_check = get_le32(sb.data() + superblock::flags) & superblock::kNeedsCheckFlag;
  out_.metadata_blocks = meta_root.nr_blocks;
  out_.data_blocks = data_root.nr_blocks;
  if (meta_root.nr_blocks > device_blocks_)
    error(fmt::format("the metadata space map has {} blocks, the device {}", meta_root.nr_blocks,
                      device_blocks_));
  want_meta_.assign(meta_root.nr_blocks, 0);
  want_data_.assign(data_root.nr_blocks, 0);
  ref_metadata(0, "superblock");
  std::vector<uint32_t> have_meta, have_data;
  co_await read_space_map(meta_root, true, have_meta);
  co_await read_space_map(data_root, false, have_data);
  co_await walk_superblock_trees(sb, "live");
  if (out_.held_root) {
    ref_metadata(out_.held_root, "held superblock copy");
    Block held;
    if (co_await read(out_.held_root, BlockKind::superblock, held))
      co_await walk_superblock_trees(held, "held");
  }
  if (detail_ids_ != mapping_ids_)
    error("the device details and mapping trees name different devices");
  out_.devices = mapping_ids_.size();
  if (have_meta.size() == want_meta_.size())
    compare("metadata space map", want_meta_, have_meta, meta_root.nr_allocated);
  if (have_data.size() == want_data_.size())
    compare("data space map", want_data_, have_data, data_root.nr_allocated);
  for (uint32_t c : have_meta) out_.metadata_used += c != 0;
  for (uint32_t c : have_data) out_.data_used += c != 0;
}

}  // namespace

Task<MetadataCheck> check_metadata(BlockDevice& dev) {
  MetadataCheck result;
  Checker checker(dev, result);
  co_await checker.run();
  co_return result;
}

}  // namespace dmnbd::thin
