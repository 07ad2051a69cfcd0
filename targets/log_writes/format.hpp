// The on-disk format of dm-log-writes, shared by the log-writes target and
// `dmnbd replay-log`. Little-endian throughout.
//
//   byte 0             super: magic, version, nr_entries (u64), sectorsize (u32)
//   sectorsize         entry 0: one sectorsize block that starts with
//                      sector, nr_sectors, flags, data_len (u64; sectors in
//                      sectorsize units), a mark's text after it, zero padding;
//                      then nr_sectors * sectorsize bytes of data (none for
//                      discards, flushes and marks)
//   ...                entry 1, and so on
//
// Header-only so that the target (targets/) and the CLI (server/cli/) can both
// use it without a library of their own.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace dmnbd::logwrites {

inline constexpr uint64_t kMagic = 0x6a736677736872ULL;
inline constexpr uint64_t kVersion = 1;

inline constexpr uint64_t kFlagFlush = 1 << 0;
inline constexpr uint64_t kFlagFua = 1 << 1;
inline constexpr uint64_t kFlagDiscard = 1 << 2;
inline constexpr uint64_t kFlagMark = 1 << 3;
inline constexpr uint64_t kFlagMetadata = 1 << 4;

inline constexpr size_t kSuperBytes = 28;  // packed: 3 x u64 + u32
inline constexpr size_t kEntryBytes = 32;  // 4 x u64

// The mark the kernel's destructor appends when the target goes away.
inline constexpr std::string_view kEndMark = "dm-log-writes-end";

struct Super {
  uint64_t magic = kMagic;
  uint64_t version = kVersion;
  uint64_t nr_entries = 0;
  uint32_t sectorsize = 512;
};

struct Entry {
  uint64_t sector = 0;      // in sectorsize units
  uint64_t nr_sectors = 0;  // in sectorsize units
  uint64_t flags = 0;
  uint64_t data_len = 0;  // length of a mark's text
};

namespace detail {
inline void put_le(std::byte* p, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = static_cast<std::byte>((v >> (8 * i)) & 0xff);
}
inline uint64_t get_le(const std::byte* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | std::to_integer<uint64_t>(p[i]);
  return v;
}
}  // namespace detail

// The super block, zero-padded to block.size() (one sectorsize).
inline void encode_super(const Super& s, std::span<std::byte> block) {
  std::memset(block.data(), 0, block.size());
  detail::put_le(block.data(), s.magic, 8);
  detail::put_le(block.data() + 8, s.version, 8);
  detail::put_le(block.data() + 16, s.nr_entries, 8);
  detail::put_le(block.data() + 24, s.sectorsize, 4);
}

inline Super decode_super(std::span<const std::byte> bytes) {  // bytes.size() >= kSuperBytes
  Super s;
  s.magic = detail::get_le(bytes.data(), 8);
  s.version = detail::get_le(bytes.data() + 8, 8);
  s.nr_entries = detail::get_le(bytes.data() + 16, 8);
  s.sectorsize = static_cast<uint32_t>(detail::get_le(bytes.data() + 24, 4));
  return s;
}

// An entry block: the header, then `text` (a mark's), zero-padded to block.size().
inline void encode_entry(const Entry& e, std::string_view text, std::span<std::byte> block) {
  std::memset(block.data(), 0, block.size());
  detail::put_le(block.data(), e.sector, 8);
  detail::put_le(block.data() + 8, e.nr_sectors, 8);
  detail::put_le(block.data() + 16, e.flags, 8);
  detail::put_le(block.data() + 24, e.data_len, 8);
  std::memcpy(block.data() + kEntryBytes, text.data(), text.size());
}

inline Entry decode_entry(std::span<const std::byte> bytes) {  // bytes.size() >= kEntryBytes
  Entry e;
  e.sector = detail::get_le(bytes.data(), 8);
  e.nr_sectors = detail::get_le(bytes.data() + 8, 8);
  e.flags = detail::get_le(bytes.data() + 16, 8);
  e.data_len = detail::get_le(bytes.data() + 24, 8);
  return e;
}

// A mark's text from its entry block (up to the first NUL or data_len bytes).
inline std::string mark_text(const Entry& e, std::span<const std::byte> block) {
  if (block.size() <= kEntryBytes) return {};
  const char* text = reinterpret_cast<const char*>(block.data() + kEntryBytes);
  const size_t room = block.size() - kEntryBytes;
  return std::string(text, strnlen(text, std::min<uint64_t>(room, e.data_len)));
}

// replay-log's sanity check (log_entry_valid): an all-zero header is no entry,
// and only a mark may have something after the header.
inline bool entry_valid(const Entry& e, std::span<const std::byte> block) {
  if (!e.flags && !e.nr_sectors) return false;
  if (e.flags != kFlagMark && block.size() > kEntryBytes && block[kEntryBytes] != std::byte{0})
    return false;
  return true;
}

// "FLUSH|FUA", "NONE", with unknown bits as "UNKNOWN.0x..", as replay-log prints them.
inline std::string flags_string(uint64_t flags) {
  static constexpr struct {
    uint64_t bit;
    const char* name;
  } kNames[] = {
      {kFlagFlush, "FLUSH"}, {kFlagFua, "FUA"}, {kFlagDiscard, "DISCARD"}, {kFlagMark, "MARK"}};
  std::string out;
  for (const auto& n : kNames) {
    if (!(flags & n.bit)) continue;
    if (!out.empty()) out += "|";
    out += n.name;
    flags &= ~n.bit;
  }
  if (flags) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "UNKNOWN.0x%llx", static_cast<unsigned long long>(flags));
    if (!out.empty()) out += "|";
    out += buf;
  }
  return out.empty() ? "NONE" : out;
}

}  // namespace dmnbd::logwrites
