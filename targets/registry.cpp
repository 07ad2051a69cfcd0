#include <algorithm>
#include <charconv>

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

uint64_t parse_sector(const std::string& text, const char* error) {
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size())
    throw TargetError(error);
  return value;
}

bool parse_u32(std::string_view s, uint32_t& out) {
  if (!s.empty() && s.back() == '\n') s.remove_suffix(1);
  if (!s.empty() && s.front() == '+') s.remove_prefix(1);
  if (s.empty()) return false;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && end == s.data() + s.size();
}

std::shared_ptr<BlockDevice> TargetContext::get_device(const std::string& name, uint64_t start,
                                                       uint64_t len) const {
  std::shared_ptr<BlockDevice> dev;
  try {
    dev = resolver.open(name, read_only);
  } catch (const TargetError& e) {
    throw TargetError(std::string("Device lookup failed (") + e.what() + ")");
  }
  // dm-table.c device_area_is_invalid(): the area must lie inside the device.
  if (start + len > dev->sectors() || start + len < start) {
    throw TargetError(name + " too small for target: start=" + std::to_string(start) + ", len=" +
                      std::to_string(len) + ", dev_size=" + std::to_string(dev->sectors()));
  }
  return dev;
}

}  // namespace dmnbd
