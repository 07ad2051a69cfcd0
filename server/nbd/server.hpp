// The NBD server: one event loop per core, listeners on TCP and unix
// sockets, connections spread across the loops, clean stop on a signal.
#pragma once
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "byte_budget.hpp"
#include "dmnbd/asio.hpp"
#include "dmnbd/config.hpp"
#include "dmnbd/device_manager.hpp"
#include "session.hpp"

namespace dmnbd::nbd {

class Server {
 public:
  // `max_poll`: how long an idle worker loop busy-polls before it sleeps (see event_loop.hpp).
  Server(DeviceManager& exports, std::vector<ListenAddress> listen, unsigned threads,
         std::chrono::microseconds max_poll = {}, ServerLimits limits = {});
  ~Server();

  // Binds every listener; throws std::runtime_error naming the address.
  void start();
  // Serves until SIGINT/SIGTERM, then lets in-flight requests finish.
  void run_until_signal();
  // Thread-safe: stop accepting and end every connection after its requests.
  void stop();
  // The loop of the main thread (signals, control socket); it has an I/O engine.
  asio::io_context& control_context() { return main_; }
  // Runs on the main loop when stopping begins.
  void on_stop(std::function<void()> hook) { stop_hooks_.push_back(std::move(hook)); }

 private:
  struct Worker;
  class Listener;

  Worker& next_worker();
  void adopt(Socket socket, std::string peer, Worker& worker);
  void session_ended(const std::shared_ptr<Session>& session);
  void finish_if_idle();

  DeviceManager& exports_;
  std::vector<ListenAddress> listen_;
  std::chrono::microseconds max_poll_;
  const ServerLimits limits_;
  ByteBudget payload_budget_;  // every connection's READ and WRITE payloads
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::atomic<size_t> next_ = 0;

  std::mutex mutex_;
  std::set<std::shared_ptr<Session>> sessions_;
  bool stopping_ = false;
  bool finished_ = false;
  asio::io_context main_;  // signals, control socket, and where shutdown completes
  std::vector<std::function<void()>> stop_hooks_;
};

}  // namespace dmnbd::nbd
