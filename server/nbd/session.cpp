#include "nbd/session.hpp"

#include <spdlog/spdlog.h>

#include <sys/uio.h>
#include <unistd.h>
#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <cstring>
#include <span>

namespace dmnbd::nbd {
namespace {

using asio::use_awaitable;
constexpr auto kTuple = asio::as_tuple(use_awaitable);

constexpr size_t kMaxInFlight = 256;  // per connection; the kernel sends up to 128
constexpr uint32_t kMaxOptionPayload = 1 << 16;
constexpr int kMaxOptions = 1024;  // a handshake that never ends is a DoS
constexpr size_t kMaxExtents = 1 << 16;

}  // namespace

class Session::ReplyBuilder {
 public:
  // Appends protocol bytes written by `encode` into the reply's meta buffer.
  template <typename F>
  ReplyBuilder& meta(F&& encode) {
    size_t before = reply_.meta.size();
    encode(reply_.meta);
    add(false, before, reply_.meta.size() - before);
    return *this;
  }
  ReplyBuilder& data(size_t offset, size_t length) {
    add(true, offset, length);
    return *this;
  }
  Reply take(Buffer data, MappedView* view = nullptr, PayloadLease lease = {}) {
    reply_.data = std::move(data);
    reply_.lease = std::move(lease);
    if (view && *view) std::swap(reply_.view, *view);
    return std::move(reply_);
  }

 private:
  void add(bool from_data, size_t offset, size_t length) {
    auto& segs = reply_.segments;
    if (!segs.empty() && segs.back().from_data == from_data &&
        segs.back().offset + segs.back().length == offset) {
      segs.back().length += length;  // adjacent header bytes go out as one buffer
    } else {
      segs.push_back({from_data, offset, length});
    }
  }
  Reply reply_;
};

Session::Session(Socket socket, const DeviceManager& exports, std::string peer,
                 SessionLimits limits)
    : socket_(std::move(socket)),
      exports_(exports),
      peer_(std::move(peer)),
      limits_(limits),
      connection_budget_(limits.connection_payload),
      handshake_timer_(socket_.get_executor()),
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
    const HandshakeResult result = co_await handshake(why);
    handshake_timer_.cancel();
    if (result == HandshakeResult::transmission) why = co_await transmission();
  } catch (const boost::system::system_error& e) {
    why = handshake_expired_
              ? "handshake not finished within " + std::to_string(limits_.handshake.count()) + " s"
          : e.code() == asio::error::eof ? "client closed the connection during the handshake"
                                         : e.code().message();
  }
  boost::system::error_code ignored;
  socket_.shutdown(asio::socket_base::shutdown_both, ignored);
  socket_.close(ignored);
  if (device_) device_->closed();
  co_return why;
}

void Session::attach(std::shared_ptr<Device> device) {
  device_ = std::move(device);
  device_->opened();
}

// ---- Handshake -------------------------------------------------------------

Task<Session::HandshakeResult> Session::handshake(std::string& why) {
  std::vector<uint8_t> hello;
  Encoder(hello).u64(kNbdMagic).u64(kIHaveOpt).u16(kFlagFixedNewstyle | kFlagNoZeroes);
  co_await asio::async_write(socket_, asio::buffer(hello), use_awaitable);

  std::array<uint8_t, 4> flags_bytes;
  co_await asio::async_read(socket_, asio::buffer(flags_bytes), use_awaitable);
  const uint32_t client_flags = Decoder(flags_bytes).u32();
  if (client_flags & ~(kClientFlagFixedNewstyle | kClientFlagNoZeroes)) {
    why = "client sent unknown handshake flags";
    co_return HandshakeResult::closed;
  }
  const bool fixed_newstyle = client_flags & kClientFlagFixedNewstyle;
  no_zeroes_ = client_flags & kClientFlagNoZeroes;

  for (int count = 0; count < kMaxOptions; ++count) {
    std::array<uint8_t, 16> header;
    co_await asio::async_read(socket_, asio::buffer(header), use_awaitable);
    Decoder d(header);
    const uint64_t magic = d.u64();
    const uint32_t option = d.u32();
    const uint32_t length = d.u32();
    if (magic != kIHaveOpt) {
      why = "bad option magic";
      co_return HandshakeResult::closed;
    }
    if (length > kMaxOptionPayload) {
      co_await discard_payload(length);
      co_await send_option_reply(option, kRepErrTooBig, "option payload too large");
      continue;
    }
    std::vector<uint8_t> payload(length);
    co_await asio::async_read(socket_, asio::buffer(payload), use_awaitable);
    if (!fixed_newstyle && option != kOptExportName) {
      // Old-style clients only know EXPORT_NAME.
      co_await send_option_reply(option, kRepErrInvalid, "fixed newstyle not negotiated");
      continue;
    }
    bool go = false;
    if (!co_await handle_option(option, payload, why, go)) co_return HandshakeResult::closed;
    if (go) co_return HandshakeResult::transmission;
  }
  why = "too many options";
  co_return HandshakeResult::closed;
}

