// Writes a connection's replies: every reply that is ready goes out in one
// gathered, non-blocking write; when the client reads slowly, zero-copy
// payloads are copied out first so they do not hold their devices in flight.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "reply.hpp"
#include "request_reader.hpp"

namespace dmnbd::nbd {

class ReplyWriter {
 public:
  // `on_change` runs whenever the writer goes idle or breaks.
  ReplyWriter(Socket& socket, const std::string& peer, std::function<void()> on_change);

  void queue(Reply reply);
  bool writing() const { return writing_; }
  bool broken() const { return broken_; }

 private:
  Task<void> write_replies();
  size_t write_without_waiting(std::vector<asio::const_buffer>& buffers, size_t& first);
  bool copy_out_view(Reply& reply);
  static void gather(const std::vector<Reply>& batch, std::vector<asio::const_buffer>& buffers);

  Socket& socket_;
  const std::string& peer_;
  std::function<void()> on_change_;
  // All touched only on the connection's thread.
  bool writing_ = false;
  bool socket_full_ = false;  // write_replies waits for the client to read
  bool broken_ = false;
  std::vector<Reply> pending_;      // replies waiting for write_replies()
  std::vector<Reply> write_batch_;  // the replies write_replies() is sending
  std::vector<asio::const_buffer> write_buffers_;
};

}  // namespace dmnbd::nbd
