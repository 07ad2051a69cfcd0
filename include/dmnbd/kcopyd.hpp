// kcopyd: copies a region of one device to up to eight others, or zeroes
// regions, in the background of a target's I/O: snapshot copy-out and merge,
// mirror resync, raid rebuild. Like the kernel's dm-kcopyd, a job is cut into
// chunks (512 KiB by default, DEFAULT_SUB_JOB_SIZE_KB) that run side by side;
// each client bounds the bytes of buffer its jobs hold at once (the kernel's
// reserved pages), so a large copy cannot eat the server's memory. A copy
// does not flush: the caller flushes the destinations when it needs them
// durable.
#pragma once
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

#include "dmnbd/block_device.hpp"
#include "dmnbd/cancel_token.hpp"

namespace dmnbd {

// The kernel's struct dm_io_region: `count` sectors from `sector` of `dev`.
// The target holds its devices; they must outlive the jobs (see drain()).
// Plain pointers and spans keep these arguments free of destructors: GCC 12
// destroys the temporaries of a co_await expression twice when they have one.
struct Region {
  BlockDevice* dev = nullptr;
  uint64_t sector = 0;
  uint64_t count = 0;
};

// How a copy or zero job ended. The status is the first error of any chunk,
// else ECANCELED if it was cancelled before its last chunk was sent, else ok;
// the kernel's read_err and write_err say which side failed.
struct CopyResult {
  Status status;
  bool read_error = false;
  uint32_t write_errors = 0;  // bit i: destination i failed a write
  explicit operator bool() const { return static_cast<bool>(status); }  // true on failure
};

// DM_KCOPYD_IGNORE_ERROR: an error does not stop the job; the other chunks
// are still copied, and the result still names the error.
inline constexpr uint32_t kKcopydIgnoreErrors = 1u << 0;

class Kcopyd {
 public:
  static constexpr uint64_t kDefaultChunkSectors = (512 * 1024) >> kSectorShift;
  static constexpr size_t kMaxDestinations = 8;  // DM_KCOPYD_MAX_REGIONS

  struct Options {
    uint64_t chunk_sectors = kDefaultChunkSectors;
    // Buffer bytes all jobs of this client hold at most; at least one chunk.
    uint64_t max_bytes_in_flight = 8 * (kDefaultChunkSectors << kSectorShift);
  };

  Kcopyd();
  explicit Kcopyd(Options options);
  // Every job must have finished (drain()) before the client goes.
  ~Kcopyd();
  Kcopyd(const Kcopyd&) = delete;
  Kcopyd& operator=(const Kcopyd&) = delete;

  // dm_kcopyd_copy(): copies `from` to every region of `to`, each of
  // from.count sectors. A region outside its device, a count that differs,
  // or no (or more than kMaxDestinations) destinations: EINVAL, nothing sent.
  // `cancel`, if given, must outlive the call: once cancelled, no new chunk
  // starts and the copy returns when the chunks in flight are done.
  // `to` is read when the copy starts; it need not outlive that.
  Task<CopyResult> copy(Region from, std::span<const Region> to,
                        const CancelToken* cancel = nullptr, uint32_t flags = 0);
  // dm_kcopyd_zero(): zeroes every region of `to` (all of one count), with
  // write-zeroes bios where the device takes them, else with writes.
  Task<CopyResult> zero(std::span<const Region> to, const CancelToken* cancel = nullptr,
                        uint32_t flags = 0);

  // Waits until no job of this client is running (for suspend and teardown).
  Task<void> drain();

  size_t jobs() const;
  uint64_t bytes_in_flight() const;
  // The most bytes of buffer held at once since the client was made.
  uint64_t peak_bytes_in_flight() const;
  uint64_t chunk_sectors() const { return chunk_sectors_; }

 private:
  struct Job;

  Task<CopyResult> run(std::optional<Region> from, std::span<const Region> to,
                       const CancelToken* cancel, uint32_t flags);
  Task<void> run_chunk(Job& job, uint64_t offset, uint64_t count);
  Task<void> copy_chunk(Job& job, uint64_t offset, uint64_t count, std::span<std::byte> buffer);
  Task<void> zero_chunk(Job& job, uint64_t offset, uint64_t count);
  // A chunk's share of the budget: waits, first come first served.
  Task<void> acquire_slot();
  void release_slot();
  std::unique_ptr<std::byte[]> take_buffer();
  void give_back(std::unique_ptr<std::byte[]> buffer);

  const uint64_t chunk_sectors_;
  const uint64_t chunk_bytes_;
  const uint64_t max_slots_;
  mutable std::mutex mutex_;  // everything below
  uint64_t slots_out_ = 0;    // chunks running, each allowed one buffer
  uint64_t peak_slots_out_ = 0;
  std::vector<std::unique_ptr<std::byte[]>> free_buffers_;  // kept for reuse, as reserved pages
  std::deque<std::function<void()>> slot_waiters_;          // chunks waiting for a slot, in order
  size_t jobs_ = 0;
  std::vector<std::function<void()>> drain_waiters_;
};

}  // namespace dmnbd
