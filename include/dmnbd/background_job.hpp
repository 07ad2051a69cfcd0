// A long job a target runs beside its I/O: resync, merge, rebuild. The job is
// a loop of steps (each a coroutine that does a bounded piece of work, e.g.
// one kcopyd region), throttled to a rate or a pause between steps, paused
// while the device is suspended, with progress for the status line and a
// callback when it ends by itself.
//
// Where it runs: start() takes the executor the steps run on. Targets start
// jobs from their resume() hook, which runs on the control thread's event
// loop; that loop has an I/O engine, as FileDevice needs, and is one thread,
// which the job relies on (a strand would do as well). pause() and resume()
// fit presuspend/postsuspend and resume; stop() is for teardown and must be
// awaited before the target (which the step uses) goes.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>

#include "dmnbd/asio.hpp"
#include "dmnbd/cancel_token.hpp"
#include "dmnbd/status.hpp"

namespace dmnbd {

// What one step did: units of work (sectors, regions) on from where the job
// was, 0 with ok when there is nothing left, or an error that ends the job.
struct JobStep {
  Status status;
  uint64_t advanced = 0;
};

class BackgroundJob {
 public:
  // A step starts at `done` units; `cancel` is cancelled by stop(), for work
  // inside the step that can end early (a kcopyd copy).
  using Step = std::function<Task<JobStep>(uint64_t done, const CancelToken& cancel)>;

  struct Options {
    uint64_t total = 0;     // units in all, for progress()
    uint64_t max_rate = 0;  // units per second at most; 0: no limit
    std::chrono::milliseconds pause_between_steps{0};
    // When the job ends by itself: ok once a step has nothing left, else the
    // step's error. Called on the job's executor; not after stop().
    std::function<void(Status)> on_done;
  };

  struct Progress {
    uint64_t done = 0;
    uint64_t total = 0;
  };

  BackgroundJob(Step step, Options options);
  // A job still running is asked to stop; the step in flight still runs, so
  // await stop() instead whenever the step uses its owner.
  ~BackgroundJob();
  BackgroundJob(const BackgroundJob&) = delete;
  BackgroundJob& operator=(const BackgroundJob&) = delete;

  // Runs steps on `executor` from the current progress on; nothing if running.
  void start(asio::any_io_executor executor);
  // No new step starts; returns once the step in flight (if any) is done.
  Task<void> pause();
  void resume();
  // Cancels the job and returns once its loop has ended; on_done is not called.
  Task<void> stop();

  // Readable from any thread.
  Progress progress() const;
  void set_total(uint64_t total);
  bool running() const;
  bool paused() const;

 private:
  struct State;
  // The loop, holding the state so a job destroyed while it ends is no harm.
  static Task<void> run_loop(std::shared_ptr<State> s);
  // The loop ended by itself: stop()pers go on, the owner hears how.
  static void finish(State& s, Status st);

  std::shared_ptr<State> state_;
};

}  // namespace dmnbd
