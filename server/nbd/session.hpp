// One NBD connection: the handshake (handshake.hpp), then transmission with
// many requests in flight, completed out of order, each checked once
// (request_validator.hpp) and answered through the reply writer.
#pragma once
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "buffer_pool.hpp"
#include "byte_budget.hpp"
#include "dm/device.hpp"
#include "dm/device_manager.hpp"
#include "dmnbd/asio.hpp"
#include "handshake.hpp"
#include "protocol.hpp"
#include "reply_writer.hpp"
#include "request_reader.hpp"

namespace dmnbd::nbd {

// What one connection may make the server hold, and for how long it may
// take to negotiate.
struct SessionLimits {
  uint64_t connection_payload = 64ull << 20;  // READ and WRITE payload bytes in flight
  ByteBudget* server_payload = nullptr;       // the same, over all connections; may be null
  std::chrono::seconds handshake{10};         // 0: no limit
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(Socket socket, const DeviceManager& exports, std::string peer, SessionLimits limits);

  // Runs the connection to its end; the returned text says why it ended.
  Task<std::string> run();

  // Thread-safe: stop reading requests; those in flight finish and are answered.
  void stop();

  const std::string& peer() const { return peer_; }

 private:
  Task<std::string> transmission();
  Task<PayloadLease> reserve_payload(const Request& req);
  Task<bool> receive_large_write(RequestReader& reader, Incoming& in);
  Task<void> serve(Request req, Buffer payload, PayloadLease lease);
  Task<void> serve_read(const Request& req, PayloadLease& lease);
  Task<void> serve_block_status(const Request& req);
  void reply_status(const Request& req, Status status);
  void reply_error(const Request& req, uint32_t error, std::string_view message);
  Task<void> wait_for_change();
  void notify_change();

  Socket socket_;
  const DeviceManager& exports_;
  const std::string peer_;
  const SessionLimits limits_;
  ByteBudget connection_budget_;
  asio::steady_timer handshake_timer_;
  bool handshake_expired_ = false;
  Negotiated n_;  // the export is counted in its open count while set

  // Transmission state; all touched only on this connection's thread.
  size_t in_flight_ = 0;
  BufferPool buffers_;
  ReplyWriter writer_;
  asio::steady_timer change_;  // wakes the reader when in-flight work completes
};

}  // namespace dmnbd::nbd
