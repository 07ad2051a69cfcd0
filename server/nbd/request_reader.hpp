// Turns the transmission-phase byte stream into requests. One socket read
// takes in every request the client has queued, so a busy connection costs one
// system call per batch rather than one per header. Small WRITE payloads are
// handed out as views of the receive buffer where the kernel put them; large
// ones are left to the caller, who has them received straight into the
// backing file's memory or into a buffer of their own. Either way the payload
// is never copied in user space, except for the rare piece of a large payload
// that arrived in the same read as its header.
#pragma once
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/system/error_code.hpp>

#include "buffer_pool.hpp"
#include "dm/mapped_view.hpp"
#include "dmnbd/asio.hpp"
#include "protocol.hpp"

namespace dmnbd::nbd {

using Socket = asio::generic::stream_protocol::socket;

struct Incoming {
  enum class Kind {
    request,    // `request`, and `payload` for a WRITE
    oversized,  // a WRITE over kMaxPayload; its payload was consumed and dropped
    closed,     // the client closed the connection between requests
    truncated,  // the client closed the connection inside a request
    bad_magic,  // the stream cannot be resynchronised
    failed,     // the socket read failed: `error`
  };
  Kind kind = Kind::request;
  Request request;
  Buffer payload;
  // A large WRITE comes back with its payload still in the socket: the caller
  // takes it with receive_in_place() and read_payload() before next().
  bool payload_pending = false;
  boost::system::error_code error;
};

class RequestReader {
 public:
  // Receive buffer size: room for a full queue of 4 KiB writes in one read.
  static constexpr size_t kReceiveBuffer = 256u << 10;
  // Payloads up to this size stay in the receive buffer.
  static constexpr size_t kMaxInlinePayload = 64u << 10;

  RequestReader(Socket& socket, BufferPool& pool) : socket_(socket), pool_(pool) {}

  Task<Incoming> next();

  // For a payload_pending request, whose payload byte i goes to byte i of
  // `view`: moves the payload bytes from `from` on that have arrived into
  // place, without waiting. Returns how many, or -1 when the connection failed
  // (then fail() tells how).
  int64_t receive_in_place(const MappedView& view, uint64_t from);
  // Waits until more of the payload can be received.
  Task<void> wait_for_payload();
  // Reads the next payload.size() bytes of the payload, waiting as needed.
  Task<bool> read_payload(Buffer& payload);
  // The Incoming for a stream that ended or failed; `clean_kind` if it ended
  // cleanly between requests.
  Incoming fail(Incoming::Kind clean_kind);

 private:
  size_t buffered() const { return end_ - begin_; }
  // Reads until `needed` contiguous bytes are buffered; false at EOF or error.
  Task<bool> fill(size_t needed);
  // Moves the unconsumed bytes to a fresh block with room for `needed`.
  void relocate(size_t needed);
  Task<bool> discard(uint64_t length);

  Socket& socket_;
  BufferPool& pool_;
  Buffer rx_;  // the receive block; [begin_, end_) is received but not consumed
  size_t begin_ = 0, end_ = 0;
  // After a large WRITE the next read takes only a header, so a stream of
  // large writes lands each payload directly in its own buffer.
  bool header_only_ = false;
  boost::system::error_code error_;
};

}  // namespace dmnbd::nbd
