#include "dm/nbd_device.hpp"

#include <libnbd.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <vector>

#include "dmnbd/park.hpp"
#include "dmnbd/when_all.hpp"

namespace dmnbd {
namespace {

using Clock = std::chrono::steady_clock;

std::string last_error() {
  const char* e = nbd_get_error();
  return e ? e : "unknown libnbd error";
}

// nbd_aio_connect_uri() driven to the end of the handshake, or to the
// deadline. Returns the ready handle; throws TargetError otherwise.
nbd_handle* connect(const std::string& uri, std::chrono::milliseconds timeout) {
  nbd_handle* h = nbd_create();
  if (!h) throw TargetError("cannot create an NBD handle: " + last_error());
  auto fail = [&](const std::string& why) {
    nbd_close(h);
    throw TargetError("cannot connect to " + uri + ": " + why);
  };
  if (nbd_aio_connect_uri(h, uri.c_str()) == -1) fail(last_error());
  const Clock::time_point deadline = Clock::now() + timeout;
  while (nbd_aio_is_ready(h) != 1) {
    if (nbd_aio_is_dead(h) == 1 || nbd_aio_is_closed(h) == 1) fail(last_error());
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) fail("no answer within " + std::to_string(timeout.count()) + " ms");
    if (nbd_poll(h, int(left.count())) == -1) fail(last_error());
  }
  return h;
}

// A broken connection is the device's failure (EIO), not the request's.
Status request_status(int error) {
  switch (error) {
    case 0:
      return ok();
    case EPERM:
    case ENOSPC:
    case EINVAL:
    case ENOTSUP:
    case EOVERFLOW:
      return errno_status(error);
    default:
      return errno_status(EIO);
  }
}

}  // namespace

// One connected handle and its socket, on the home loop.
struct NbdDevice::Connection {
  nbd_handle* h = nullptr;
  std::unique_ptr<asio::posix::stream_descriptor> socket;  // made on the home loop
  std::unique_ptr<asio::steady_timer> watchdog;            // likewise
  bool dead = false;
  bool writing = false;  // the write pump runs
  // Requests in flight, oldest first (they are issued in this order).
  Request* oldest = nullptr;
  Request* newest = nullptr;

  explicit Connection(nbd_handle* handle) : h(handle) {}
  ~Connection() { close(); }
  void link(Request& r);
  void unlink(Request& r);
  // Commands still in flight are freed by nbd_close(): their waiters wake.
  void close() {
    if (watchdog) watchdog->cancel();
    if (socket) {
      // libnbd may have closed the descriptor already (a dead connection).
      boost::system::error_code ignored;
      socket->cancel(ignored);
      socket->release();  // the descriptor is libnbd's
    }
    if (h) nbd_close(std::exchange(h, nullptr));
  }
};

// One command, waited for until libnbd frees it (on completion, or when the
// handle closes with it in flight).
struct NbdDevice::Request {
  int error = 0;
  bool completed = false;
  bool freed = false;
  std::function<void()> wake;
  Clock::time_point issued;
  Request* prev = nullptr;  // Connection's list of requests in flight
  Request* next = nullptr;

  static int on_complete(void* self, int* error) {
    auto* r = static_cast<Request*>(self);
    r->error = *error;
    r->completed = true;
    return 1;  // retire the command
  }
  static void on_free(void* self) {
    auto* r = static_cast<Request*>(self);
    r->freed = true;
    if (r->wake) std::exchange(r->wake, nullptr)();
  }
  nbd_completion_callback callback() { return {on_complete, this, on_free}; }
};

void NbdDevice::Connection::link(Request& r) {
  r.prev = newest;
  r.next = nullptr;
  (newest ? newest->next : oldest) = &r;
  newest = &r;
}

void NbdDevice::Connection::unlink(Request& r) {
  (r.prev ? r.prev->next : oldest) = r.next;
  (r.next ? r.next->prev : newest) = r.prev;
  r.prev = r.next = nullptr;
}

