// The process's threads and loops, apart from what runs on them: worker event
// loops (one per core by default, each with its own I/O engine) that serve
// connections, and the main loop, which has an I/O engine too and runs the
// control socket, targets' background jobs, signals and shutdown.
#pragma once
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <vector>

#include "dmnbd/asio.hpp"

namespace dmnbd::runtime {

class Runtime {
 public:
  // `workers` 0: one per core. `max_poll`: how long an idle worker loop
  // busy-polls before it sleeps (event_loop.hpp).
  Runtime(unsigned workers, std::chrono::microseconds max_poll);
  // Stops and joins the workers.
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // Starts the worker threads; returns once each has its I/O engine.
  void start();
  // Runs the main loop on the calling thread until stop(): first `startup`
  // (where devices are built, so their targets' background jobs run on this
  // loop), then whatever it started; `on_signal` runs on it at the first
  // SIGINT or SIGTERM. Then stops and joins the workers. An exception from
  // `startup` stops everything and is rethrown.
  void run(Task<void> startup, std::function<void()> on_signal);
  // Thread-safe: ends run().
  void stop();

  asio::io_context& main_context() { return main_; }
  // The worker loops, and one of them in turn for each new connection.
  size_t workers() const { return workers_.size(); }
  asio::io_context& worker(size_t i);
  asio::io_context& next_worker();
  // How backing I/O is done ("io_uring", "threads"); after start().
  const char* engine_kind() const;

 private:
  struct Worker;
  void join_workers();

  std::chrono::microseconds max_poll_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::atomic<size_t> next_ = 0;
  asio::io_context main_;
};

}  // namespace dmnbd::runtime
