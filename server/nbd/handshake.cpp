#include "handshake.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>

namespace dmnbd::nbd {
namespace {

using asio::use_awaitable;
constexpr auto kTuple = asio::as_tuple(use_awaitable);

constexpr uint32_t kMaxOptionPayload = 1 << 16;
constexpr int kMaxOptions = 1024;  // a handshake that never ends is a DoS

}  // namespace

Handshake::Handshake(Socket& socket, const DeviceManager& exports, const std::string& peer)
    : socket_(socket), exports_(exports), peer_(peer) {}

Task<std::optional<Negotiated>> Handshake::run(std::string& why) {
  std::vector<uint8_t> hello;
  Encoder(hello).u64(kNbdMagic).u64(kIHaveOpt).u16(kFlagFixedNewstyle | kFlagNoZeroes);
  co_await asio::async_write(socket_, asio::buffer(hello), use_awaitable);

  std::array<uint8_t, 4> flags_bytes;
  co_await asio::async_read(socket_, asio::buffer(flags_bytes), use_awaitable);
  const uint32_t client_flags = Decoder(flags_bytes).u32();
  if (client_flags & ~(kClientFlagFixedNewstyle | kClientFlagNoZeroes)) {
    why = "client sent unknown handshake flags";
    co_return std::nullopt;
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
      co_return std::nullopt;
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
    if (!co_await handle_option(option, payload, why, go)) co_return std::nullopt;
    if (go) co_return std::move(n_);
  }
  why = "too many options";
  co_return std::nullopt;
}

Task<void> Handshake::send_option_reply(uint32_t option, uint32_t type, std::string_view payload) {
  std::vector<uint8_t> out;
  encode_option_reply(out, option, type, payload);
  co_await asio::async_write(socket_, asio::buffer(out), use_awaitable);
}

uint16_t Handshake::transmission_flags(const Device& device) const {
  uint16_t flags = kHasFlags | kSendFlush | kSendFua | kCanMultiConn | kSendCache;
  if (device.read_only())
    flags |= kReadOnly;
  else
    flags |= kSendTrim | kSendWriteZeroes | kSendFastZero;
  if (n_.structured_replies) flags |= kSendDf;
  return flags;
}

Task<bool> Handshake::handle_option(uint32_t option, std::vector<uint8_t>& payload,
                                    std::string& why, bool& go) {
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
      if (meta_context_export_ != name) n_.base_allocation = false;
      n_.device = std::move(device);
      std::vector<uint8_t> out;
      Encoder(out).u64(n_.device->size_bytes()).u16(transmission_flags(*n_.device));
      if (!no_zeroes_) Encoder(out).zeroes(124);
      co_await asio::async_write(socket_, asio::buffer(out), use_awaitable);
      spdlog::info("{}: export '{}' (EXPORT_NAME)", peer_, n_.device->name());
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
        if (meta_context_export_ != req->name) n_.base_allocation = false;
        n_.device = std::move(device);
        spdlog::info("{}: export '{}' (GO, {} replies{})", peer_, n_.device->name(),
                     n_.structured_replies ? "structured" : "simple",
                     n_.base_allocation ? ", base:allocation" : "");
        go = true;
      }
      co_return true;
    }
    case kOptStructuredReply:
      if (!empty || n_.structured_replies) {
        co_await send_option_reply(
            option, kRepErrInvalid,
            empty ? "structured replies already negotiated" : "STRUCTURED_REPLY takes no payload");
        co_return true;
      }
      n_.structured_replies = true;
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

Task<void> Handshake::send_info(uint32_t option, const InfoRequest& req, const Device& device) {
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
      // A table with larger logical blocks (crypt sector_size, verity) raises
      // both: smaller requests still work, through read-modify-write.
      const uint32_t block = device.logical_block_size();
      e.u32(std::max(kMinBlockSize, block)).u32(std::max(kPreferredBlockSize, block));
      e.u32(kMaxPayload);
    }
    co_await send_option_reply(option, kRepInfo,
                               {reinterpret_cast<char*>(info.data()), info.size()});
  }
}

Task<void> Handshake::handle_meta_context(uint32_t option, std::span<const uint8_t> payload) {
  const bool set = option == kOptSetMetaContext;
  auto req = parse_meta_context_request(payload);
  if (set) n_.base_allocation = false;  // a SET replaces the selection, even when it fails
  if (!req) {
    co_await send_option_reply(option, kRepErrInvalid, "malformed meta context request");
    co_return;
  }
  if (set && !n_.structured_replies) {
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
    n_.base_allocation = match;
    meta_context_export_ = req->name;
  }
  co_await send_option_reply(option, kRepAck);
}

Task<void> Handshake::discard_payload(uint64_t length) {
  std::vector<uint8_t> sink(std::min<uint64_t>(length, 1 << 20));
  while (length > 0) {
    size_t n = std::min<uint64_t>(length, sink.size());
    co_await asio::async_read(socket_, asio::buffer(sink.data(), n), use_awaitable);
    length -= n;
  }
}

}  // namespace dmnbd::nbd
