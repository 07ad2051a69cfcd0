// One NBD connection: the option haggling, then transmission with many
// requests in flight, completed out of order, replies written whole.
#pragma once
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/container/small_vector.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dmnbd/asio.hpp"
#include "dmnbd/device.hpp"
#include "dmnbd/device_manager.hpp"
#include "nbd/buffer_pool.hpp"
#include "nbd/byte_budget.hpp"
#include "nbd/protocol.hpp"
#include "nbd/request_reader.hpp"

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
  // A READ's or WRITE's payload bytes, counted against both budgets.
  struct PayloadLease {
    ByteBudget::Lease connection, server;
  };

  // A reply in wire order: protocol bytes from `meta`, payload bytes from `data`.
  struct Reply {
    struct Segment {
      bool from_data;
      size_t offset, length;
    };
    // Inline capacity for the common replies, so answering needs no heap.
    boost::container::small_vector<uint8_t, 64> meta;
    Buffer data;
    MappedView view;     // payload bytes it has pieces for come from there, not from `data`
    PayloadLease lease;  // a READ's bytes count against the budgets until they are sent
    boost::container::small_vector<Segment, 3> segments;

    void append_payload(size_t offset, size_t length, std::vector<asio::const_buffer>& out) const;
  };
  class ReplyBuilder;
  enum class HandshakeResult { transmission, closed };

  // Handshake.
  Task<HandshakeResult> handshake(std::string& why);
  Task<bool> handle_option(uint32_t option, std::vector<uint8_t>& payload, std::string& why,
                           bool& go);
  Task<void> send_option_reply(uint32_t option, uint32_t type, std::string_view payload = {});
  Task<void> send_info(uint32_t option, const InfoRequest& req, const Device& device);
  Task<void> handle_meta_context(uint32_t option, std::span<const uint8_t> payload);
  uint16_t transmission_flags(const Device& device) const;
  void attach(std::shared_ptr<Device> device);

  // Transmission.
  Task<std::string> transmission();
  Task<PayloadLease> reserve_payload(const Request& req);
  Task<bool> receive_large_write(RequestReader& reader, Incoming& in);
  Task<void> serve(Request req, Buffer payload, PayloadLease lease);
  Task<void> serve_read(const Request& req, PayloadLease& lease);
  Task<void> serve_block_status(const Request& req);
  void reply_status(const Request& req, Status status);
  void reply_error(const Request& req, uint32_t error, std::string_view message);
  void queue_reply(Reply reply);
  Task<void> write_replies();
  size_t write_without_waiting(std::vector<asio::const_buffer>& buffers, size_t& first);
  bool copy_out_view(Reply& reply);
  static void gather(const std::vector<Reply>& batch, std::vector<asio::const_buffer>& buffers);
  Task<void> discard_payload(uint64_t length);
  Task<void> wait_for_change();
  void notify_change();

  Socket socket_;
  const DeviceManager& exports_;
  std::string peer_;
  const SessionLimits limits_;
  ByteBudget connection_budget_;
  asio::steady_timer handshake_timer_;
  bool handshake_expired_ = false;

  // Negotiated state.
  bool no_zeroes_ = false;
  bool structured_replies_ = false;
  bool base_allocation_ = false;
  std::string meta_context_export_;
  std::shared_ptr<Device> device_;  // counted in its open count while set

  // Transmission state; all touched only on this connection's thread.
  size_t in_flight_ = 0;
  bool writing_ = false;
  bool socket_full_ = false;  // write_replies waits for the client to read
  bool broken_ = false;
  std::vector<Reply> pending_;      // replies waiting for write_replies()
  std::vector<Reply> write_batch_;  // the replies write_replies() is sending
  std::vector<asio::const_buffer> write_buffers_;
  BufferPool buffers_;
  asio::steady_timer change_;  // wakes the reader when in-flight work completes
};

}  // namespace dmnbd::nbd
