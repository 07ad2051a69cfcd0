#include "reply_writer.hpp"

#include <spdlog/spdlog.h>

#include <sys/uio.h>
#include <unistd.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/write.hpp>
#include <cerrno>
#include <cstring>
#include <span>

namespace dmnbd::nbd {
namespace {

using asio::use_awaitable;
constexpr auto kTuple = asio::as_tuple(use_awaitable);

}  // namespace

ReplyWriter::ReplyWriter(Socket& socket, const std::string& peer, std::function<void()> on_change)
    : socket_(socket), peer_(peer), on_change_(std::move(on_change)) {}

void ReplyWriter::queue(Reply reply) {
  if (broken_) return;
  if (socket_full_ && !copy_out_view(reply)) return;
  pending_.push_back(std::move(reply));
  if (!writing_) {
    writing_ = true;
    asio::co_spawn(socket_.get_executor(), write_replies(), asio::detached);
  }
}

void ReplyWriter::gather(const std::vector<Reply>& batch,
                         std::vector<asio::const_buffer>& buffers) {
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
void Reply::append_payload(size_t offset, size_t length,
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
Task<void> ReplyWriter::write_replies() {
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
  on_change_();
}

// Writes what the socket takes now; returns the bytes written.
size_t ReplyWriter::write_without_waiting(std::vector<asio::const_buffer>& buffers, size_t& first) {
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
bool ReplyWriter::copy_out_view(Reply& r) {
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

}  // namespace dmnbd::nbd
