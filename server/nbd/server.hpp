// The NBD server: listeners on TCP and unix sockets, each connection a
// Session on one of the runtime's worker loops in turn, and a clean stop that
// lets every connection finish its requests.
#pragma once
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <vector>

#include "byte_budget.hpp"
#include "config/config.hpp"
#include "dm/device_manager.hpp"
#include "dmnbd/asio.hpp"
#include "session.hpp"

namespace dmnbd::nbd {

// The event loops the server runs on, which the process owns: listeners
// accept on one, and each new connection is served on the loop `next` gives.
struct ServerLoops {
  asio::io_context& accept;
  std::function<asio::io_context&()> next;
};

class Server {
 public:
  Server(ServerLoops loops, DeviceManager& exports, std::vector<ListenAddress> listen,
         ServerLimits limits = {});
  ~Server();

  // Binds every listener; throws std::runtime_error naming the address.
  void start();
  // Thread-safe: stops accepting and ends every connection after its
  // requests; `idle` runs (on any thread) once the last one has ended.
  void stop(std::function<void()> idle);

 private:
  class Listener;

  void adopt(Socket socket, std::string peer, asio::io_context& loop);
  void session_ended(const std::shared_ptr<Session>& session);
  void quiesce_ended();

  ServerLoops loops_;
  DeviceManager& exports_;
  std::vector<ListenAddress> listen_;
  const ServerLimits limits_;
  ByteBudget payload_budget_;  // every connection's READ and WRITE payloads
  std::vector<std::unique_ptr<Listener>> listeners_;

  std::mutex mutex_;
  std::set<std::shared_ptr<Session>> sessions_;
  bool stopping_ = false;
  std::function<void()> idle_;  // set by stop(); run once the sessions are gone
  size_t quiescing_ = 0;        // devices stop() is quiescing, which idle_ also waits for
};

}  // namespace dmnbd::nbd