bool NbdDevice::is_uri(const std::string& name) {
  return name.starts_with("nbd://") || name.starts_with("nbd+unix://") ||
         name.starts_with("nbds://") || name.starts_with("nbds+unix://");
}

std::shared_ptr<NbdDevice> NbdDevice::open(const std::string& uri, bool read_only) {
  return open(uri, read_only, Options{});
}

std::shared_ptr<NbdDevice> NbdDevice::open(const std::string& uri, bool read_only,
                                           Options options) {
  std::shared_ptr<NbdDevice> dev(new NbdDevice(uri, read_only, options));
  nbd_handle* h = connect(uri, options.connect_timeout);
  auto connection = std::make_shared<Connection>(h);
  const int64_t size = nbd_get_size(h);
  if (size < 0) throw TargetError("cannot get the size of " + uri + ": " + last_error());
  if (!read_only && nbd_is_read_only(h) == 1) throw TargetError(uri + " is a read-only export");
  dev->size_bytes_ = uint64_t(size);
  dev->can_flush_ = nbd_can_flush(h) == 1;
  dev->can_fua_ = nbd_can_fua(h) == 1;
  dev->can_trim_ = nbd_can_trim(h) == 1;
  dev->can_zero_ = nbd_can_zero(h) == 1;
  dev->can_fast_zero_ = nbd_can_fast_zero(h) == 1;
  if (int64_t max = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM); max > 0)
    dev->max_request_bytes_ = std::min<uint64_t>(dev->max_request_bytes_, uint64_t(max));
  dev->connection_ = std::move(connection);
  dev->connected_ = true;
  dev->connections_ = 1;
  return dev;
}

NbdDevice::NbdDevice(std::string uri, bool read_only, Options options)
    : uri_(std::move(uri)), read_only_(read_only), options_(options) {}

NbdDevice::~NbdDevice() {
  std::thread reconnector;
  std::shared_ptr<Connection> c;
  {
    std::lock_guard lk(mutex_);
    reconnector.swap(reconnector_);
    c = std::move(connection_);
  }
  if (reconnector.joinable()) reconnector.join();
  // The read pump holds the connection: close it where the pump runs, which
  // ends the pump (and disconnects) once nothing is in flight.
  if (c && home_ && c->socket)
    asio::post(*home_, [c] {
      c->dead = true;
      c->close();
    });
}

Task<Status> NbdDevice::block_status(uint64_t, uint64_t count, ExtentList& out) {
  out.append(count, 0);
  co_return ok();
}

Task<Status> NbdDevice::submit(Bio bio) {
  auto here = co_await asio::this_coro::executor;
  asio::any_io_executor home;
  {
    std::lock_guard lk(mutex_);
    if (!home_) home_ = here;
    home = *home_;
  }
  if (home == here) co_return co_await run(bio);
  co_return co_await asio::co_spawn(home, run(bio), asio::use_awaitable);
}

Task<Status> NbdDevice::run(Bio bio) {
  if (bio.op != BioOp::read && read_only_) co_return errno_status(EPERM);
  std::shared_ptr<Connection> c;
  {
    std::lock_guard lk(mutex_);
    c = connection_;
  }
  if (!c || c->dead) {
    maybe_reconnect();
    co_return errno_status(EIO);
  }
  if (!c->socket) attach(c);
  if (bio.op == BioOp::flush || bio.sectors << kSectorShift <= max_request_bytes_) {
    Status st = co_await run_piece(*c, bio);
    co_return st;
  }
  // Larger than the server takes at once: pieces, side by side.
  const uint64_t piece = max_request_bytes_ >> kSectorShift;
  std::vector<Task<Status>> pieces;
  for (uint64_t done = 0; done < bio.sectors; done += piece)
    pieces.push_back(run_piece(*c, bio.part(done, std::min(piece, bio.sectors - done))));
  const std::vector<Status> results = co_await when_all(pieces);
  co_return first_error(results);
}

