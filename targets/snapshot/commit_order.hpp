// Commits in allocation order. The kernel's dm-snap.c numbers each pending
// exception when the store allocates its chunk, and a copy that finishes
// early waits in its out-of-order tree until every earlier one has been
// committed, so that the store appends slots in allocation order. Here the
// stores do that themselves: prepare takes a ticket, commit waits for its
// turn, does its part and ends its turn.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>

#include "dmnbd/park.hpp"

namespace dmnbd::snapshot {

class CommitOrder {
 public:
  // The next number; the caller holds the lock that orders its allocations.
  uint64_t take_ticket() {
    std::lock_guard lk(mutex_);
    return next_ticket_++;
  }

  // Returns once every ticket before `ticket` has ended its turn.
  Task<void> wait_turn(uint64_t ticket) {
    co_await park_until_woken([this, ticket](std::function<void()> wake) {
      std::lock_guard lk(mutex_);
      if (serving_ == ticket)
        wake();
      else
        parked_.emplace(ticket, std::move(wake));
    });
  }

  // The turn of the ticket being served is over: the next one may go.
  void end_turn() {
    std::function<void()> wake;
    {
      std::lock_guard lk(mutex_);
      ++serving_;
      if (auto it = parked_.find(serving_); it != parked_.end()) {
        wake = std::move(it->second);
        parked_.erase(it);
      }
    }
    if (wake) wake();
  }

 private:
  std::mutex mutex_;
  uint64_t next_ticket_ = 0;
  uint64_t serving_ = 0;
  std::map<uint64_t, std::function<void()>> parked_;  // by ticket
};

}  // namespace dmnbd::snapshot
