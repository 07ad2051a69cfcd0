// The raid target's table line, as dm-raid's ctr reads it (raid_ctr(),
// parse_raid_params(), the pair words of parse_dev_params()) and as its
// STATUSTYPE_TABLE prints it:
//   raid <type> <#params> <chunk> [<param>...] <#devs> (<meta|-> <data|->)...
// Every check here is the kernel's, with its ti->error strings; what needs
// the devices or their superblocks is the target's.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "dmnbd/target.hpp"

namespace dmnbd::raid {

// raid_types[]: the names dm-raid knows, and their md level and layout.
struct RaidType {
  const char* name;
  unsigned parity_devs;
  unsigned minimal_devs;
  uint32_t level;
  uint32_t algorithm;  // md layout (raid10: ALGORITHM_RAID10_*)
};
inline constexpr uint32_t kRaid10Default = 0, kRaid10Near = 1, kRaid10Offset = 2, kRaid10Far = 3;

// get_raid_type(): by name, ignoring case.
const RaidType* raid_type_named(std::string_view name);
// get_raid_type_by_ll(): the name status prints for an md level and layout.
const RaidType* raid_type_of(uint32_t level, uint32_t layout);

// The CTR_FLAG_* bits, in the order the table line prints them.
enum CtrFlag : uint32_t {
  kSync = 1u << 0,
  kNosync = 1u << 1,
  kRebuild = 1u << 2,
  kDaemonSleep = 1u << 3,
  kMinRecoveryRate = 1u << 4,
  kMaxRecoveryRate = 1u << 5,
  kMaxWriteBehind = 1u << 6,
  kWriteMostly = 1u << 7,
  kStripeCache = 1u << 8,
  kRegionSize = 1u << 9,
  kRaid10Copies = 1u << 10,
  kRaid10Format = 1u << 11,
  kDeltaDisks = 1u << 12,
  kDataOffset = 1u << 13,
  kRaid10UseNearSets = 1u << 14,
  kJournalDev = 1u << 15,
  kJournalMode = 1u << 16,
};

struct DevicePair {
  std::string meta;  // empty for "-"
  std::string data;  // empty for "-"
};

struct RaidParams {
  const RaidType* type = nullptr;
  uint32_t chunk = 0;  // sectors; 0 for raid1
  uint32_t flags = 0;
  std::vector<bool> rebuild;       // per device
  std::vector<bool> write_mostly;  // per device
  uint32_t daemon_sleep = 0;       // as given (md keeps it in jiffies)
  uint32_t min_recovery_rate = 0;  // KiB/s per disk
  uint32_t max_recovery_rate = 0;
  uint32_t max_write_behind = 0;  // KiB (the ctr's sectors / 2)
  uint32_t stripe_cache = 256;
  uint32_t region_size = 0;  // sectors, as chosen by validate_region_size()
  uint32_t raid10_copies = 2;
  uint32_t raid10_format = kRaid10Default;
  int32_t delta_disks = 0;
  uint64_t data_offset = 0;
  std::string journal_dev;
  std::string journal_mode;
  uint32_t layout = 0;  // the md layout asked for (raid10: near/far bits)
  std::vector<DevicePair> devices;

  unsigned disks() const { return unsigned(devices.size()); }
  bool has(uint32_t flag) const { return (flags & flag) != 0; }
  bool any_metadata() const;

  // STATUSTYPE_TABLE, with the layout and region size in use.
  std::string table(uint32_t layout_in_use, uint32_t region_in_use) const;
};

// Throws TargetError with the kernel's words. `length` is the target's.
RaidParams parse_raid_table(TargetArgs args, uint64_t length);

}  // namespace dmnbd::raid
