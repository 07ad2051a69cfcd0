#include "request_reader.hpp"

#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
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
    in.payload_pending = true;
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

int64_t RequestReader::receive_in_place(const MappedView& view, uint64_t from) {
  boost::container::small_vector<iovec, 16> iov;
  for (const auto& piece : view.pieces) {
    if (piece.end() <= from) continue;
    const uint64_t skip = from > piece.offset ? from - piece.offset : 0;
    iov.push_back({piece.data + skip, piece.length - skip});
  }
  std::span<iovec> rest(iov);
  const uint64_t wanted = view.bytes() - from;
  uint64_t total = 0;
  auto advance = [&](size_t n) {
    total += n;
    while (n > 0) {
      const size_t take = std::min(n, rest.front().iov_len);
      rest.front().iov_base = static_cast<std::byte*>(rest.front().iov_base) + take;
      rest.front().iov_len -= take;
      n -= take;
      if (rest.front().iov_len == 0) rest = rest.subspan(1);
    }
  };
  if (buffered() > 0) {
    // The kernel copies these too, so a file truncated under its mapping
    // fails the connection with EFAULT rather than the server with SIGBUS.
    const size_t n = std::min<uint64_t>(buffered(), wanted);
    iovec local{rx_.data() + begin_, n};
    if (process_vm_writev(getpid(), &local, 1, rest.data(), rest.size(), 0) !=
        static_cast<ssize_t>(n)) {
      error_.assign(errno ? errno : EFAULT, boost::system::system_category());
      return -1;
    }
    begin_ += n;
    advance(n);
  }
  while (total < wanted) {
    msghdr msg{};
    msg.msg_iov = rest.data();
    msg.msg_iovlen = rest.size();
    const ssize_t n = ::recvmsg(socket_.native_handle(), &msg, MSG_DONTWAIT);
    if (n > 0) {
      advance(static_cast<size_t>(n));
    } else if (n == 0) {
      error_ = asio::error::eof;
      return -1;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      break;
    } else if (errno != EINTR) {
      error_.assign(errno, boost::system::system_category());
      return -1;
    }
  }
  return static_cast<int64_t>(total);
}

Task<void> RequestReader::wait_for_payload() {
  // An error or EOF shows in the next receive; nothing to report here.
  co_await socket_.async_wait(asio::socket_base::wait_read, kTuple);
}

Task<bool> RequestReader::read_payload(Buffer& payload) {
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