Task<void> Session::send_option_reply(uint32_t option, uint32_t type, std::string_view payload) {
  std::vector<uint8_t> out;
  encode_option_reply(out, option, type, payload);
  co_await asio::async_write(socket_, asio::buffer(out), use_awaitable);
}

uint16_t Session::transmission_flags(const Device& device) const {
  uint16_t flags = kHasFlags | kSendFlush | kSendFua | kCanMultiConn | kSendCache;
  if (device.read_only())
    flags |= kReadOnly;
  else
    flags |= kSendTrim | kSendWriteZeroes | kSendFastZero;
  if (structured_replies_) flags |= kSendDf;
  return flags;
}

Task<bool> Session::handle_option(uint32_t option, std::vector<uint8_t>& payload, std::string& why,
                                  bool& go) {
  const bool empty = payload.empty();
  switch (option) {
    case kOptExportName: {
      std::string name(payload.begin(), payload.end());
      auto device = exports_.find(name);
      if (!device) {
        // EXPORT_NAME has no error reply: closing is the only answer.
        why = "unknown export '" + name + "' requested with EXPORT_NAME";
        co_return false;
      }
      if (meta_context_export_ != name) base_allocation_ = false;
      attach(std::move(device));
      std::vector<uint8_t> out;
      Encoder(out).u64(device_->size_bytes()).u16(transmission_flags(*device_));
      if (!no_zeroes_) Encoder(out).zeroes(124);
      co_await asio::async_write(socket_, asio::buffer(out), use_awaitable);
      spdlog::info("{}: export '{}' (EXPORT_NAME)", peer_, device_->name());
      go = true;
      co_return true;
    }
    case kOptAbort: {
      why = "client sent ABORT";
      std::vector<uint8_t> out;
      encode_option_reply(out, option, kRepAck);
      // The client may close without reading the ACK; that is fine.
      co_await asio::async_write(socket_, asio::buffer(out), kTuple);
      co_return false;
    }
    case kOptList: {
      if (!empty) {
        co_await send_option_reply(option, kRepErrInvalid, "LIST takes no payload");
        co_return true;
      }
      for (const auto& dev : exports_.list()) {
        std::vector<uint8_t> entry;
        Encoder(entry)
            .u32(static_cast<uint32_t>(dev->name().size()))
            .bytes(dev->name())
            .bytes(dev->description());
        co_await send_option_reply(option, kRepServer,
                                   {reinterpret_cast<const char*>(entry.data()), entry.size()});
      }
      co_await send_option_reply(option, kRepAck);
      co_return true;
    }
    case kOptStartTls:
      co_await send_option_reply(
          option, empty ? kRepErrPolicy : kRepErrInvalid,
          empty ? "TLS is not configured on this server" : "STARTTLS takes no payload");
      co_return true;
    case kOptInfo:
    case kOptGo: {
      auto req = parse_info_request(payload);
      if (!req) {
        co_await send_option_reply(option, kRepErrInvalid, "malformed INFO/GO request");
        co_return true;
      }
      auto device = exports_.find(req->name);
      if (!device) {
        const std::string message = "unknown export '" + req->name + "'";
        co_await send_option_reply(option, kRepErrUnknown, message);
        co_return true;
      }
      co_await send_info(option, *req, *device);
      co_await send_option_reply(option, kRepAck);
      if (option == kOptGo) {
        if (meta_context_export_ != req->name) base_allocation_ = false;
        attach(std::move(device));
        spdlog::info("{}: export '{}' (GO, {} replies{})", peer_, device_->name(),
                     structured_replies_ ? "structured" : "simple",
                     base_allocation_ ? ", base:allocation" : "");
        go = true;
      }
      co_return true;
    }
    case kOptStructuredReply:
      if (!empty || structured_replies_) {
        co_await send_option_reply(
            option, kRepErrInvalid,
            empty ? "structured replies already negotiated" : "STRUCTURED_REPLY takes no payload");
        co_return true;
      }
      structured_replies_ = true;
      co_await send_option_reply(option, kRepAck);
      co_return true;
    case kOptListMetaContext:
    case kOptSetMetaContext:
      co_await handle_meta_context(option, payload);
      co_return true;
    default:
      co_await send_option_reply(option, kRepErrUnsup, "option not supported");
      co_return true;
  }
}

