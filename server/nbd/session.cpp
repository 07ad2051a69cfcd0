#include "session.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>

#include "handshake.hpp"
#include "request_validator.hpp"

namespace dmnbd::nbd {
namespace {

using asio::use_awaitable;
constexpr auto kTuple = asio::as_tuple(use_awaitable);

constexpr size_t kMaxInFlight = 256;  // per connection; the kernel sends up to 128
constexpr size_t kMaxExtents = 1 << 16;

}  // namespace

Session::Session(Socket socket, const DeviceManager& exports, std::string peer,
                 SessionLimits limits)
    : socket_(std::move(socket)),
      exports_(exports),
      peer_(std::move(peer)),
      limits_(limits),
      connection_budget_(limits.connection_payload),
      handshake_timer_(socket_.get_executor()),
      writer_(socket_, peer_, [this] { notify_change(); }),
      change_(socket_.get_executor()) {}

void Session::stop() {
  asio::post(socket_.get_executor(), [self = shared_from_this()] {
    boost::system::error_code ignored;
    self->socket_.shutdown(asio::socket_base::shutdown_receive, ignored);
  });
}

Task<std::string> Session::run() {
  auto self = shared_from_this();
  std::string why;
  try {
    // A client that connects and never finishes negotiating would hold its
    // socket and session for ever; closing the socket fails the pending read.
    if (limits_.handshake.count() > 0) {
      handshake_timer_.expires_after(limits_.handshake);
      handshake_timer_.async_wait([this, self](boost::system::error_code ec) {
        if (ec) return;
        handshake_expired_ = true;
        boost::system::error_code ignored;
        socket_.close(ignored);
      });
    }
    // A named local: GCC 12 destroys the temporaries of a co_await expression twice.
    Handshake handshake(socket_, exports_, peer_);
    std::optional<Negotiated> agreed = co_await handshake.run(why);
    handshake_timer_.cancel();
    if (agreed) {
      n_ = std::move(*agreed);
      n_.device->opened();
      why = co_await transmission();
    }
  } catch (const boost::system::system_error& e) {
    why = handshake_expired_
              ? "handshake not finished within " + std::to_string(limits_.handshake.count()) + " s"
          : e.code() == asio::error::eof ? "client closed the connection during the handshake"
                                         : e.code().message();
  }
  boost::system::error_code ignored;
  socket_.shutdown(asio::socket_base::shutdown_both, ignored);
  socket_.close(ignored);
  if (n_.device) n_.device->closed();
  co_return why;
}

Task<std::string> Session::transmission() {
  std::string why;
  RequestReader reader(socket_, buffers_);
  socket_.non_blocking(true);  // write_some() may then return what fits, never wait
  for (;;) {
    while (in_flight_ >= kMaxInFlight && !writer_.broken()) co_await wait_for_change();
    if (writer_.broken()) {
      why = "sending a reply failed";
      break;
    }
    Incoming in = co_await reader.next();
    using Kind = Incoming::Kind;
    // Past the budgets the socket is not read: the client waits, nothing is
    // dropped. A large WRITE's payload is still in the socket here.
    PayloadLease lease;
    if (in.kind == Kind::request) lease = co_await reserve_payload(in.request);
    if (in.payload_pending && co_await receive_large_write(reader, in)) continue;
    if (in.kind == Kind::closed) {
      why = "client closed the connection";
      break;
    }
    if (in.kind == Kind::truncated) {
      why = "client closed the connection mid-request";
      break;
    }
    if (in.kind == Kind::failed) {
      why = in.error.message();
      break;
    }
    if (in.kind == Kind::bad_magic) {
      why = "bad request magic (the stream cannot be resynchronised)";
      break;
    }
    if (in.kind == Kind::oversized) {
      reply_error(in.request, kEINVAL, "write larger than the 32 MiB maximum payload");
      continue;
    }
    if (in.request.type == kCmdDisc) {
      why = "client sent DISC";
      break;
    }
    ++in_flight_;
    asio::co_spawn(socket_.get_executor(),
                   serve(in.request, std::move(in.payload), std::move(lease)), asio::detached);
  }
  // Requests already received are finished and answered before the close.
  while (in_flight_ > 0 || writer_.writing()) co_await wait_for_change();
  co_return why;
}

Task<PayloadLease> Session::reserve_payload(const Request& req) {
  const bool has_payload =
      (req.type == kCmdRead || req.type == kCmdWrite) && req.length <= kMaxPayload;
  PayloadLease lease;
  if (!has_payload || req.length == 0) co_return lease;
  lease.connection = co_await connection_budget_.acquire(req.length);
  if (limits_.server_payload) lease.server = co_await limits_.server_payload->acquire(req.length);
  co_return lease;
}

// A large WRITE is received straight into the backing file's memory where
// every byte of it has a place there (mapped_view.hpp), and answered here;
// true then. Otherwise, or for what is left when that stops being possible,
// its payload is read into a buffer as usual and `in` is served as usual
// (made to cover only what is left), or becomes the connection's failure.
//
// Devices are held only while bytes that have already arrived are moved:
// waiting for the client happens in between, holding nothing, so a slow
// client never holds up a suspend. A suspend that comes in between does see
// the write half done; so might a crash, and the write is not acknowledged
// until all of it has landed.
Task<bool> Session::receive_large_write(RequestReader& reader, Incoming& in) {
  Request& req = in.request;
  const bool in_place = req.flags == 0 && n_.device && req.length > 0;
  uint64_t done = 0;
  while (in_place && done < req.length) {
    MappedView view;  // all of the request each time: `done` need not be sector-aligned
    if (co_await n_.device->map_write(req.offset, req.length, view)) break;
    const int64_t n = reader.receive_in_place(view, done);
    view.release();
    if (n < 0) {
      in = reader.fail(Incoming::Kind::truncated);
      co_return false;
    }
    done += static_cast<uint64_t>(n);
    if (done < req.length) co_await reader.wait_for_payload();
  }
  if (in_place && done == req.length) {
    reply_status(req, ok());
    co_return true;
  }
  req.offset += done;
  req.length -= static_cast<uint32_t>(done);
  in.payload = buffers_.take(req.length);
  if (!co_await reader.read_payload(in.payload)) in = reader.fail(Incoming::Kind::truncated);
  co_return false;
}
Task<void> Session::serve(Request req, Buffer payload, PayloadLease lease) {
  try {
    const uint32_t bio_fua = req.flags & kCmdFlagFua ? kBioFua : 0;
    Device& device = *n_.device;
    if (auto bad =
            validate_request(req, n_.structured_replies, n_.base_allocation, device.size_bytes())) {
      reply_error(req, bad->error, bad->message);
    } else {
      switch (req.type) {
        case kCmdFlush:
          reply_status(req, co_await device.flush());
          break;
        case kCmdRead:
          co_await serve_read(req, lease);
          break;
        case kCmdWrite:
          reply_status(req, co_await device.write(req.offset, payload.span(), bio_fua));
          break;
        case kCmdTrim:
          reply_status(req, co_await device.discard(req.offset, req.length, bio_fua));
          break;
        case kCmdWriteZeroes: {
          uint32_t flags = bio_fua | (req.flags & kCmdFlagNoHole ? kBioNoUnmap : 0) |
                           (req.flags & kCmdFlagFastZero ? kBioFastZero : 0);
          reply_status(req, co_await device.write_zeroes(req.offset, req.length, flags));
          break;
        }
        case kCmdCache:  // a prefetch hint: validating its range is all there is to do
          reply_status(req, ok());
          break;
        case kCmdBlockStatus:
          co_await serve_block_status(req);
          break;
      }
    }
  } catch (const std::exception& e) {
    spdlog::error("{}: {} failed: {}", peer_, command_name(req.type), e.what());
    reply_error(req, kEIO, e.what());
  }
  payload = {};  // free for reuse before the reader looks for a block
  lease = {};    // a READ's went with its reply
  --in_flight_;
  notify_change();
}

Task<void> Session::serve_read(const Request& req, PayloadLease& lease) {
  Buffer buf = buffers_.take(req.length);
  std::vector<ZeroRun> zero_runs;
  MappedView view;
  const bool want_holes = n_.structured_replies && !(req.flags & kCmdFlagDf);
  std::vector<ZeroRun>* runs = want_holes ? &zero_runs : nullptr;
  Status st = co_await n_.device->read(req.offset, buf.span(), runs, &view);
  if (st) {
    reply_status(req, st);
    co_return;
  }
  ReplyBuilder reply;
  if (!n_.structured_replies) {
    reply.meta([&](auto& out) { encode_simple_reply(out, 0, req.cookie); }).data(0, req.length);
    writer_.queue(reply.take(std::move(buf), &view, std::move(lease)));
    co_return;
  }
  // Data and hole chunks in order; only the last carries DONE.
  struct Chunk {
    bool hole;
    uint64_t start, length;
  };
  boost::container::small_vector<Chunk, 4> chunks;
  uint64_t pos = 0;
  for (const ZeroRun& run : zero_runs) {
    uint64_t start = run.sector << kSectorShift, length = run.sectors << kSectorShift;
    if (start > pos) chunks.push_back({false, pos, start - pos});
    chunks.push_back({true, start, length});
    pos = start + length;
  }
  if (pos < req.length) chunks.push_back({false, pos, req.length - pos});
  for (size_t i = 0; i < chunks.size(); ++i) {
    const Chunk& c = chunks[i];
    const uint16_t flags = i + 1 == chunks.size() ? kReplyFlagDone : 0;
    reply.meta([&](auto& out) {
      if (c.hole) {
        encode_chunk_header(out, flags, kReplyOffsetHole, req.cookie, 12);
        BasicEncoder(out).u64(req.offset + c.start).u32(static_cast<uint32_t>(c.length));
      } else {
        encode_chunk_header(out, flags, kReplyOffsetData, req.cookie,
                            static_cast<uint32_t>(8 + c.length));
        BasicEncoder(out).u64(req.offset + c.start);
      }
    });
    if (!c.hole) reply.data(c.start, c.length);
  }
  writer_.queue(reply.take(std::move(buf), &view, std::move(lease)));
}

Task<void> Session::serve_block_status(const Request& req) {
  const bool req_one = req.flags & kCmdFlagReqOne;
  std::vector<ByteExtent> extents;
  Status st = co_await n_.device->block_status_bytes(req.offset, req.length,
                                                     req_one ? 1 : kMaxExtents, extents);
  if (st) {
    reply_status(req, st);
    co_return;
  }
  // Never answer past the request: that keeps every length within 32 bits.
  uint64_t total = 0;
  size_t count = 0;
  for (; count < extents.size() && total < req.length; ++count) {
    extents[count].length = std::min<uint64_t>(extents[count].length, req.length - total);
    total += extents[count].length;
  }
  extents.resize(count);
  ReplyBuilder reply;
  reply.meta([&](auto& out) {
    encode_chunk_header(out, kReplyFlagDone, kReplyBlockStatus, req.cookie,
                        static_cast<uint32_t>(4 + 8 * extents.size()));
    BasicEncoder e(out);
    e.u32(kBaseAllocationId);
    for (const ByteExtent& x : extents) {
      e.u32(static_cast<uint32_t>(x.length));
      e.u32((x.flags & kExtentHole ? kStateHole : 0) | (x.flags & kExtentZero ? kStateZero : 0));
    }
  });
  writer_.queue(reply.take({}));
}

void Session::reply_status(const Request& req, Status status) {
  if (!status) {
    ReplyBuilder reply;
    if (n_.structured_replies && (req.type == kCmdRead || req.type == kCmdBlockStatus))
      reply.meta(
          [&](auto& out) { encode_chunk_header(out, kReplyFlagDone, kReplyNone, req.cookie, 0); });
    else
      reply.meta([&](auto& out) { encode_simple_reply(out, 0, req.cookie); });
    writer_.queue(reply.take({}));
    return;
  }
  reply_error(req, wire_error(status), status.message());
}

void Session::reply_error(const Request& req, uint32_t error, std::string_view message) {
  ReplyBuilder reply;
  // With structured replies a READ must be answered with chunks; the rest may
  // use the simple reply, which every client understands.
  if (n_.structured_replies && (req.type == kCmdRead || req.type == kCmdBlockStatus))
    reply.meta([&](auto& out) { encode_error_chunk(out, req.cookie, error, message); });
  else
    reply.meta([&](auto& out) { encode_simple_reply(out, error, req.cookie); });
  writer_.queue(reply.take({}));
}

Task<void> Session::wait_for_change() {
  change_.expires_at(asio::steady_timer::time_point::max());
  co_await change_.async_wait(kTuple);
}

void Session::notify_change() {
  change_.cancel();
}

}  // namespace dmnbd::nbd
