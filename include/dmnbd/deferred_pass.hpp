// A pass of background work a target runs now and then, never two at once:
// clearing the dirty bits of idle regions (the mirror's log, the raid
// bitmap). schedule() runs it on the executor given, or, if it is running,
// once more when it ends; the pass says when it wants to run again (a
// region becomes idle enough then) and sleeps until that time. stop() ends
// the sleep and returns once no pass runs; nothing runs until start() again.
// Every member may be called from any thread.
#pragma once
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include <boost/asio/steady_timer.hpp>

#include "dmnbd/asio.hpp"

namespace dmnbd {

class DeferredPass {
 public:
  using Clock = std::chrono::steady_clock;
  // One pass; returns when to run the next, or nothing.
  using Pass = std::function<Task<std::optional<Clock::time_point>>()>;

  explicit DeferredPass(Pass pass) : pass_(std::move(pass)) {}
  ~DeferredPass();

  // Passes run on `executor` from now on (a target's resume()).
  void start(asio::any_io_executor executor);
  void schedule();
  // Suspend and teardown: awaited before the pass's owner goes.
  Task<void> stop();

 private:
  Task<void> run();

  const Pass pass_;
  std::mutex mutex_;  // everything below
  asio::any_io_executor executor_;
  bool stopped_ = true;
  bool running_ = false;
  bool again_ = false;
  std::shared_ptr<asio::steady_timer> sleep_;  // the running pass's timer, while it sleeps
  std::vector<std::function<void()>> stop_waiters_;
};

}  // namespace dmnbd
