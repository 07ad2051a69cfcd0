// Commits in allocation order. The kernel's dm-snap.c numbers each pending
// exception when the store allocates its chunk, and a copy that finishes
// early waits in its out-of-order tree until every earlier one has been
// committed, so that the store appends slots in allocation order. Here the
// stores do that themselves: prepare takes a ticket for the COW chunk it
// allocated, commit waits for that chunk's turn, does its part and ends its
// turn.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>

#include <optional>

#include "dmnbd/park.hpp"

namespace dmnbd::snapshot {

class CommitOrder {
 public:
  // The next turn is COW chunk `new_chunk`'s; the caller holds the lock that
  // orders its allocations.
  void take_ticket(uint64_t new_chunk) {
    std::lock_guard lk(mutex_);
    tickets_.emplace(new_chunk, next_ticket_++);
  }

  // Returns once every chunk prepared before `new_chunk` has ended its turn;
  // false (at once) for a chunk that has no ticket: it was never prepared.
  Task<bool> wait_turn(uint64_t new_chunk) {
    uint64_t ticket = 0;
    {
      std::lock_guard lk(mutex_);
      auto it = tickets_.find(new_chunk);
      if (it == tickets_.end()) co_return false;
      ticket = it->second;
      tickets_.erase(it);
    }
    co_await park_until_woken([this, ticket](std::function<void()> wake) {
      std::lock_guard lk(mutex_);
      if (serving_ == ticket)
        wake();
      else
        parked_.emplace(ticket, std::move(wake));
    });
    co_return true;
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
  std::map<uint64_t, uint64_t> tickets_;  // prepared, by COW chunk: their ticket
  uint64_t next_ticket_ = 0;
  uint64_t serving_ = 0;
  std::map<uint64_t, std::function<void()>> parked_;  // by ticket
};

}  // namespace dmnbd::snapshot
