#include "nbd/request_reader.hpp"

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/read.hpp>
#include <cstring>

namespace dmnbd::nbd {
namespace {

constexpr auto kTuple = asio::as_tuple(asio::use_awaitable);
// Below this much free room a read would bring in too little; start a new block.
constexpr size_t kMinReadRoom = 16u << 10;

}  // namespace

Task<Incoming> RequestReader::next() {
  if (!co_await fill(kRequestHeaderSize)) co_return fail(Incoming::Kind::closed);
  auto* header = reinterpret_cast<const uint8_t*>(rx_.data() + begin_);
  auto req =
      decode_request(std::span<const uint8_t, kRequestHeaderSize>(header, kRequestHeaderSize));
  if (!req) co_return Incoming{.kind = Incoming::Kind::bad_magic};
  begin_ += kRequestHeaderSize;
  Incoming in{.request = *req};
  if (req->type != kCmdWrite) {
    header_only_ = false;
    co_return in;
  }
  const uint32_t length = req->length;
  if (length > kMaxPayload) {
    // Consumed so the stream stays in step; the session refuses the request.
    if (!co_await discard(length)) co_return fail(Incoming::Kind::truncated);
    in.kind = Incoming::Kind::oversized;
    co_return in;
  }
  if (length > kMaxInlinePayload) {
    header_only_ = true;
    in.payload = pool_.take(length);
    if (!co_await read_large_payload(in.payload)) co_return fail(Incoming::Kind::truncated);
    co_return in;
  }
  header_only_ = false;
  if (!co_await fill(length)) co_return fail(Incoming::Kind::truncated);
  in.payload = rx_.slice(begin_, length);
  begin_ += length;
  co_return in;
}

Task<bool> RequestReader::fill(size_t needed) {
  while (buffered() < needed) {
    if (begin_ == end_ && rx_.data() && rx_.sole_owner()) begin_ = end_ = 0;
    if (!rx_.data() || rx_.size() - begin_ < needed || rx_.size() - end_ < kMinReadRoom)
      relocate(needed);
    const size_t room = rx_.size() - end_;
    const size_t want = header_only_ ? needed - buffered() : room;
    auto [ec, n] = co_await socket_.async_read_some(asio::buffer(rx_.data() + end_, want), kTuple);
    end_ += n;
    if (ec) {
      error_ = ec;
      co_return false;
    }
  }
  co_return true;
}

void RequestReader::relocate(size_t needed) {
  const size_t size = std::max(kReceiveBuffer, needed);
  if (rx_.sole_owner() && rx_.size() >= size) {  // nobody else looks at it: slide down
    std::memmove(rx_.data(), rx_.data() + begin_, buffered());
    end_ = buffered();
    begin_ = 0;
    return;
  }
  Buffer fresh = pool_.take(size);
  if (buffered()) std::memcpy(fresh.data(), rx_.data() + begin_, buffered());
  end_ = buffered();
  begin_ = 0;
  rx_ = std::move(fresh);
}

Task<bool> RequestReader::read_large_payload(Buffer& payload) {
  const size_t have = std::min(buffered(), payload.size());
  std::memcpy(payload.data(), rx_.data() + begin_, have);
  begin_ += have;
  auto rest = asio::buffer(payload.data() + have, payload.size() - have);
  auto [ec, n] = co_await asio::async_read(socket_, rest, kTuple);
  if (ec) error_ = ec;
  co_return !ec;
}

Task<bool> RequestReader::discard(uint64_t length) {
  header_only_ = false;
  const size_t have = std::min<uint64_t>(buffered(), length);
  begin_ += have;
  length -= have;
  while (length > 0) {
    if (!co_await fill(1)) co_return false;
    const size_t n = std::min<uint64_t>(buffered(), length);
    begin_ += n;
    length -= n;
  }
  co_return true;
}

Incoming RequestReader::fail(Incoming::Kind clean_kind) {
  Incoming in;
  if (error_ == asio::error::eof)
    in.kind =
        clean_kind == Incoming::Kind::closed && buffered() ? Incoming::Kind::truncated : clean_kind;
  else {
    in.kind = Incoming::Kind::failed;
    in.error = error_;
  }
  return in;
}

}  // namespace dmnbd::nbd
