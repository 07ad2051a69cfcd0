// Group commit for a target's metadata (a dirty log, a write-intent bitmap):
// many writers that each changed something in memory wait for one write of
// it all, instead of one write each. A change is numbered by the commit that
// will hold it (next()); a commit takes its snapshot of the metadata when it
// starts, so every change made before then is in it. One commit runs at a
// time; a writer joins the one in flight or starts the next.
//
// The owner keeps its metadata under its own lock. It makes a change and
// reads next() under that lock, and its commit function takes the snapshot
// under it too; GroupCommit's own lock is never held while calling out.
// Every member may be called from any thread.
#pragma once
#include <cstdint>
#include <functional>
#include <mutex>
#include <vector>

#include "dmnbd/asio.hpp"
#include "dmnbd/status.hpp"

namespace dmnbd {

class GroupCommit {
 public:
  // Snapshots the metadata and writes it; ok once it is durable. On an error
  // the owner must treat what it snapshotted as not written (the next commit
  // writes it again).
  using Commit = std::function<Task<Status>()>;

  explicit GroupCommit(Commit commit) : commit_(std::move(commit)) {}

  // The commit that will hold a change made now.
  uint64_t next() const;
  // The commit that holds every change made so far: next() if none has
  // started since the change, else the one in flight.
  uint64_t newest_started() const;
  bool in_flight() const;

  // Returns once commit `ticket` (from next()) is durable: at once if it is,
  // else it joins or starts commits until it is, or the one that held it
  // failed (its status). 0 is always done.
  Task<Status> wait(uint64_t ticket);

 private:
  const Commit commit_;
  mutable std::mutex mutex_;  // everything below
  uint64_t next_ = 1;         // the number the next commit to start takes
  uint64_t done_ = 0;         // the newest commit that succeeded
  uint64_t last_failed_ = 0;
  Status last_failure_;
  bool running_ = false;
  std::vector<std::function<void()>> waiters_;  // for the one in flight to end
};

}  // namespace dmnbd