Task<void> Session::send_info(uint32_t option, const InfoRequest& req, const Device& device) {
  std::vector<uint8_t> info;
  // INFO_EXPORT always goes out, asked for or not (qemu never asks).
  Encoder(info).u16(kInfoExport).u64(device.size_bytes()).u16(transmission_flags(device));
  co_await send_option_reply(option, kRepInfo, {reinterpret_cast<char*>(info.data()), info.size()});
  bool sent[4] = {true, false, false, false};
  for (uint16_t type : req.info_types) {
    if (type >= 4 || sent[type]) continue;  // unknown types are ignored, duplicates answered once
    sent[type] = true;
    info.clear();
    Encoder e(info);
    e.u16(type);
    if (type == kInfoName) {
      e.bytes(device.name());
    } else if (type == kInfoDescription) {
      if (device.description().empty()) continue;
      e.bytes(device.description());
    } else if (type == kInfoBlockSize) {
      e.u32(kMinBlockSize).u32(kPreferredBlockSize).u32(kMaxPayload);
    }
    co_await send_option_reply(option, kRepInfo,
                               {reinterpret_cast<char*>(info.data()), info.size()});
  }
}

Task<void> Session::handle_meta_context(uint32_t option, std::span<const uint8_t> payload) {
  const bool set = option == kOptSetMetaContext;
  auto req = parse_meta_context_request(payload);
  if (set) base_allocation_ = false;  // a SET replaces the selection, even when it fails
  if (!req) {
    co_await send_option_reply(option, kRepErrInvalid, "malformed meta context request");
    co_return;
  }
  if (set && !structured_replies_) {
    co_await send_option_reply(option, kRepErrInvalid, "structured replies not negotiated");
    co_return;
  }
  if (!exports_.find(req->name)) {
    const std::string message = "unknown export '" + req->name + "'";
    co_await send_option_reply(option, kRepErrUnknown, message);
    co_return;
  }
  bool match = !set && req->queries.empty();  // LIST with no queries lists everything
  for (const auto& q : req->queries)
    if (q == kBaseAllocation || (!set && q == "base:")) match = true;
  if (match) {
    std::vector<uint8_t> out;
    Encoder(out).u32(set ? kBaseAllocationId : 0).bytes(kBaseAllocation);
    co_await send_option_reply(option, kRepMetaContext,
                               {reinterpret_cast<char*>(out.data()), out.size()});
  }
  if (set) {
    base_allocation_ = match;
    meta_context_export_ = req->name;
  }
  co_await send_option_reply(option, kRepAck);
}

// ---- Transmission ----------------------------------------------------------

