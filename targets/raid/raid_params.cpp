#include "raid_params.hpp"

#include <bit>
#include <cstdlib>

#include "dmnbd/arg_set.hpp"
#include "raid_layout.hpp"

namespace dmnbd::raid {
namespace {

constexpr unsigned kMaxRaidDevices = 253;     // MAX_RAID_DEVICES
constexpr int32_t kMinFreeReshapeSpace = 32;  // to_sector(4 * 4096)
constexpr uint32_t kCounterMax = 0x3fff;      // md-bitmap's COUNTER_MAX

// md's level 5 layouts (ALGORITHM_*) and level 6 ones.
constexpr RaidType kRaidTypes[] = {
    {"raid0", 0, 2, 0, 0},
    {"raid1", 0, 2, 1, 0},
    {"raid10_far", 0, 2, 10, kRaid10Far},
    {"raid10_offset", 0, 2, 10, kRaid10Offset},
    {"raid10_near", 0, 2, 10, kRaid10Near},
    {"raid10", 0, 2, 10, kRaid10Default},
    {"raid4", 1, 2, 5, 4},
    {"raid5_n", 1, 2, 5, 5},
    {"raid5_ls", 1, 2, 5, 2},
    {"raid5_rs", 1, 2, 5, 3},
    {"raid5_la", 1, 2, 5, 0},
    {"raid5_ra", 1, 2, 5, 1},
    {"raid6_zr", 2, 4, 6, 8},
    {"raid6_nr", 2, 4, 6, 9},
    {"raid6_nc", 2, 4, 6, 10},
    {"raid6_n_6", 2, 4, 6, 5},
    {"raid6_ls_6", 2, 4, 6, 18},
    {"raid6_rs_6", 2, 4, 6, 19},
    {"raid6_la_6", 2, 4, 6, 16},
    {"raid6_ra_6", 2, 4, 6, 17},
};

// The names of the flags, for parsing and printing (__arg_name_flags[]).
constexpr std::pair<uint32_t, const char*> kFlagNames[] = {
    {kSync, "sync"},
    {kNosync, "nosync"},
    {kRebuild, "rebuild"},
    {kDaemonSleep, "daemon_sleep"},
    {kMinRecoveryRate, "min_recovery_rate"},
    {kMaxRecoveryRate, "max_recovery_rate"},
    {kMaxWriteBehind, "max_write_behind"},
    {kWriteMostly, "write_mostly"},
    {kStripeCache, "stripe_cache"},
    {kRegionSize, "region_size"},
    {kRaid10Copies, "raid10_copies"},
    {kRaid10Format, "raid10_format"},
    {kDataOffset, "data_offset"},
    {kDeltaDisks, "delta_disks"},
    {kRaid10UseNearSets, "raid10_use_near_sets"},
    {kJournalDev, "journal_dev"},
    {kJournalMode, "journal_mode"},
};
const char* name_of(uint32_t flag) {
  for (const auto& [f, name] : kFlagNames)
    if (f == flag) return name;
  return "";
}

constexpr uint32_t kNoArgFlags = kSync | kNosync | kRaid10UseNearSets;
constexpr uint32_t kRecoveryFlags =
    kSync | kNosync | kRebuild | kDaemonSleep | kMinRecoveryRate | kMaxRecoveryRate | kRegionSize;
// __valid_flags(): what each level accepts.
uint32_t valid_flags(const RaidType& t) {
  switch (t.level) {
    case 0:
      return kDataOffset;
    case 1:
      return kRecoveryFlags | kWriteMostly | kMaxWriteBehind | kDeltaDisks | kDataOffset;
    case 10:
      return kRecoveryFlags | kRaid10Copies | kRaid10Format | kDeltaDisks | kDataOffset |
             kRaid10UseNearSets;
    case 5:
      return kRecoveryFlags | kStripeCache | kDeltaDisks | kDataOffset | kJournalDev | kJournalMode;
    default:
      return (kRecoveryFlags & ~kNosync) | kStripeCache | kDeltaDisks | kDataOffset | kJournalDev |
             kJournalMode;
  }
}

bool is_power_of_2(int64_t v) {
  return v > 0 && (v & (v - 1)) == 0;
}

// raid10_format_to_md_layout()
uint32_t raid10_layout(uint32_t format, uint32_t copies, bool near_sets) {
  Raid10Layout l{1, 1, false, false};
  if (format == kRaid10Default || format == kRaid10Near) {
    l.near = copies;
  } else {
    l.far = copies;
    l.offset = format == kRaid10Offset;
    l.far_sets = !near_sets;
  }
  return l.md_layout();
}

// validate_region_size(): `given` 0 picks the default.
uint32_t choose_region_size(const RaidParams& p, uint64_t given, uint64_t length) {
  const uint64_t min_region = length >> 21;
  if (p.type->level == 0) return 0;
  if (!given) return min_region > (1u << 13) ? uint32_t(std::bit_ceil(min_region)) : 1u << 13;
  if (given > length) throw TargetError("Supplied region size is too large");
  if (given < min_region) throw TargetError("Supplied region size is too small");
  if (!is_power_of_2(int64_t(given))) throw TargetError("Region size is not a power of 2");
  if (given < p.chunk) throw TargetError("Region size is smaller than the chunk size");
  return uint32_t(given);
}

void parse_optional(RaidParams& p, TargetArgs words, uint64_t length) {
  uint32_t write_mostly = 0;
  int32_t region_size = 0;
  const unsigned disks = p.disks();
  auto once = [&](uint32_t flag, const char* error) {
    if (p.flags & flag) throw TargetError(error);
    p.flags |= flag;
  };
  for (size_t i = 0; i < words.size(); ++i) {
    const std::string& key = words[i];
    if (same_word(key, "nosync")) {
      once(kNosync, "Only one 'nosync' argument allowed");
      continue;
    }
    if (same_word(key, "sync")) {
      once(kSync, "Only one 'sync' argument allowed");
      continue;
    }
    if (same_word(key, "raid10_use_near_sets")) {
      once(kRaid10UseNearSets, "Only one 'raid10_use_new_sets' argument allowed");
      continue;
    }
    if (++i >= words.size()) throw TargetError("Wrong number of raid parameters given");
    const std::string& arg = words[i];
    if (same_word(key, "raid10_format")) {
      once(kRaid10Format, "Only one 'raid10_format' argument pair allowed");
      if (p.type->level != 10)
        throw TargetError("'raid10_format' is an invalid parameter for this RAID type");
      if (same_word(arg, "near"))
        p.raid10_format = kRaid10Near;
      else if (same_word(arg, "offset"))
        p.raid10_format = kRaid10Offset;
      else if (same_word(arg, "far"))
        p.raid10_format = kRaid10Far;
      else
        throw TargetError("Invalid 'raid10_format' value given");
      continue;
    }
    if (same_word(key, "journal_dev")) {
      once(kJournalDev, "Only one raid4/5/6 set journaling device allowed");
      if (p.type->level != 5 && p.type->level != 6)
        throw TargetError("'journal_dev' is an invalid parameter for this RAID type");
      p.journal_dev = arg;
      continue;
    }
    if (same_word(key, "journal_mode")) {
      if (!p.has(kJournalDev))
        throw TargetError("raid4/5/6 'journal_mode' is invalid without 'journal_dev'");
      once(kJournalMode, "Only one raid4/5/6 'journal_mode' argument allowed");
      if (!same_word(arg, "writethrough") && !same_word(arg, "writeback"))
        throw TargetError("Invalid 'journal_mode' argument");
      p.journal_mode = same_word(arg, "writeback") ? "writeback" : "writethrough";
      continue;
    }
    int32_t value = 0;
    if (!parse_i32(arg, value)) throw TargetError("Bad numerical argument given in raid params");
    if (same_word(key, "rebuild")) {
      if (value < 0 || value > int32_t(disks) - 1) throw TargetError("Invalid rebuild index given");
      if (p.rebuild[size_t(value)]) throw TargetError("rebuild for this index already given");
      p.rebuild[size_t(value)] = true;
      p.flags |= kRebuild;
    } else if (same_word(key, "write_mostly")) {
      if (p.type->level != 1) throw TargetError("write_mostly option is only valid for RAID1");
      if (value < 0 || value > int32_t(disks) - 1)
        throw TargetError("Invalid write_mostly index given");
      ++write_mostly;
      p.write_mostly[size_t(value)] = true;
      p.flags |= kWriteMostly;
    } else if (same_word(key, "max_write_behind")) {
      if (p.type->level != 1) throw TargetError("max_write_behind option is only valid for RAID1");
      once(kMaxWriteBehind, "Only one max_write_behind argument pair allowed");
      if (value < 0 || uint32_t(value) / 2 > kCounterMax)
        throw TargetError("Max write-behind limit out of range");
      p.max_write_behind = uint32_t(value) / 2;
    } else if (same_word(key, "daemon_sleep")) {
      once(kDaemonSleep, "Only one daemon_sleep argument pair allowed");
      if (value < 0) throw TargetError("daemon sleep period out of range");
      p.daemon_sleep = uint32_t(value);
    } else if (same_word(key, "data_offset")) {
      once(kDataOffset, "Only one data_offset argument pair allowed");
      if (value < 0 || (value && (value < kMinFreeReshapeSpace || value % 8)))
        throw TargetError("Bogus data_offset value");
      p.data_offset = uint64_t(value);
    } else if (same_word(key, "delta_disks")) {
      once(kDeltaDisks, "Only one delta_disks argument pair allowed");
      const int32_t magnitude = std::abs(value);
      if (magnitude < 1 || magnitude > int32_t(kMaxRaidDevices - p.type->minimal_devs))
        throw TargetError("Too many delta_disk requested");
      p.delta_disks = value;
    } else if (same_word(key, "stripe_cache")) {
      once(kStripeCache, "Only one stripe_cache argument pair allowed");
      if (p.type->level != 5 && p.type->level != 6)
        throw TargetError("Inappropriate argument: stripe_cache");
      if (value < 0) throw TargetError("Bogus stripe cache entries value");
      p.stripe_cache = uint32_t(value);
    } else if (same_word(key, "min_recovery_rate")) {
      once(kMinRecoveryRate, "Only one min_recovery_rate argument pair allowed");
      if (value < 0) throw TargetError("min_recovery_rate out of range");
      p.min_recovery_rate = uint32_t(value);
    } else if (same_word(key, "max_recovery_rate")) {
      once(kMaxRecoveryRate, "Only one max_recovery_rate argument pair allowed");
      if (value < 0) throw TargetError("max_recovery_rate out of range");
      p.max_recovery_rate = uint32_t(value);
    } else if (same_word(key, "region_size")) {
      once(kRegionSize, "Only one region_size argument pair allowed");
      region_size = value;
    } else if (same_word(key, "raid10_copies")) {
      once(kRaid10Copies, "Only one raid10_copies argument pair allowed");
      if (value < 2 || value > int32_t(disks)) throw TargetError("Bad value for 'raid10_copies'");
      p.raid10_copies = uint32_t(value);
    } else {
      throw TargetError("Unable to parse RAID parameter");
    }
  }

  if (p.has(kSync) && p.has(kNosync)) throw TargetError("sync and nosync are mutually exclusive");
  if (p.has(kRebuild) && (p.has(kSync) || p.has(kNosync)))
    throw TargetError("sync/nosync and rebuild are mutually exclusive");
  if (write_mostly >= disks) throw TargetError("Can't set all raid1 devices to write_mostly");
  if (p.max_recovery_rate && p.min_recovery_rate > p.max_recovery_rate)
    throw TargetError("Bogus recovery rates");
  // The kernel passes region_size on as an unsigned long.
  p.region_size = choose_region_size(p, uint64_t(uint32_t(region_size)), length);

  p.layout = p.type->algorithm;
  if (p.type->level == 10) {
    if (p.raid10_copies > disks) throw TargetError("Not enough devices to satisfy specification");
    p.layout = raid10_layout(p.raid10_format, p.raid10_copies, p.has(kRaid10UseNearSets));
    const RaidType* named = raid_type_of(10, p.layout);
    if (!named) throw TargetError("Failed to recognize new raid10 layout");
    if ((named->algorithm == kRaid10Default || named->algorithm == kRaid10Near) &&
        p.has(kRaid10UseNearSets))
      throw TargetError("RAID10 format 'near' and 'raid10_use_near_sets' are incompatible");
  }
  if (p.flags & ~valid_flags(*p.type)) throw TargetError("Invalid flags combination");
}

}  // namespace

const RaidType* raid_type_named(std::string_view name) {
  for (const RaidType& t : kRaidTypes)
    if (same_word(name, t.name)) return &t;
  return nullptr;
}

// Searched from the end, as the kernel does, so a near layout is "raid10".
const RaidType* raid_type_of(uint32_t level, uint32_t layout) {
  const Raid10Layout r10 = Raid10Layout::from_md(layout);
  for (size_t i = std::size(kRaidTypes); i-- > 0;) {
    const RaidType& t = kRaidTypes[i];
    if (t.level != level) continue;
    if (level == 10) {
      const bool match = t.algorithm == kRaid10Offset ? r10.offset
                         : t.algorithm == kRaid10Far  ? !r10.offset && r10.far > 1
                                                      : !r10.offset && r10.near > 1;
      if (match) return &t;
    } else if (t.algorithm == layout) {
      return &t;
    }
  }
  return nullptr;
}

bool RaidParams::any_metadata() const {
  for (const DevicePair& d : devices)
    if (!d.meta.empty()) return true;
  return false;
}

RaidParams parse_raid_table(TargetArgs args, uint64_t length) {
  ArgSet as(args);
  const std::string* type_name = as.shift();
  if (!type_name) throw TargetError("No arguments");
  RaidParams p;
  p.type = raid_type_named(*type_name);
  if (!p.type) throw TargetError("Unrecognised raid_type");
  const uint32_t param_count =
      as.read_group(0, uint32_t(as.left()), "Cannot understand number of raid parameters");
  const TargetArgs params = as.rest().subspan(0, param_count);
  as.consume(param_count);
  const uint32_t disks = as.read(1, as.left() ? uint32_t((as.left() - 1) / 2) : 0,
                                 "Cannot understand number of raid devices parameters");
  if (disks > kMaxRaidDevices) throw TargetError("Invalid number of supplied raid devices");
  if (disks <= p.type->parity_devs) throw TargetError("Insufficient number of devices");
  p.rebuild.assign(disks, false);
  p.write_mostly.assign(disks, false);
  p.devices.resize(disks);

  // The chunk size, then the optional parameters.
  int32_t chunk = 0;
  if (params.empty() || !parse_i32(params[0], chunk))
    throw TargetError("Bad numerical argument given for chunk_size");
  if (p.type->level == 1)
    chunk = 0;  // "Ignoring chunk size parameter for RAID 1"
  else if (!is_power_of_2(chunk))
    throw TargetError("Chunk size must be a power of 2");
  else if (chunk < 8)
    throw TargetError("Chunk size value is too small");
  p.chunk = uint32_t(chunk);
  parse_optional(p, params.subspan(1), length);

  // The device pairs (parse_dev_params()); words after them are ignored, as
  // the kernel does.
  for (uint32_t i = 0; i < disks; ++i) {
    const std::string& meta = *as.shift();
    const std::string& data = *as.shift();
    if (meta != "-") p.devices[i].meta = meta;
    if (data == "-") {
      if (p.rebuild[i]) throw TargetError("Drive designated for rebuild not specified");
      if (meta != "-") throw TargetError("No data device supplied with metadata device");
      continue;
    }
    p.devices[i].data = data;
  }
  return p;
}

std::string RaidParams::table(uint32_t layout_in_use, uint32_t region_in_use) const {
  // Each flag once, one-argument flags twice, and every rebuild and
  // write_mostly pair; raid10_use_near_sets is counted but never printed.
  unsigned count = 1;
  for (const auto& [flag, name] : kFlagNames) {
    if (!has(flag)) continue;
    if (flag == kRebuild || flag == kWriteMostly) continue;
    count += (kNoArgFlags & flag) ? 1 : 2;
  }
  for (unsigned i = 0; i < disks(); ++i) count += (rebuild[i] ? 2 : 0) + (write_mostly[i] ? 2 : 0);

  const Raid10Layout r10 = Raid10Layout::from_md(layout_in_use);
  std::string out =
      std::string(type->name) + " " + std::to_string(count) + " " + std::to_string(chunk);
  auto emit = [&](uint32_t flag, const std::string& value) {
    out += std::string(" ") + name_of(flag);
    if (!value.empty()) out += " " + value;
  };
  if (has(kSync)) emit(kSync, "");
  if (has(kNosync)) emit(kNosync, "");
  for (unsigned i = 0; i < disks(); ++i)
    if (rebuild[i]) emit(kRebuild, std::to_string(i));
  if (has(kDaemonSleep)) emit(kDaemonSleep, std::to_string(daemon_sleep));
  if (has(kMinRecoveryRate)) emit(kMinRecoveryRate, std::to_string(min_recovery_rate));
  if (has(kMaxRecoveryRate)) emit(kMaxRecoveryRate, std::to_string(max_recovery_rate));
  for (unsigned i = 0; i < disks(); ++i)
    if (write_mostly[i]) emit(kWriteMostly, std::to_string(i));
  if (has(kMaxWriteBehind)) emit(kMaxWriteBehind, std::to_string(max_write_behind));
  if (has(kStripeCache)) emit(kStripeCache, std::to_string(stripe_cache));
  if (has(kRegionSize)) emit(kRegionSize, std::to_string(region_in_use));
  if (has(kRaid10Copies)) emit(kRaid10Copies, std::to_string(std::max(r10.near, r10.far)));
  if (has(kRaid10Format)) emit(kRaid10Format, r10.format());
  if (has(kDeltaDisks)) emit(kDeltaDisks, std::to_string(delta_disks));
  if (has(kDataOffset)) emit(kDataOffset, std::to_string(data_offset));
  if (has(kJournalDev)) emit(kJournalDev, journal_dev);
  if (has(kJournalMode)) emit(kJournalMode, journal_mode);
  out += " " + std::to_string(disks());
  for (const DevicePair& d : devices)
    out += " " + (d.meta.empty() ? std::string("-") : d.meta) + " " +
           (d.data.empty() ? std::string("-") : d.data);
  return out;
}

}  // namespace dmnbd::raid
