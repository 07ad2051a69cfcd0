// Choosing a store from the table's words, as dm-exception-store.c's
// dm_exception_store_create: the first letter of the store word picks the
// type, the rest is the type's options; then the chunk size is checked.
#include "exception_store.hpp"

#include <spdlog/spdlog.h>

#include <bit>
#include <cctype>
#include <climits>
#include <optional>

namespace dmnbd::snapshot {
namespace {

// bdev_logical_block_size() >> 9 of the COW and the origin.
constexpr uint32_t kLogicalBlockSectors = 1;

[[noreturn]] void refuse(const std::string& words) {
  throw StoreError(words, kStoreCreateFailed, errno_status(EINVAL));
}

// The kernel's kstrtouint(s, 10): an optional '+', decimal digits, one
// optional trailing newline, and nothing else; no more than UINT_MAX.
std::optional<uint32_t> parse_uint(const std::string& s) {
  size_t i = s.size() > 0 && s[0] == '+' ? 1 : 0;
  uint64_t value = 0;
  size_t digits = 0;
  for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i, ++digits) {
    value = value * 10 + static_cast<uint64_t>(s[i] - '0');
    if (value > UINT_MAX) return std::nullopt;
  }
  if (digits == 0) return std::nullopt;
  if (i < s.size() && s[i] == '\n') ++i;
  if (i != s.size()) return std::nullopt;
  return static_cast<uint32_t>(value);
}

}  // namespace

const char* chunk_size_error(uint32_t chunk_sectors) {
  if (!std::has_single_bit(chunk_sectors)) return "Chunk size is not a power of 2";
  if (chunk_sectors % kLogicalBlockSectors != 0)
    return "Chunk size is not a multiple of device blocksize";
  if (chunk_sectors > (INT_MAX >> 9)) return "Chunk size is too high";
  return nullptr;
}

std::unique_ptr<ExceptionStore> make_exception_store(const std::string& word,
                                                     uint32_t chunk_sectors,
                                                     std::shared_ptr<BlockDevice> cow) {
  const char type =
      word.empty() ? '\0' : static_cast<char>(std::toupper(static_cast<unsigned char>(word[0])));
  if (type != 'P' && type != 'N') refuse("Exception store type is not P or N");
  // 0 is allowed here: the persistent store takes the header's (or 32), and
  // dm-snap.c refuses a transient one after reading its (no) metadata.
  if (chunk_sectors != 0)
    if (const char* why = chunk_size_error(chunk_sectors)) refuse(why);
  if (type == 'N') {
    // The rest of the word is ignored.
    if (chunk_sectors == 0) throw TargetError("Chunk size not set");
    return make_transient_store(chunk_sectors, std::move(cow));
  }
  // "P<options>": only an O (any case) first, for overflow; the rest of the
  // options are ignored, so "PO", "Po" and "POX" all mean PO.
  const bool has_options = word.size() > 1;
  if (has_options && std::toupper(static_cast<unsigned char>(word[1])) != 'O') {
    spdlog::error("persistent snapshot: Unsupported persistent store option: {}", word.substr(1));
    refuse("Exception store type constructor failed");
  }
  return make_persistent_store(chunk_sectors, has_options, std::move(cow));
}

std::unique_ptr<ExceptionStore> make_exception_store(const std::string& word,
                                                     const std::string& chunk_arg,
                                                     std::shared_ptr<BlockDevice> cow) {
  // The kernel picks the type before it parses the chunk size.
  const char type =
      word.empty() ? '\0' : static_cast<char>(std::toupper(static_cast<unsigned char>(word[0])));
  if (type != 'P' && type != 'N') refuse("Exception store type is not P or N");
  std::optional<uint32_t> chunk = parse_uint(chunk_arg);
  if (!chunk) refuse("Invalid chunk size");
  return make_exception_store(word, *chunk, std::move(cow));
}

}  // namespace dmnbd::snapshot
