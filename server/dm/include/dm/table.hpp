// A dm table: target lines contiguous from sector 0, fully built before use.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "dmnbd/target.hpp"

namespace dmnbd {

// A table rejected while parsing or constructing; line() is 1-based within the
// table text (0 when the error concerns the whole table).
class TableError : public std::runtime_error {
 public:
  TableError(unsigned line, const std::string& reason)
      : std::runtime_error(line ? "line " + std::to_string(line) + ": " + reason : reason),
        line_(line),
        reason_(reason) {}
  unsigned line() const { return line_; }
  const std::string& reason() const { return reason_; }

 private:
  unsigned line_;
  std::string reason_;
};

// One `<start> <length> <target> <args...>` line as text, before construction.
struct TableLine {
  unsigned line = 0;  // 1-based line number in the text
  uint64_t start = 0;
  uint64_t length = 0;
  std::string type;
  std::vector<std::string> args;
};

// dmsetup's reading of table text: blank lines and '#' comments are skipped,
// arguments split on whitespace with backslash escaping the next character.
std::vector<TableLine> parse_table_text(std::string_view text);

class Table {
 public:
  struct Entry {
    uint64_t begin;
    uint64_t length;
    std::string type;
    std::unique_ptr<Target> target;
    unsigned line = 0;  // in the table text, for errors
    uint64_t end() const { return begin + length; }
  };

  // Checks the lines in the kernel's order (type, length, adjacency) and runs
  // every constructor; throws TableError naming the line and the reason.
  // The table is ready for I/O once open() has returned.
  static std::shared_ptr<Table> build(
      std::string_view text, DeviceResolver& resolver, bool read_only,
      std::function<void()> raise_event = [] {},
      std::function<bool()> noflush_suspending = [] { return false; },
      const BlockDevice* mapped_device = nullptr);
  // Every target's open(), in line order. On a failure the table is torn
  // down (the kernel's dtr of what was constructed) and TableError names
  // the line.
  Task<void> open();

  uint64_t sectors() const { return entries_.empty() ? 0 : entries_.back().end(); }
  const std::vector<Entry>& entries() const { return entries_; }
  const Entry& find(uint64_t sector) const;        // sector < sectors()
  const Entry* find_entry(uint64_t sector) const;  // nullptr past the end

  // Every target's teardown(), once; later calls return at once. The Device
  // calls it before it lets go of a table.
  Task<void> teardown();

  // `dmsetup table` and `dmsetup status` lines, newline-terminated. Keys are
  // masked, as dmsetup shows them without --showkeys, unless `keys` is
  // shown: for --showkeys, and for copying a table inside dmnbd.
  enum class Keys { hidden, shown };
  std::string table_text(Keys keys = Keys::hidden) const;
  std::string status_text() const;

  // The largest of the targets' logical block sizes (bytes).
  uint32_t logical_block_size() const { return logical_block_size_; }

 private:
  static void check_block_alignment(Table& table);

  std::vector<Entry> entries_;
  uint32_t logical_block_size_ = 512;
  std::atomic<bool> torn_down_ = false;
};

}  // namespace dmnbd
