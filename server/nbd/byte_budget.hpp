// A limit on bytes held at once (request payloads in flight), shared by every
// coroutine that takes leases of it, on any thread. A taker that does not fit
// waits, in arrival order, until enough is given back: back-pressure, never
// an error. One budget per connection and one for the whole server bound the
// memory any number of clients can make the server hold.
#pragma once
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <utility>

#include "dmnbd/asio.hpp"

namespace dmnbd::nbd {

class ByteBudget {
 public:
  // Bytes taken from a budget, given back when it is destroyed.
  class Lease {
   public:
    Lease() = default;
    Lease(Lease&& o) noexcept
        : budget_(std::exchange(o.budget_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
    Lease& operator=(Lease&& o) noexcept {
      if (this != &o) {
        give_back();
        budget_ = std::exchange(o.budget_, nullptr);
        bytes_ = std::exchange(o.bytes_, 0);
      }
      return *this;
    }
    ~Lease() { give_back(); }
    uint64_t bytes() const { return bytes_; }

   private:
    friend class ByteBudget;
    Lease(ByteBudget* budget, uint64_t bytes) : budget_(budget), bytes_(bytes) {}
    void give_back() {
      if (budget_) budget_->release(bytes_);
      budget_ = nullptr;
      bytes_ = 0;
    }
    ByteBudget* budget_ = nullptr;
    uint64_t bytes_ = 0;
  };

  explicit ByteBudget(uint64_t limit) : limit_(limit) {}
  ByteBudget(const ByteBudget&) = delete;
  ByteBudget& operator=(const ByteBudget&) = delete;

  // Waits until `bytes` fit under the limit behind everyone already waiting.
  // More than the whole limit is granted once nothing else is held, so one
  // large request is never refused, only made to go alone.
  Task<Lease> acquire(uint64_t bytes);

  uint64_t limit() const { return limit_; }
  uint64_t in_use() const;
  uint64_t peak() const;  // the most ever held at once

 private:
  struct Waiter {
    uint64_t bytes;
    std::function<void()> wake;
  };
  bool fits(uint64_t bytes) const { return used_ == 0 || used_ + bytes <= limit_; }
  void grant(uint64_t bytes);
  void release(uint64_t bytes);

  const uint64_t limit_;
  mutable std::mutex mutex_;
  uint64_t used_ = 0;
  uint64_t peak_ = 0;
  std::deque<Waiter> waiters_;
};

}  // namespace dmnbd::nbd