Task<Status> NbdDevice::run_piece(Connection& c, Bio bio) {
  if (c.dead) co_return errno_status(EIO);
  const uint64_t offset = bio.sector << kSectorShift;
  const size_t bytes = bio.sectors << kSectorShift;
  bool flush_after = false;
  std::vector<std::byte> zeroes;
  Request r;
  int64_t cookie = -1;
  switch (bio.op) {
    case BioOp::read:
      cookie = nbd_aio_pread(c.h, bio.data.data(), bytes, offset, r.callback(), 0);
      break;
    case BioOp::write:
      flush_after = (bio.flags & kBioFua) && !can_fua_;
      cookie = nbd_aio_pwrite(c.h, bio.data.data(), bytes, offset, r.callback(),
                              (bio.flags & kBioFua) && can_fua_ ? LIBNBD_CMD_FLAG_FUA : 0);
      break;
    case BioOp::flush:
      if (!can_flush_) co_return ok();  // nothing the server would keep back
      cookie = nbd_aio_flush(c.h, r.callback(), 0);
      break;
    case BioOp::discard:
      if (!can_trim_) co_return errno_status(EOPNOTSUPP);
      cookie = nbd_aio_trim(c.h, bytes, offset, r.callback(), 0);
      break;
    case BioOp::write_zeroes: {
      const bool fast = bio.flags & kBioFastZero;
      if (fast && !can_fast_zero_) co_return errno_status(ENOTSUP);
      if (can_zero_) {
        uint32_t flags = (bio.flags & kBioNoUnmap) ? LIBNBD_CMD_FLAG_NO_HOLE : 0;
        if (fast) flags |= LIBNBD_CMD_FLAG_FAST_ZERO;
        cookie = nbd_aio_zero(c.h, bytes, offset, r.callback(), flags);
      } else {
        zeroes.resize(bytes);
        cookie = nbd_aio_pwrite(c.h, zeroes.data(), bytes, offset, r.callback(), 0);
      }
      break;
    }
  }
  if (cookie == -1 && !r.freed) Request::on_free(&r);  // never issued
  if (cookie != -1 && !c.writing && (nbd_aio_get_direction(c.h) & LIBNBD_AIO_DIRECTION_WRITE)) {
    // The socket took only part of it: send the rest as it drains.
    std::shared_ptr<Connection> self;
    {
      std::lock_guard lk(mutex_);
      if (connection_.get() == &c) self = connection_;
    }
    if (self) asio::co_spawn(*home_, write_pump(self), asio::detached);
  }
  if (!r.freed) {
    // The watchdog gives the connection up if this gets no answer in time.
    r.issued = Clock::now();
    c.link(r);
    co_await park_until_woken([req = &r](std::function<void()> wake) {
      if (req->freed)
        wake();
      else
        req->wake = std::move(wake);
    });
    c.unlink(r);
  }
  if (!r.completed) co_return errno_status(EIO);
  if (Status st = request_status(r.error)) co_return st;
  if (flush_after) {
    Bio flush = flush_bio();
    co_return co_await run_piece(c, flush);
  }
  co_return ok();
}

void NbdDevice::run_on(asio::any_io_executor home) {
  std::shared_ptr<Connection> c;
  {
    std::lock_guard lk(mutex_);
    home_ = home;
    c = connection_;
  }
  if (c)
    asio::post(home, [weak = weak_from_this(), c] {
      if (auto self = weak.lock(); self && !c->socket && !c->dead) self->attach(c);
    });
}

void NbdDevice::attach(const std::shared_ptr<Connection>& c) {
  c->socket = std::make_unique<asio::posix::stream_descriptor>(*home_, nbd_aio_get_fd(c->h));
  c->watchdog = std::make_unique<asio::steady_timer>(*home_);
  asio::co_spawn(*home_, read_pump(c), asio::detached);
  asio::co_spawn(*home_, watch(c), asio::detached);
}

// No answer to the oldest request within the request timeout: the connection
// is given up, which fails it and every other request in flight.
Task<void> NbdDevice::watch(std::shared_ptr<Connection> c) {
  const auto tick =
      std::min<Clock::duration>(options_.request_timeout / 4, std::chrono::seconds(1));
  while (!c->dead) {
    c->watchdog->expires_after(tick);
    co_await c->watchdog->async_wait(asio::as_tuple(asio::use_awaitable));
    if (c->dead) break;
    if (c->oldest && Clock::now() - c->oldest->issued > options_.request_timeout)
      drop(c, "a request got no answer in time");
  }
}

