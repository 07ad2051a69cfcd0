// striped <N> <chunk> (<dev> <offset>)×N: RAID0 over N legs, chunk sectors at a
// time, round robin. Like the kernel, chunk need not be a power of two, each
// bio stays inside one chunk (max_io_len), flushes go to every leg, discards
// and write-zeroes go to every leg as that leg's share of the range, and a leg
// that fails I/O is reported 'D' in the status line and raises events.
#include <atomic>
#include <charconv>
#include <string_view>

#include "dmnbd/target.hpp"

namespace dmnbd {
namespace {

// The kernel's DM_IO_ERROR_THRESHOLD: a leg stops raising events after this many errors.
constexpr unsigned kErrorThreshold = 15;

class StripedTarget final : public Target {
 public:
  StripedTarget(const TargetContext& ctx, TargetArgs args) : raise_event_(ctx.raise_event) {
    if (args.size() < 2) throw TargetError("Not enough arguments");
    if (!parse_u32(args[0], stripes_) || stripes_ == 0) throw TargetError("Invalid stripe count");
    if (!parse_u32(args[1], chunk_) || chunk_ == 0) throw TargetError("Invalid chunk_size");
    if (ctx.length % stripes_)
      throw TargetError("Target length not divisible by number of stripes");
    width_ = ctx.length / stripes_;
    if (width_ % chunk_) throw TargetError("Target length not divisible by chunk size");
    if (args.size() != 2 + 2 * uint64_t{stripes_})
      throw TargetError("Not enough destinations specified");

    legs_ = std::vector<Leg>(stripes_);
    for (uint32_t i = 0; i < stripes_; ++i) {
      Leg& leg = legs_[i];
      leg.name = args[2 + 2 * i];
      leg.start = parse_sector(args[3 + 2 * i], "Couldn't parse stripe destination");
      try {
        leg.dev = ctx.resolver.open(leg.name, ctx.read_only);
      } catch (const TargetError& e) {
        throw TargetError(std::string("Couldn't parse stripe destination (") + e.what() + ")");
      }
    }
  }

  Task<Status> map(Bio bio) override {
    if (bio.op == BioOp::discard || bio.op == BioOp::write_zeroes) {
      // dm sends one such bio per leg; each leg keeps only its own chunks of the range.
      Status first;
      for (uint32_t i = 0; i < stripes_; ++i) {
        const uint64_t begin = map_range_sector(bio.sector, i);
        const uint64_t end = map_range_sector(bio.end(), i);
        if (begin >= end) continue;
        Bio piece = bio;
        piece.sector = legs_[i].start + begin;
        piece.sectors = end - begin;
        Status st = co_await submit(i, piece);
        if (st && !first) first = st;
      }
      co_return first;
    }
    uint32_t stripe = 0;
    const uint64_t sector = map_sector(bio.sector, stripe);
    co_return co_await submit(stripe, bio.at(legs_[stripe].start + sector));
  }

  // Each chunk's allocation is its leg's, at the mapped place.
  Task<Status> block_status(uint64_t sector, uint64_t count, ExtentList& out) override {
    constexpr unsigned kMaxChunks = 4096;  // a partial answer is fine; the caller asks again
    uint64_t done = 0;
    for (unsigned n = 0; done < count && n < kMaxChunks; ++n) {
      const uint64_t rel = sector + done;
      uint32_t stripe = 0;
      const uint64_t mapped = map_sector(rel, stripe);
      const uint64_t want = std::min(count - done, chunk_ - rel % chunk_);
      ExtentList piece;
      if (Status st =
              co_await legs_[stripe].dev->block_status(legs_[stripe].start + mapped, want, piece))
        co_return st;
      uint64_t left = std::min(piece.total_sectors(), want);
      const uint64_t got = left;
      for (const Extent& e : piece.extents()) {
        const uint64_t take = std::min(e.sectors, left);
        out.append(take, e.flags);
        left -= take;
        if (left == 0) break;
      }
      done += got;
      if (got < want) break;
    }
    co_return ok();
  }

  std::string table() const override {
    std::string out = std::to_string(stripes_) + " " + std::to_string(chunk_);
    for (const Leg& leg : legs_) out += " " + leg.name + " " + std::to_string(leg.start);
    return out;
  }

  // "<N> <dev>... 1 <A|D per leg>": D once a leg has failed an I/O.
  std::string status() const override {
    std::string out = std::to_string(stripes_) + " ";
    for (const Leg& leg : legs_) out += leg.name + " ";
    out += "1 ";
    for (const Leg& leg : legs_) out += leg.errors.load() ? 'D' : 'A';
    return out;
  }

  uint64_t max_io_len() const override { return chunk_; }
  // Within one chunk (the device splits at max_io_len), so on one leg.
  Task<Status> direct_access(uint64_t sector, uint64_t count, const DirectAccess& how) override {
    uint32_t stripe = 0;
    const uint64_t mapped = map_sector(sector, stripe);
    co_return co_await legs_[stripe].dev->direct_access(legs_[stripe].start + mapped, count, how);
  }

  // Each leg's area is its stripe's width from its start.
  std::vector<DeviceArea> device_areas() const override {
    std::vector<DeviceArea> areas;
    for (const Leg& leg : legs_) areas.push_back({leg.dev, leg.start, width_});
    return areas;
  }

 private:
  struct Leg {
    std::string name;
    uint64_t start = 0;
    std::shared_ptr<BlockDevice> dev;
    std::atomic<unsigned> errors = 0;
  };

  // stripe_map_sector(): target-relative sector -> (leg, sector within the leg's area).
  uint64_t map_sector(uint64_t sector, uint32_t& stripe) const {
    const uint64_t chunk = sector / chunk_;
    const uint64_t offset = sector % chunk_;
    stripe = static_cast<uint32_t>(chunk % stripes_);
    return (chunk / stripes_) * chunk_ + offset;
  }

  // stripe_map_range_sector(): where `sector` falls on leg `target`; a sector on
  // another leg rounds to the start of the target leg's next (or current) chunk.
  uint64_t map_range_sector(uint64_t sector, uint32_t target) const {
    uint32_t stripe = 0;
    uint64_t result = map_sector(sector, stripe);
    if (stripe == target) return result;
    result -= result % chunk_;
    if (target < stripe) result += chunk_;
    return result;
  }

  // stripe_end_io(): errors other than "not supported" count against every
  // leg on the failing device; each of the first few raises a dm event.
  Task<Status> submit(uint32_t stripe, Bio bio) {
    Status st = co_await legs_[stripe].dev->submit(bio);
    if (st && st != errno_status(EOPNOTSUPP)) {
      const BlockDevice* failed = legs_[stripe].dev->identity();
      bool event = false;
      for (Leg& leg : legs_)
        if (leg.dev->identity() == failed && ++leg.errors < kErrorThreshold) event = true;
      if (event) raise_event_();
    }
    co_return st;
  }

  std::function<void()> raise_event_;
  uint32_t stripes_ = 0;
  uint32_t chunk_ = 0;
  uint64_t width_ = 0;
  std::vector<Leg> legs_;
};

}  // namespace

DMNBD_REGISTER_TARGET("striped", StripedTarget, 1, 7, 0);

}  // namespace dmnbd
