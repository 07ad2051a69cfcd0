#include "dmnbd/kcopyd.hpp"

#include <algorithm>
#include <cstring>
#include <exception>

#include <boost/asio/this_coro.hpp>

#include "dmnbd/park.hpp"
#include "dmnbd/when_all.hpp"

namespace dmnbd {

// One copy or zero job; lives in run()'s frame, which waits for every chunk.
struct Kcopyd::Job {
  std::optional<Region> from;  // none: zero the destinations
  std::vector<Region> to;
  const CancelToken* cancel = nullptr;
  uint32_t flags = 0;

  std::mutex mutex;  // everything below
  CopyResult result;
  std::exception_ptr exception;
  size_t chunks_in_flight = 0;
  std::function<void()> wake;  // run(), waiting for the last chunk

  bool should_stop() {
    std::lock_guard lk(mutex);
    const bool failed = result.status || exception;
    return (failed && !(flags & kKcopydIgnoreErrors)) || (cancel && cancel->cancelled());
  }
  void fail(Status st, bool read, int dest) {
    std::lock_guard lk(mutex);
    if (!result.status) result.status = st;  // the first error wins
    if (read) result.read_error = true;
    if (dest >= 0) result.write_errors |= 1u << dest;
  }
};

namespace {

bool inside(const Region& r) {
  return r.dev && r.sector + r.count >= r.sector && r.sector + r.count <= r.dev->sectors();
}

bool valid(const std::optional<Region>& from, std::span<const Region> to) {
  if (to.empty() || to.size() > Kcopyd::kMaxDestinations) return false;
  if (from && !inside(*from)) return false;
  const uint64_t count = from ? from->count : to[0].count;
  return std::all_of(to.begin(), to.end(),
                     [count](const Region& r) { return inside(r) && r.count == count; });
}

}  // namespace

Kcopyd::Kcopyd() : Kcopyd(Options{}) {}

Kcopyd::Kcopyd(Options options)
    : chunk_sectors_(std::max<uint64_t>(options.chunk_sectors, 1)),
      chunk_bytes_(chunk_sectors_ << kSectorShift),
      max_slots_(std::max<uint64_t>(options.max_bytes_in_flight / chunk_bytes_, 1)) {}

Kcopyd::~Kcopyd() = default;

Task<CopyResult> Kcopyd::copy(Region from, std::span<const Region> to, const CancelToken* cancel,
                              uint32_t flags) {
  return run(from, to, cancel, flags);
}

Task<CopyResult> Kcopyd::zero(std::span<const Region> to, const CancelToken* cancel,
                              uint32_t flags) {
  return run(std::nullopt, to, cancel, flags);
}

Task<CopyResult> Kcopyd::run(std::optional<Region> from, std::span<const Region> to,
                             const CancelToken* cancel, uint32_t flags) {
  if (!valid(from, to)) co_return CopyResult{.status = errno_status(EINVAL)};
  {
    std::lock_guard lk(mutex_);
    ++jobs_;
  }
  Job job{.from = from, .to = {to.begin(), to.end()}, .cancel = cancel, .flags = flags};
  const uint64_t count = job.to[0].count;
  auto executor = co_await asio::this_coro::executor;
  bool cut_short = false;
  for (uint64_t offset = 0; offset < count;) {
    if (job.should_stop()) {
      cut_short = true;
      break;
    }
    co_await acquire_slot();
    // It may have been cancelled, or a chunk failed, while this one waited.
    if (job.should_stop()) {
      release_slot();
      cut_short = true;
      break;
    }
    const uint64_t n = std::min(chunk_sectors_, count - offset);
    {
      std::lock_guard lk(job.mutex);
      ++job.chunks_in_flight;
    }
    asio::co_spawn(executor, run_chunk(job, offset, n), [&job](std::exception_ptr e) {
      std::function<void()> wake;
      {
        std::lock_guard lk(job.mutex);
        if (e && !job.exception) job.exception = e;
        if (--job.chunks_in_flight == 0) wake = std::move(job.wake);
      }
      if (wake) wake();
    });
    offset += n;
  }
  co_await park_until_woken([&job](std::function<void()> wake) {
    std::unique_lock lk(job.mutex);
    if (job.chunks_in_flight != 0) {
      job.wake = std::move(wake);
      return;
    }
    lk.unlock();
    wake();
  });

  CopyResult result;
  std::exception_ptr exception;
  {
    std::lock_guard lk(job.mutex);
    result = job.result;
    exception = job.exception;
  }
  if (!result.status && cut_short) result.status = errno_status(ECANCELED);
  std::vector<std::function<void()>> drained;
  {
    std::lock_guard lk(mutex_);
    if (--jobs_ == 0) drained.swap(drain_waiters_);
  }
  for (auto& wake : drained) wake();
  if (exception) std::rethrow_exception(exception);
  co_return result;
}

Task<void> Kcopyd::run_chunk(Job& job, uint64_t offset, uint64_t count) {
  // The slot is given back however the chunk ends.
  struct SlotGuard {
    Kcopyd* kc;
    ~SlotGuard() { kc->release_slot(); }
  } slot{this};
  if (!job.from) {
    co_await zero_chunk(job, offset, count);
    co_return;
  }
  std::unique_ptr<std::byte[]> buffer = take_buffer();
  co_await copy_chunk(job, offset, count, {buffer.get(), count << kSectorShift});
  give_back(std::move(buffer));
}

Task<void> Kcopyd::copy_chunk(Job& job, uint64_t offset, uint64_t count,
                              std::span<std::byte> buffer) {
  const Region& from = *job.from;
  if (Status st = co_await from.dev->submit(
          {.op = BioOp::read, .sector = from.sector + offset, .sectors = count, .data = buffer})) {
    job.fail(st, true, -1);
    co_return;
  }
  std::vector<Task<Status>> writes;
  for (const Region& dest : job.to) {
    Bio write{.op = BioOp::write, .sector = dest.sector + offset, .sectors = count, .data = buffer};
    writes.push_back(dest.dev->submit(write));
  }
  const std::vector<Status> results = co_await when_all(writes);
  for (size_t i = 0; i < results.size(); ++i)
    if (results[i]) job.fail(results[i], false, static_cast<int>(i));
}

// Write-zeroes where a destination takes it; a zeroed buffer where it does not.
Task<void> Kcopyd::zero_chunk(Job& job, uint64_t offset, uint64_t count) {
  std::vector<Task<Status>> zeroes;
  for (const Region& dest : job.to)
    zeroes.push_back(dest.dev->submit(
        {.op = BioOp::write_zeroes, .sector = dest.sector + offset, .sectors = count}));
  std::vector<Status> results = co_await when_all(zeroes);
  std::vector<size_t> fallback;
  for (size_t i = 0; i < results.size(); ++i)
    if (results[i] == errno_status(EOPNOTSUPP)) fallback.push_back(i);
  if (!fallback.empty()) {
    std::unique_ptr<std::byte[]> buffer = take_buffer();
    std::span<std::byte> zeroed(buffer.get(), count << kSectorShift);
    std::memset(zeroed.data(), 0, zeroed.size());
    std::vector<Task<Status>> writes;
    for (size_t i : fallback)
      writes.push_back(job.to[i].dev->submit({.op = BioOp::write,
                                              .sector = job.to[i].sector + offset,
                                              .sectors = count,
                                              .data = zeroed}));
    const std::vector<Status> written = co_await when_all(writes);
    for (size_t k = 0; k < fallback.size(); ++k) results[fallback[k]] = written[k];
    give_back(std::move(buffer));
  }
  for (size_t i = 0; i < results.size(); ++i)
    if (results[i]) job.fail(results[i], false, static_cast<int>(i));
}

Task<void> Kcopyd::acquire_slot() {
  co_await park_until_woken([this](std::function<void()> wake) {
    std::unique_lock lk(mutex_);
    if (!slot_waiters_.empty() || slots_out_ == max_slots_) {
      slot_waiters_.push_back(std::move(wake));
      return;
    }
    peak_slots_out_ = std::max(peak_slots_out_, ++slots_out_);
    lk.unlock();
    wake();
  });
}

void Kcopyd::release_slot() {
  std::function<void()> next;
  {
    std::lock_guard lk(mutex_);
    if (slot_waiters_.empty()) {
      --slots_out_;
    } else {
      // Handed straight to the oldest waiter, so a new chunk cannot jump the queue.
      next = std::move(slot_waiters_.front());
      slot_waiters_.pop_front();
    }
  }
  if (next) next();
}

std::unique_ptr<std::byte[]> Kcopyd::take_buffer() {
  {
    std::lock_guard lk(mutex_);
    if (!free_buffers_.empty()) {
      auto buffer = std::move(free_buffers_.back());
      free_buffers_.pop_back();
      return buffer;
    }
  }
  return std::make_unique_for_overwrite<std::byte[]>(chunk_bytes_);
}

void Kcopyd::give_back(std::unique_ptr<std::byte[]> buffer) {
  std::lock_guard lk(mutex_);
  free_buffers_.push_back(std::move(buffer));
}

Task<void> Kcopyd::drain() {
  co_await park_until_woken([this](std::function<void()> wake) {
    std::unique_lock lk(mutex_);
    if (jobs_ != 0) {
      drain_waiters_.push_back(std::move(wake));
      return;
    }
    lk.unlock();
    wake();
  });
}

size_t Kcopyd::jobs() const {
  std::lock_guard lk(mutex_);
  return jobs_;
}

uint64_t Kcopyd::bytes_in_flight() const {
  std::lock_guard lk(mutex_);
  return slots_out_ * chunk_bytes_;
}

uint64_t Kcopyd::peak_bytes_in_flight() const {
  std::lock_guard lk(mutex_);
  return peak_slots_out_ * chunk_bytes_;
}

}  // namespace dmnbd
