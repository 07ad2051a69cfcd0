// A device-mapper target: one table line's mapping, built from its arguments.
// A target sees only what the kernel's dm gives one: sector-aligned bios whose
// sectors are relative to the target's start, never crossing max_io_len.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dmnbd/block_device.hpp"

namespace dmnbd {

// Resolves a table's device argument: another dmnbd device by name, or a path.
class DeviceResolver {
 public:
  virtual ~DeviceResolver() = default;
  // Throws TargetError with the reason when the device cannot be used.
  virtual std::shared_ptr<BlockDevice> open(const std::string& name, bool read_only) = 0;
};

// What a constructor gets besides its arguments (the kernel's struct dm_target).
struct TargetContext {
  uint64_t begin = 0;   // first sector of the line in the mapped device
  uint64_t length = 0;  // sectors
  bool read_only = false;
  DeviceResolver& resolver;
  // dm_table_event(): bumps the device's event counter and wakes `wait`ers.
  // Callable from any thread, for as long as the target lives.
  std::function<void()> raise_event = [] {};
  // dm_noflush_suspending(): true from a `suspend --noflush` until the next
  // resume; a target's presuspend may then requeue I/O it holds
  // (requeue_status()) instead of failing it. Any thread.
  std::function<bool()> noflush_suspending = [] { return false; };
  // dm_table_get_md(): the device this table is loaded into (null where a
  // table is built on its own, as in tests). thin-pool keys its pool by it,
  // and a thin line finds the pool through the pool's device.
  const BlockDevice* mapped_device = nullptr;

  // dm_get_device(): resolves `name`. The areas a target uses are checked
  // against their devices' sizes once it is built (Target::device_areas).
  std::shared_ptr<BlockDevice> get_device(const std::string& name) const;
};

// One stretch of a device a target uses, as the kernel's iterate_devices
// reports it: sectors [start, start + length) of `device`.
struct DeviceArea {
  std::shared_ptr<BlockDevice> device;
  uint64_t start = 0;
  uint64_t length = 0;
};

class Target {
 public:
  virtual ~Target() = default;

  // The constructor's I/O (the part of a kernel ctr that reads, and for a new
  // store writes, the target's metadata): runs once, after every line of the
  // table was constructed and checked, before any I/O. Throws TargetError
  // with the reason, as a constructor does.
  virtual Task<void> open() { co_return; }

  // Reads, writes, discards and write-zeroes inside the target.
  virtual Task<Status> map(Bio bio) = 0;

  // An empty flush (the kernel's num_flush_bios): by default it goes to every
  // device in device_areas(), once each, and fails if any fails. A target
  // that orders, delays or records flushes overrides it.
  virtual Task<Status> flush();

  // Allocation status; the default says "allocated, contents unknown".
  virtual Task<Status> block_status(uint64_t sector, uint64_t count, ExtentList& out) {
    out.append(count, 0);
    co_return ok();
  }

  // STATUSTYPE_TABLE: the arguments that rebuild this target (re-loadable).
  virtual std::string table() const = 0;
  // The same as `dmsetup table` shows it without --showkeys: a target whose
  // arguments hold a key shows it masked. What every user-facing output uses.
  virtual std::string table_masked() const { return table(); }
  // STATUSTYPE_INFO: what `dmsetup status` prints after the target name.
  virtual std::string status() const { return {}; }

  // `dmsetup message`: the words after the sector. Returns the text to print
  // (often empty); throws TargetError for words it does not understand.
  virtual Task<std::string> message(std::vector<std::string> words) {
    throw TargetError("Target type does not support messages");
    co_return std::string();
  }

  // Suspend and resume hooks, in the kernel's order: presuspend before new
  // I/O is held back, postsuspend once in-flight I/O has drained, preresume
  // (may refuse) and resume when the table goes live.
  virtual Task<void> presuspend() { co_return; }
  virtual Task<void> postsuspend() { co_return; }
  virtual Task<Status> preresume() { co_return ok(); }
  virtual Task<void> resume() { co_return; }

