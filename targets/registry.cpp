#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdint>

#include "dmnbd/dm_io.hpp"
#include "dmnbd/target.hpp"

namespace dmnbd {

TargetRegistry& TargetRegistry::instance() {
  static TargetRegistry registry;
  return registry;
}

bool TargetRegistry::add(TargetType type) {
  types_.push_back(std::move(type));
  return true;
}

const TargetType* TargetRegistry::find(const std::string& name) const {
  for (const auto& t : types_)
    if (t.name == name) return &t;
  return nullptr;
}

std::vector<const TargetType*> TargetRegistry::all() const {
  std::vector<const TargetType*> out;
  for (const auto& t : types_) out.push_back(&t);
  std::sort(out.begin(), out.end(), [](auto* a, auto* b) { return a->name < b->name; });
  return out;
}

namespace {

// kstrtox's accepted decorations around the digits.
std::string_view strip_kstrto(std::string_view s) {
  if (!s.empty() && s.back() == '\n') s.remove_suffix(1);
  if (!s.empty() && s.front() == '+') s.remove_prefix(1);
  return s;
}

bool narrow_u32(uint64_t value, uint32_t& out) {
  if (value > UINT32_MAX) return false;
  out = static_cast<uint32_t>(value);
  return true;
}

}  // namespace

// from_chars takes neither a sign nor spaces for an unsigned type.
bool scan_u64(std::string_view s, uint64_t& out) {
  if (s.empty()) return false;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && end == s.data() + s.size();
}

bool scan_u32(std::string_view s, uint32_t& out) {
  uint64_t value = 0;
  return scan_u64(s, value) && narrow_u32(value, out);
}

bool parse_u64(std::string_view s, uint64_t& out) {
  return scan_u64(strip_kstrto(s), out);
}

bool parse_u32(std::string_view s, uint32_t& out) {
  uint64_t value = 0;
  return parse_u64(s, value) && narrow_u32(value, out);
}

bool parse_i32(std::string_view s, int32_t& out) {
  const bool negative = !s.empty() && s.front() == '-';
  if (negative) {
    s.remove_prefix(1);
    if (!s.empty() && s.front() == '+') return false;
  }
  uint64_t magnitude = 0;
  if (!parse_u64(s, magnitude) || magnitude > uint64_t(INT32_MAX) + (negative ? 1 : 0))
    return false;
  out = negative ? int32_t(-int64_t(magnitude)) : int32_t(magnitude);
  return true;
}

uint64_t parse_sector(const std::string& text, const char* error) {
  uint64_t value = 0;
  if (!scan_u64(text, value)) throw TargetError(error);
  return value;
}

bool same_word(std::string_view word, std::string_view name) {
  return word.size() == name.size() &&
         std::equal(word.begin(), word.end(), name.begin(), [](char a, char b) {
           return std::tolower(static_cast<unsigned char>(a)) ==
                  std::tolower(static_cast<unsigned char>(b));
         });
}

std::shared_ptr<BlockDevice> TargetContext::get_device(const std::string& name) const {
  try {
    return resolver.open(name, read_only);
  } catch (const TargetError& e) {
    throw TargetError(std::string("Device lookup failed (") + e.what() + ")");
  }
}

Task<Status> Target::flush() {
  std::vector<std::shared_ptr<BlockDevice>> devices;
  for (const DeviceArea& area : device_areas()) {
    const BlockDevice* id = area.device->identity();
    if (std::none_of(devices.begin(), devices.end(),
                     [id](const auto& d) { return d->identity() == id; }))
      devices.push_back(area.device);
  }
  co_return co_await flush_all(devices);
}

}  // namespace dmnbd
