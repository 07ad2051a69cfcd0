// The NBD server: one event loop per core, listeners on TCP and unix
// sockets, connections spread across the loops, clean stop on a signal.
#pragma once
#include <atomic>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "dmnbd/asio.hpp"
#include "dmnbd/config.hpp"
#include "nbd/exports.hpp"

namespace dmnbd::nbd {

class Session;

class Server {
 public:
  Server(ExportRegistry& exports, std::vector<ListenAddress> listen, unsigned threads);
  ~Server();

  // Binds every listener; throws std::runtime_error naming the address.
  void start();
  // Serves until SIGINT/SIGTERM, then lets in-flight requests finish.
  void run_until_signal();
  // Thread-safe: stop accepting and end every connection after its requests.
  void stop();

 private:
  struct Worker;
  class Listener;

  Worker& next_worker();
  void adopt(std::shared_ptr<Session> session, Worker& worker);
  void session_ended(const std::shared_ptr<Session>& session);
  void finish_if_idle();

  ExportRegistry& exports_;
  std::vector<ListenAddress> listen_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::atomic<size_t> next_ = 0;

  std::mutex mutex_;
  std::set<std::shared_ptr<Session>> sessions_;
  bool stopping_ = false;
  bool finished_ = false;
  asio::io_context main_;  // signals, and the place where shutdown completes
};

}  // namespace dmnbd::nbd