Task<std::string> Session::transmission() {
  std::string why;
  RequestReader reader(socket_, buffers_);
  socket_.non_blocking(true);  // write_some() may then return what fits, never wait
  for (;;) {
    while (in_flight_ >= kMaxInFlight && !broken_) co_await wait_for_change();
    if (broken_) {
      why = "sending a reply failed";
      break;
    }
    Incoming in = co_await reader.next();
    // Past the budgets the socket is not read: the client waits, nothing is
    // dropped. A large WRITE's payload is still in the socket here.
    PayloadLease lease = co_await reserve_payload(in.request);
    if (in.payload_pending && co_await receive_large_write(reader, in)) continue;
    using Kind = Incoming::Kind;
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
  while (in_flight_ > 0 || writing_) co_await wait_for_change();
  co_return why;
}

Task<Session::PayloadLease> Session::reserve_payload(const Request& req) {
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
  const bool in_place = req.flags == 0 && device_ && req.length > 0;
  uint64_t done = 0;
  while (in_place && done < req.length) {
    MappedView view;  // all of the request each time: `done` need not be sector-aligned
    if (co_await device_->map_write(req.offset, req.length, view)) break;
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

Task<void> Session::discard_payload(uint64_t length) {
  std::vector<uint8_t> sink(std::min<uint64_t>(length, 1 << 20));
  while (length > 0) {
    size_t n = std::min<uint64_t>(length, sink.size());
    co_await asio::async_read(socket_, asio::buffer(sink.data(), n), use_awaitable);
    length -= n;
  }
}

Task<void> Session::serve(Request req, Buffer payload, PayloadLease lease) {
  try {
    const bool fua = req.flags & kCmdFlagFua;
    const uint32_t bio_fua = fua ? kBioFua : 0;
    if (req.type > kCmdBlockStatus) {
      reply_error(req, kEINVAL, "unknown command");
    } else if (req.flags & ~allowed_flags(req.type, structured_replies_)) {
      reply_error(req, kEINVAL, "flag not valid for this command");
    } else if (req.type == kCmdFlush) {
      if (req.offset || req.length)
        reply_error(req, kEINVAL, "FLUSH must have offset and length 0");
      else
        reply_status(req, co_await device_->flush());
    } else if (req.length == 0) {
      reply_error(req, kEINVAL, "zero-length request");
    } else {
      switch (req.type) {
        case kCmdRead:
          co_await serve_read(req, lease);
          break;
        case kCmdWrite:
          reply_status(req, co_await device_->write(req.offset, payload.span(), bio_fua));
          break;
        case kCmdTrim:
          reply_status(req, co_await device_->discard(req.offset, req.length, bio_fua));
          break;
        case kCmdWriteZeroes: {
          uint32_t flags = bio_fua | (req.flags & kCmdFlagNoHole ? kBioNoUnmap : 0) |
                           (req.flags & kCmdFlagFastZero ? kBioFastZero : 0);
          reply_status(req, co_await device_->write_zeroes(req.offset, req.length, flags));
          break;
        }
        case kCmdCache:  // a prefetch hint: only the range is checked
          reply_status(req, req.offset + req.length > device_->size_bytes() ||
                                    req.offset + req.length < req.offset
                                ? errno_status(EINVAL)
                                : ok());
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
  if (req.length > kMaxPayload) {
    reply_error(req, kEINVAL, "read larger than the 32 MiB maximum payload");
    co_return;
  }
  Buffer buf = buffers_.take(req.length);
  std::vector<ZeroRun> zero_runs;
  MappedView view;
  const bool want_holes = structured_replies_ && !(req.flags & kCmdFlagDf);
  std::vector<ZeroRun>* runs = want_holes ? &zero_runs : nullptr;
  Status st = co_await device_->read(req.offset, buf.span(), runs, &view);
  if (st) {
    reply_status(req, st);
    co_return;
  }
  ReplyBuilder reply;
  if (!structured_replies_) {
    reply.meta([&](auto& out) { encode_simple_reply(out, 0, req.cookie); }).data(0, req.length);
    queue_reply(reply.take(std::move(buf), &view, std::move(lease)));
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
  queue_reply(reply.take(std::move(buf), &view, std::move(lease)));
}

Task<void> Session::serve_block_status(const Request& req) {
  if (!base_allocation_) {
    reply_error(req, kEINVAL, "no metadata context was selected");
    co_return;
  }
  const bool req_one = req.flags & kCmdFlagReqOne;
  std::vector<ByteExtent> extents;
  Status st = co_await device_->block_status_bytes(req.offset, req.length,
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
  queue_reply(reply.take({}));
}

void Session::reply_status(const Request& req, Status status) {
  if (!status) {
    ReplyBuilder reply;
    if (structured_replies_ && (req.type == kCmdRead || req.type == kCmdBlockStatus))
      reply.meta(
          [&](auto& out) { encode_chunk_header(out, kReplyFlagDone, kReplyNone, req.cookie, 0); });
    else
      reply.meta([&](auto& out) { encode_simple_reply(out, 0, req.cookie); });
    queue_reply(reply.take({}));
    return;
  }
  reply_error(req, wire_error(status), status.message());
}

void Session::reply_error(const Request& req, uint32_t error, std::string_view message) {
  ReplyBuilder reply;
  // With structured replies a READ must be answered with chunks; the rest may
  // use the simple reply, which every client understands.
  if (structured_replies_ && (req.type == kCmdRead || req.type == kCmdBlockStatus))
    reply.meta([&](auto& out) { encode_error_chunk(out, req.cookie, error, message); });
  else
    reply.meta([&](auto& out) { encode_simple_reply(out, error, req.cookie); });
  queue_reply(reply.take({}));
}

void Session::queue_reply(Reply reply) {
  if (broken_) return;
  if (socket_full_ && !copy_out_view(reply)) return;
  pending_.push_back(std::move(reply));
  if (!writing_) {
    writing_ = true;
    asio::co_spawn(socket_.get_executor(), write_replies(), asio::detached);
  }
}

void Session::gather(const std::vector<Reply>& batch, std::vector<asio::const_buffer>& buffers) {
  buffers.clear();
  for (const auto& r : batch)
    for (const auto& s : r.segments) {
      if (s.from_data)
        r.append_payload(s.offset, s.length, buffers);
      else
        buffers.push_back(asio::buffer(r.meta.data() + s.offset, s.length));
    }
}

// Payload bytes [offset, offset + length): from the view's pieces where it has
// them, from the buffer elsewhere.
void Session::Reply::append_payload(size_t offset, size_t length,
                                    std::vector<asio::const_buffer>& out) const {
  const size_t end = offset + length;
  size_t pos = offset;
  for (const auto& piece : view.pieces) {
    if (piece.end() <= pos) continue;
    if (piece.offset >= end) break;
    if (piece.offset > pos) out.push_back(asio::buffer(data.data() + pos, piece.offset - pos));
    const size_t from = std::max<size_t>(pos, piece.offset);
    const size_t to = std::min<size_t>(end, piece.end());
    out.push_back(asio::buffer(piece.data + (from - piece.offset), to - from));
    pos = to;
  }
  if (pos < end) out.push_back(asio::buffer(data.data() + pos, end - pos));
}

namespace {

// Moves buffers[first...] past `n` bytes that have been written.
void consume(std::vector<asio::const_buffer>& buffers, size_t& first, size_t n) {
  while (n > 0 && first < buffers.size()) {
    const size_t take = std::min(n, buffers[first].size());
    buffers[first] += take;
    n -= take;
    if (buffers[first].size() == 0) ++first;
  }
  while (first < buffers.size() && buffers[first].size() == 0) ++first;
}

}  // namespace

// Every reply that is ready goes out in one gathered write, so replies that
// complete together share a system call. When the socket cannot take it all
// (a slow client), zero-copy reads are copied out first, so they do not keep
// their devices in flight while the client dawdles.
Task<void> Session::write_replies() {
  // co_spawn runs this inline, inside the first reply's serve(); yield once so
  // the other requests of the same read finish and join the batch.
  co_await asio::post(socket_.get_executor(), use_awaitable);
  // Members, so their capacity is reused from one batch to the next.
  std::vector<Reply>& batch = write_batch_;
  std::vector<asio::const_buffer>& buffers = write_buffers_;
  while (!pending_.empty() && !broken_) {
    batch.clear();
    std::swap(batch, pending_);  // both keep their capacity: no allocation once warm
    gather(batch, buffers);
    size_t first = 0;
    const size_t sent = write_without_waiting(buffers, first);
    if (broken_ || first == buffers.size()) continue;
    for (Reply& r : batch)
      if (!copy_out_view(r)) break;
    if (broken_) break;
    gather(batch, buffers);
    first = 0;
    consume(buffers, first, sent);
    auto rest = std::span(buffers).subspan(first);
    socket_full_ = true;  // replies queued meanwhile are copied out at once
    auto [ec, n] = co_await asio::async_write(socket_, rest, kTuple);
    socket_full_ = false;
    if (ec) broken_ = true;
  }
  batch.clear();
  pending_.clear();
  writing_ = false;
  notify_change();
}

// Writes what the socket takes now; returns the bytes written.
size_t Session::write_without_waiting(std::vector<asio::const_buffer>& buffers, size_t& first) {
  size_t total = 0;
  while (first < buffers.size()) {
    boost::system::error_code ec;
    const size_t n = socket_.write_some(std::span(buffers).subspan(first), ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again) break;
    if (ec) {
      broken_ = true;
      break;
    }
    consume(buffers, first, n);
    total += n;
  }
  return total;
}

// Replaces a reply's view by a private copy. The copy goes through the
// kernel (process_vm_readv), so a file truncated under its mapping fails the
// connection with EFAULT rather than killing the server with SIGBUS.
bool Session::copy_out_view(Reply& r) {
  for (const auto& piece : r.view.pieces) {
    iovec local{r.data.data() + piece.offset, piece.length};
    iovec remote{piece.data, piece.length};
    if (process_vm_readv(getpid(), &local, 1, &remote, 1, 0) !=
        static_cast<ssize_t>(piece.length)) {
      spdlog::error("{}: reading a mapped backing file failed: {}", peer_, std::strerror(errno));
      broken_ = true;
      return false;
    }
  }
  r.view.release();
  return true;
}

Task<void> Session::wait_for_change() {
  change_.expires_at(asio::steady_timer::time_point::max());
  co_await change_.async_wait(kTuple);
}

void Session::notify_change() {
  change_.cancel();
}

}  // namespace dmnbd::nbd