  // Runs once when the table goes away (replaced, cleared, removed, or at
  // shutdown), after its last I/O and before it is destroyed: the kernel's
  // dtr, but allowed to wait, so a target writes its last metadata or stops
  // its background work here and its destructor only frees memory.
  virtual Task<void> teardown() { co_return; }

  // The smallest unit of I/O, in bytes (the kernel's io_hints raising
  // logical_block_size): the Device turns requests that are not whole units
  // into read-modify-write of whole units, so map() never sees a bio that
  // starts or ends inside one. A power of two, 512 by default.
  virtual uint32_t logical_block_size() const { return 512; }

  // Largest bio, in sectors, that may reach map(); bios are split so that none
  // crosses a multiple of it. 0 means no limit.
  virtual uint64_t max_io_len() const { return 0; }

  // Zero-copy I/O (mapped_view.hpp; the kernel's dax direct_access): a
  // target that only remaps (same bytes, data untouched, nothing recorded)
  // forwards it to the device it maps the range onto. A target that looks at,
  // changes, delays or records I/O keeps this default, which says no.
  virtual Task<Status> direct_access(uint64_t sector, uint64_t count, const DirectAccess& how) {
    co_return errno_status(EOPNOTSUPP);
  }

  // The areas of devices this target uses (the kernel's iterate_devices).
  // The table checks each lies inside its device ("too small for target"),
  // and deps, open counts and the default flush all come from this one list.
  virtual std::vector<DeviceArea> device_areas() const { return {}; }
};

using TargetArgs = std::span<const std::string>;
using TargetFactory = std::function<std::unique_ptr<Target>(const TargetContext&, TargetArgs)>;

struct TargetVersion {
  unsigned major, minor, patch;
};

struct TargetType {
  std::string name;
  TargetVersion version;
  TargetFactory create;
};

// name -> factory, like the kernel's dm_register_target().
class TargetRegistry {
 public:
  static TargetRegistry& instance();
  bool add(TargetType type);
  const TargetType* find(const std::string& name) const;
  std::vector<const TargetType*> all() const;  // sorted by name

 private:
  std::vector<TargetType> types_;
};

// Numbers in arguments, each the way the kernel function a target's original
// uses reads them, so the same table is accepted or refused alike. Where the
// kernel's sscanf wraps a value too large for its type, these refuse it.

// sscanf("%llu%c") / sscanf("%u%c") == 1: decimal digits only, nothing after.
bool scan_u64(std::string_view text, uint64_t& out);
bool scan_u32(std::string_view text, uint32_t& out);

// kstrtoull(s, 10, &v) / kstrtouint(s, 10, &v): an optional '+', decimal
// digits, an optional trailing newline, and the value must fit.
bool parse_u64(std::string_view text, uint64_t& out);
bool parse_u32(std::string_view text, uint32_t& out);
// kstrtoint(s, 10, &v): the same with an optional '-' instead of '+'.
bool parse_i32(std::string_view text, int32_t& out);

// A sector count or offset read with scan_u64(); throws TargetError(error) otherwise.
uint64_t parse_sector(const std::string& text, const char* error);

// strcasecmp(word, name) == 0: feature and message keywords ignore case.
bool same_word(std::string_view word, std::string_view name);

}  // namespace dmnbd

// One line at the bottom of targets/<name>.cpp registers the target.
#define DMNBD_REGISTER_TARGET(NAME, CLASS, MAJOR, MINOR, PATCH)              \
  [[maybe_unused]] static const bool dmnbd_registered_##CLASS =              \
      ::dmnbd::TargetRegistry::instance().add(                               \
          {NAME,                                                             \
           {MAJOR, MINOR, PATCH},                                            \
           [](const ::dmnbd::TargetContext& ctx, ::dmnbd::TargetArgs args) { \
             return std::unique_ptr<::dmnbd::Target>(new CLASS(ctx, args));  \
           }})
