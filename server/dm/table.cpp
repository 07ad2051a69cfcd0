#include "dm/table.hpp"

#include <algorithm>
#include <optional>

#include "dmnbd/secret_bytes.hpp"

namespace dmnbd {
namespace {

// Splits on whitespace; a backslash makes the next character literal (dm_split_args).
std::vector<std::string> split_words(std::string_view s) {
  std::vector<std::string> words;
  std::string word;
  bool in_word = false;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '\\' && i + 1 < s.size()) {
      word += s[++i];
      in_word = true;
    } else if (c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f') {
      if (in_word) words.push_back(std::move(word));
      word.clear();
      in_word = false;
    } else {
      word += c;
      in_word = true;
    }
  }
  if (in_word) words.push_back(std::move(word));
  return words;
}

std::string join_line(uint64_t begin, uint64_t length, const std::string& type,
                      const std::string& rest) {
  std::string line = std::to_string(begin) + " " + std::to_string(length) + " " + type;
  if (!rest.empty()) line += " " + rest;
  return line + "\n";
}

}  // namespace

std::vector<TableLine> parse_table_text(std::string_view text) {
  std::vector<TableLine> lines;
  unsigned number = 0;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t nl = text.find('\n', pos);
    std::string_view raw = text.substr(pos, nl == std::string_view::npos ? text.npos : nl - pos);
    pos = nl == std::string_view::npos ? text.size() + 1 : nl + 1;
    ++number;
    // Everything after '#' is a comment, so arguments can never contain one.
    raw = raw.substr(0, raw.find('#'));
    std::vector<std::string> words = split_words(raw);
    if (words.empty()) continue;
    TableLine line{.line = number};
    if (words.size() < 3 || !scan_u64(words[0], line.start) || !scan_u64(words[1], line.length))
      throw TableError(number, "Invalid format: expected <start> <length> <target> [<args>...]");
    line.type = words[2];
    line.args.assign(words.begin() + 3, words.end());
    lines.push_back(std::move(line));
  }
  return lines;
}

namespace {

// Remembers the word of the table each device was opened by, so that errors
// name devices as the user wrote them.
class NamingResolver final : public DeviceResolver {
 public:
  explicit NamingResolver(DeviceResolver& inner) : inner_(inner) {}
  std::shared_ptr<BlockDevice> open(const std::string& name, bool read_only) override {
    auto dev = inner_.open(name, read_only);
    words_.emplace_back(dev->identity(), name);
    return dev;
  }
  std::string word_for(const BlockDevice& dev) const {
    for (const auto& [id, word] : words_)
      if (id == dev.identity()) return word;
    return dev.name();
  }

 private:
  DeviceResolver& inner_;
  std::vector<std::pair<const BlockDevice*, std::string>> words_;
};

// dm-table.c device_area_is_invalid(), for every area the target reports.
void check_device_areas(const Target& target, const NamingResolver& names) {
  for (const DeviceArea& area : target.device_areas()) {
    const uint64_t size = area.device->sectors();
    const uint64_t end = area.start + area.length;
    if (end > size || end < area.start)
      throw TargetError(names.word_for(*area.device) + " too small for target: start=" +
                        std::to_string(area.start) + ", len=" + std::to_string(area.length) +
                        ", dev_size=" + std::to_string(size));
    // The area must be whole logical blocks of the target (after io_hints).
    const uint32_t block = target.logical_block_size();
    const uint64_t mask = (block >> kSectorShift) - 1;
    for (const auto& [what, value] : {std::pair{"start", area.start}, {"len", area.length}})
      if (value & mask)
        throw TargetError(std::string(what) + "=" + std::to_string(value) +
                          " not aligned to h/w logical block size " + std::to_string(block) +
                          " of " + names.word_for(*area.device));
  }
}

}  // namespace

std::shared_ptr<Table> Table::build(std::string_view text, DeviceResolver& resolver, bool read_only,
                                    std::function<void()> raise_event,
                                    std::function<bool()> noflush_suspending,
                                    const BlockDevice* mapped_device) {
  auto table = std::make_shared<Table>();
  NamingResolver naming(resolver);
  std::vector<TableLine> lines = parse_table_text(text);
  // The words may hold keys: wiped once the targets have what they need.
  struct WipeWords {
    std::vector<TableLine>& lines;
    ~WipeWords() {
      for (auto& line : lines)
        for (auto& word : line.args) wipe_memory(word.data(), word.size());
    }
  } wipe_words{lines};
  if (lines.empty()) throw TableError(0, "table is empty");
  for (const TableLine& line : lines) {
    const TargetType* type = TargetRegistry::instance().find(line.type);
    if (!type) throw TableError(line.line, line.type + ": unknown target type");
    if (line.length == 0) throw TableError(line.line, line.type + ": zero-length target");
    if (line.start != table->sectors()) throw TableError(line.line, line.type + ": Gap in table");
    TargetContext ctx{.begin = line.start,
                      .length = line.length,
                      .read_only = read_only,
                      .resolver = naming,
                      .raise_event = raise_event,
                      .noflush_suspending = noflush_suspending,
                      .mapped_device = mapped_device};
    try {
      std::unique_ptr<Target> target = type->create(ctx, line.args);
      check_device_areas(*target, naming);
      table->entries_.push_back({line.start, line.length, line.type, std::move(target), line.line});
    } catch (const TargetError& e) {
      throw TableError(line.line, line.type + ": " + e.what());
    }
  }
  check_block_alignment(*table);
  return table;
}

// dm-table.c validate_hardware_logical_block_alignment(): every line starts
// and ends on a whole logical block of the table.
void Table::check_block_alignment(Table& table) {
  uint32_t block = kSectorSize;
  for (const Entry& e : table.entries_) block = std::max(block, e.target->logical_block_size());
  table.logical_block_size_ = block;
  const uint64_t mask = (block >> kSectorShift) - 1;
  for (const Entry& e : table.entries_)
    if ((e.begin | e.length) & mask)
      throw TableError(e.line, e.type + ": (start sect " + std::to_string(e.begin) + " len " +
                                   std::to_string(e.length) +
                                   ") not aligned to h/w logical block size " +
                                   std::to_string(block));
}

Task<void> Table::open() {
  for (auto& entry : entries_) {
    std::optional<TableError> failed;
    try {
      co_await entry.target->open();
    } catch (const TargetError& e) {
      failed.emplace(entry.line, entry.type + ": " + e.what());
    }
    if (failed) {
      co_await teardown();
      throw *failed;
    }
  }
}

Task<void> Table::teardown() {
  if (torn_down_.exchange(true)) co_return;
  for (auto& entry : entries_) co_await entry.target->teardown();
}

const Table::Entry& Table::find(uint64_t sector) const {
  auto it = std::upper_bound(entries_.begin(), entries_.end(), sector,
                             [](uint64_t s, const Entry& e) { return s < e.end(); });
  return *it;
}

const Table::Entry* Table::find_entry(uint64_t sector) const {
  return sector < sectors() ? &find(sector) : nullptr;
}

std::string Table::table_text(Keys keys) const {
  std::string out;
  for (const auto& e : entries_)
    out += join_line(e.begin, e.length, e.type,
                     keys == Keys::shown ? e.target->table() : e.target->table_masked());
  return out;
}

std::string Table::status_text() const {
  std::string out;
  for (const auto& e : entries_) out += join_line(e.begin, e.length, e.type, e.target->status());
  return out;
}

}  // namespace dmnbd