Task<void> NbdDevice::read_pump(std::shared_ptr<Connection> c) {
  while (!c->dead) {
    auto [ec] = co_await c->socket->async_wait(asio::posix::stream_descriptor::wait_read,
                                               asio::as_tuple(asio::use_awaitable));
    if (c->dead) break;
    if (ec) {
      drop(c, "the socket failed");
      break;
    }
    if (nbd_aio_notify_read(c->h) == -1 || nbd_aio_is_dead(c->h) == 1 ||
        nbd_aio_is_closed(c->h) == 1) {
      drop(c, "the server closed the connection");
      break;
    }
    if (!c->writing && (nbd_aio_get_direction(c->h) & LIBNBD_AIO_DIRECTION_WRITE))
      asio::co_spawn(*home_, write_pump(c), asio::detached);
  }
}

Task<void> NbdDevice::write_pump(std::shared_ptr<Connection> c) {
  if (c->writing) co_return;
  c->writing = true;
  while (!c->dead && (nbd_aio_get_direction(c->h) & LIBNBD_AIO_DIRECTION_WRITE)) {
    auto [ec] = co_await c->socket->async_wait(asio::posix::stream_descriptor::wait_write,
                                               asio::as_tuple(asio::use_awaitable));
    if (c->dead) break;
    if (ec || nbd_aio_notify_write(c->h) == -1) {
      drop(c, "sending to the server failed");
      break;
    }
  }
  c->writing = false;
}

void NbdDevice::drop(const std::shared_ptr<Connection>& c, const char* why) {
  if (c->dead) return;
  c->dead = true;
  {
    std::lock_guard lk(mutex_);
    if (connection_ == c) connection_.reset();
  }
  connected_ = false;
  spdlog::warn("{}: connection lost ({}); requests fail until it is back", uri_, why);
  c->close();
  maybe_reconnect();
}

void NbdDevice::maybe_reconnect() {
  std::lock_guard lk(mutex_);
  if (!home_) return;
  const Clock::time_point now = Clock::now();
  if (connection_ || reconnecting_ || now - last_attempt_ < options_.reconnect_interval) return;
  reconnecting_ = true;
  last_attempt_ = now;
  if (reconnector_.joinable()) reconnector_.join();  // the last attempt, long over
  reconnector_ = std::thread(
      [weak = weak_from_this(), uri = uri_, options = options_, size = size_bytes_, home = *home_] {
        nbd_handle* h = nullptr;
        std::string why;
        try {
          h = connect(uri, options.connect_timeout);
          if (nbd_get_size(h) != int64_t(size)) {
            why = "its size changed";
            nbd_close(std::exchange(h, nullptr));
          }
        } catch (const TargetError& e) {
          why = e.what();
        }
        auto connection = h ? std::make_shared<Connection>(h) : nullptr;
        asio::post(home, [weak, connection, why, uri] {
          auto self = weak.lock();
          if (!self) return;  // the connection, if any, closes with the last reference
          std::lock_guard lk(self->mutex_);
          self->reconnecting_ = false;
          if (!connection) {
            // Keep trying, so the connection is back before the next request.
            spdlog::debug("{}: reconnect failed: {}", uri, why);
            auto timer = std::make_shared<asio::steady_timer>(*self->home_);
            timer->expires_after(self->options_.reconnect_interval + std::chrono::milliseconds(10));
            timer->async_wait([weak, timer](const boost::system::error_code& ec) {
              if (auto again = weak.lock(); again && !ec) again->maybe_reconnect();
            });
            return;
          }
          self->connection_ = connection;
          self->connected_ = true;
          ++self->connections_;
          self->attach(connection);
          spdlog::info("{}: reconnected", uri);
        });
      });
}

}  // namespace dmnbd
