// The control socket: a unix socket (mode 0600, owner only) speaking one JSON
// object per line, request -> response. Several clients at once; each
// client's requests are answered in order.
#pragma once
#include <boost/asio/local/stream_protocol.hpp>
#include <filesystem>
#include <memory>
#include <set>

#include "dm/device_manager.hpp"
#include "dmnbd/asio.hpp"

namespace dmnbd::control {

class ControlServer {
 public:
  ControlServer(asio::io_context& ctx, DeviceManager& devices, std::filesystem::path path);
  ~ControlServer();

  // Binds the socket; throws std::runtime_error naming the path and reason.
  void start();
  // Stops accepting and closes every client connection.
  void stop();

  const std::filesystem::path& path() const { return path_; }

 private:
  using Socket = asio::local::stream_protocol::socket;
  Task<void> accept_loop();
  Task<void> serve(std::shared_ptr<Socket> socket);

  asio::io_context& ctx_;
  DeviceManager& devices_;
  std::filesystem::path path_;
  asio::local::stream_protocol::acceptor acceptor_;
  std::set<std::shared_ptr<Socket>> clients_;
  bool bound_ = false;
};

}  // namespace dmnbd::control
